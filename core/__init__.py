"""The compute side: a worker that owns tenants' engines and takes typed commands, and the host that runs it."""
from . import commands
from .host import Outcome, ThreadHost
from .worker import NotOpen, Shard, Worker

__all__ = ["NotOpen", "Outcome", "Shard", "ThreadHost", "Worker", "commands"]
