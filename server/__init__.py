"""The nudge HTTP server: app factory, configuration and the runtime behind the routes."""
from .app import create_app
from .config import ServerConfig
from .storage import Store

__all__ = ["ServerConfig", "Store", "create_app"]
