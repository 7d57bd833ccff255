"""The event schema is defined once (model/schema.py): the batch columns, the event log's records, validation's
field lists and the OpenAPI document all agree with it, so a new field cannot be half-added."""
from dataclasses import fields

import msgpack
import numpy as np
import pytest

from model import EventBatch, TenantConfig
from model.schema import CONTEXT, EVENT_FIELDS, REQUIRED, TOP_LEVEL, event_json_schema
from server import log_records, validation
from server.openapi import build_spec


def test_every_batch_column_is_one_field_of_the_schema_and_back():
    assert sorted(f.batch for f in EVENT_FIELDS) == sorted(f.name for f in fields(EventBatch))
    assert len({f.name for f in EVENT_FIELDS}) == len(EVENT_FIELDS)


def test_a_log_record_holds_exactly_the_schemas_columns_and_reads_back_what_was_written():
    cfg = TenantConfig(segments=["vip", "new"])
    batch = EventBatch.build(
        ["u1", "u2", "u1"], [0, 2, 1], [10.5, 11.0, 12.25], device=[0, 1, 2], segment=[0, 2, 1],
        tz_offset_min=[-300, 0, 840], event_ids=["a", None, "c"], item_ids=[None, "i2", "i3"],
        categories=["c1", None, None], queries=[None, None, "red shoes"],
    )
    record = log_records.encode(batch, np.array([7, 8, 9]), log_records.vocabularies(cfg))
    assert set(msgpack.unpackb(record.columns)) | {"user_ids"} == {f.batch for f in EVENT_FIELDS} | {"seqs"}
    back, seqs = log_records.decode(record.users, record.columns, cfg)
    assert seqs.tolist() == [7, 8, 9] and (record.first_seq, record.last_seq, record.n) == (7, 9, 3)
    for f in fields(EventBatch):
        assert getattr(back, f.name).tolist() == getattr(batch, f.name).tolist(), f.name
        assert getattr(back, f.name).dtype == getattr(batch, f.name).dtype, f.name
    # Under a later vocabulary: codes follow the names; a dropped segment reads as none; a dropped action is refused.
    later = TenantConfig(actions=cfg.actions[::-1], segments=["new"])
    back, _ = log_records.decode(record.users, record.columns, later)
    assert [later.actions[a] for a in back.actions] == [cfg.actions[a] for a in batch.actions]
    assert back.segment.tolist() == [0, 1, 0]
    kept = [a for a in cfg.actions if a != cfg.actions[1]]
    fewer = TenantConfig(actions=kept, prior_means={a: m for a, m in cfg.prior_means.items() if a in kept})
    with pytest.raises(ValueError, match=cfg.actions[1]):
        log_records.decode(record.users, record.columns, fewer)


def test_validation_accepts_exactly_the_schemas_fields():
    assert validation.ROW_FIELDS == (*TOP_LEVEL, "context") and validation.CONTEXT_FIELDS == CONTEXT
    assert set(validation.COLUMN_FIELDS) == {f.name for f in EVENT_FIELDS}
    assert validation.REQUIRED == REQUIRED == ("user_id", "action")


def test_the_openapi_event_is_the_schemas():
    event = build_spec()["components"]["schemas"]["Event"]
    assert event == event_json_schema()
    assert set(event["properties"]) == {*TOP_LEVEL, "context"}
    assert set(event["properties"]["context"]["properties"]) == set(CONTEXT)
