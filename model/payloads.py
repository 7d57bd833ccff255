"""The payload of each signal type, from the tenant's config, the item catalog and the user's context."""
from __future__ import annotations

from typing import Any

from .catalog import ItemCatalog
from .config import TenantConfig


def signal_variants(signal_type: str, config: TenantConfig) -> list[str]:
    """The variants the intervention bandit chooses among for a signal type."""
    if signal_type == "offer_discount":
        return [f"{t:g}" for t in config.discount_tiers_pct]
    return ["default"]


def build_payload(
    signal_type: str, variant: str, intent: str, user_id: str, config: TenantConfig, catalog: ItemCatalog,
    hint: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The payload, or None when there is nothing worth sending (no items or content known yet).

    ``hint`` is the page state a score request sent (category, query, page); it wins over what the
    event stream last said.
    """
    context = {**catalog.context(user_id), **{k: v for k, v in (hint or {}).items() if v is not None}}
    if signal_type == "offer_discount":
        payload: dict[str, Any] = {"discount_pct": float(variant)}
        code = config.discount_codes.get(variant)
        if code:
            payload["code"] = code
        return payload
    if signal_type == "recommend_product":
        items, source = catalog.recommend(user_id, config.recommendations, context.get("category"))
        return {"item_ids": items, "source": source} if items else None
    if signal_type == "recommend_content":
        for key in (context.get("category"), intent, "default"):
            if key is not None and config.content_map.get(key):
                return {"content_ids": list(config.content_map[key])}
        return None
    if signal_type == "proactive_support":
        topic = context.get("query") or context.get("category") or intent
        return {"channel": config.support_channel, "topic": topic}
    if signal_type == "automated_workflow":
        fields = {k: context[k] for k in ("category", "item_id", "query", "page") if k in context}
        return {"workflow": config.workflow, "fields": fields}
    raise ValueError(f"unknown signal type {signal_type!r}")
