import io

import numpy as np
import pytest

from model import EventBatch, TenantConfig
from model.event_files import export_events, load_events

CFG = TenantConfig(segments=("vip",))
A = {name: i for i, name in enumerate(CFG.actions)}


def test_retailrocket_events_load_in_time_order_with_seconds(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                    "1433221332117,257597,view,355908,\n"
                    "1433221000000,257597,addtocart,355908,\n"
                    "1433224214164,992329,transaction,248676,4000\n")
    batch = load_events(path, "retailrocket", CFG)
    assert batch.ts.tolist() == [1433221000.0, 1433221332.117, 1433224214.164]
    assert [CFG.actions[a] for a in batch.actions] == ["add_to_cart", "view", "purchase"]
    assert batch.user_ids.tolist() == ["257597", "257597", "992329"] and batch.item_ids[2] == "248676"
    path.write_text("timestamp,visitorid,event,itemid\n1,2,jump,3\n")
    with pytest.raises(ValueError, match=r"events.csv:2: unknown event 'jump'"):
        load_events(path, "retailrocket", CFG)


def test_nudge_export_and_load_round_trip(tmp_path):
    batch = EventBatch.build(
        ["a", "b", "a"], [A["view"], A["search"], A["purchase"]], [10.0, 11.0, 12.5],
        device=[0, 3, 1], segment=[1, 0, 0], tz_offset_min=[60, 0, -300], event_ids=["e1", None, "e3"],
        item_ids=["i1", None, "i2"], categories=["c", None, None], queries=[None, "red shoes", None],
    )
    out = io.StringIO()
    assert export_events(iter([batch]), CFG, out) == 3
    path = tmp_path / "events.jsonl"
    path.write_text(out.getvalue())
    loaded = load_events(path, "nudge", CFG)
    for name in ("user_ids", "actions", "ts", "device", "segment", "tz_offset_min", "item_ids", "categories", "queries"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(batch, name), err_msg=name)


def test_nudge_format_errors_name_the_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "a", "action": "view", "ts": 1}\n{"user_id": "a", "ts": 2}\n')
    with pytest.raises(ValueError, match=r"events.jsonl:2: not a nudge event"):
        load_events(path, "nudge", CFG)
    path.write_text('{"user_id": "a", "action": "dance", "ts": 1}\n')
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_events(path, "nudge", CFG)
