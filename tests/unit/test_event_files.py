import io
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from model import DEFAULT_ACTIONS, EventBatch, TenantConfig
from model.event_files import export_events, format_actions, load_events

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


# Public e-commerce logs: a few rows shaped like the published files, read back column by column.

UTC = timezone.utc
BEIJING = timezone(timedelta(hours=8))  # JD logs local time in Beijing


def _config(fmt):
    return TenantConfig(actions=format_actions(fmt), allow_backfill=True)


def _rows(batch, config):
    """(user, action, item, category) of each event, in batch order."""
    return list(zip(batch.user_ids.tolist(), [config.actions[a] for a in batch.actions],
                    batch.item_ids.tolist(), batch.categories.tolist()))


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_format_actions_adds_click_for_jdata_only():
    assert format_actions("jdata") == DEFAULT_ACTIONS + ("click",)
    for fmt in ("yoochoose", "rees46", "otto"):
        assert format_actions(fmt) == DEFAULT_ACTIONS


YOOCHOOSE_CLICKS = ("Session_ID,Timestamp,Item_ID,Category\n"
                    "420374,2014-04-06 18:44:58.314,214537888,2\n"
                    "1,2014-04-07 10:51:09.277,214536502,S\n"
                    "420374,2014-04-06 18:40:11.057,214537850,2\n"
                    "5056524,2014-06-23 16:49:18.232000113,214826987,1\n")
YOOCHOOSE_BUYS = ("Session_ID,Timestamp,Item_ID,Price,Quantity\n"
                  "420374,2014-04-06 18:44:58.314,214537888,12462,1\n"
                  "5056524,2014-06-23 16:49:18.232000113,214826987,0,0\n")


@pytest.mark.parametrize("name", ["", "clicks.csv", "buys.csv"], ids=["folder", "clicks", "buys"])
def test_yoochoose_sessions_become_users_in_time_order(tmp_path, name):
    folder = tmp_path / "yoochoose"
    _write(folder, {"clicks.csv": YOOCHOOSE_CLICKS, "buys.csv": YOOCHOOSE_BUYS})
    config = _config("yoochoose")
    batch = load_events(folder / name if name else folder, "yoochoose", config)
    # A click and a buy at the same instant keep the file order: clicks are read first.
    assert _rows(batch, config) == [
        ("420374", "view", "214537850", "2"),
        ("420374", "view", "214537888", "2"),
        ("420374", "purchase", "214537888", None),
        ("1", "view", "214536502", "S"),
        ("5056524", "view", "214826987", "1"),
        ("5056524", "purchase", "214826987", None),
    ]
    bought = datetime(2014, 4, 6, 18, 44, 58, 314000, UTC).timestamp()
    last = datetime(2014, 6, 23, 16, 49, 18, 232000, UTC).timestamp() + 113e-9
    expected = [datetime(2014, 4, 6, 18, 40, 11, 57000, UTC).timestamp(), bought, bought,
                datetime(2014, 4, 7, 10, 51, 9, 277000, UTC).timestamp(), last, last]
    # Nanosecond times are beyond float64 at this magnitude; a microsecond is the honest tolerance.
    assert batch.ts.tolist() == pytest.approx(expected, abs=1e-6, rel=0)
    assert batch.tz_offset_min.tolist() == [0] * 6


JDATA_HEADER = "user_id,sku_id,time,model_id,type,cate,brand\n"
JDATA_FEBRUARY = ("266079.0,138778,2016-01-31 23:59:02,,1,8,403\n"
                  "266079.0,138778,2016-01-31 23:59:03,0.0,6,8,403\n"
                  "200719.0,61226,2016-02-01 00:00:10,,2,8,30\n")
JDATA_MARCH = ("200719.0,61226,2016-02-01 00:00:05,,3,8,30\n"
               "263587.0,72348,2016-01-31 23:59:03,,4,5,159\n"
               "263587.0,72348,2016-02-01 00:01:00,,5,5,159\n")


@pytest.mark.parametrize("files, name", [
    ({"JData_Action_201602.csv": JDATA_HEADER + JDATA_FEBRUARY + JDATA_MARCH}, "JData_Action_201602.csv"),
    # The published folder also holds user, product and comment tables: only the action files are read.
    ({"JData_Action_201602.csv": JDATA_HEADER + JDATA_FEBRUARY, "JData_Action_201603.csv": JDATA_HEADER + JDATA_MARCH,
      "JData_User.csv": "user_id,age,sex,user_lv_cd,user_reg_tm\n200001,56岁以上,2.0,5,2016-01-26\n"}, ""),
], ids=["file", "folder"])
def test_jdata_types_map_to_actions_and_beijing_time_to_utc(tmp_path, files, name):
    folder = tmp_path / "jdata"
    _write(folder, files)
    config = _config("jdata")
    batch = load_events(folder / name if name else folder, "jdata", config)
    assert _rows(batch, config) == [
        ("266079", "view", "138778", "8"),
        ("266079", "click", "138778", "8"),
        ("263587", "purchase", "72348", "5"),  # same second as the click, later in the files
        ("200719", "remove_from_cart", "61226", "8"),
        ("200719", "add_to_cart", "61226", "8"),
        ("263587", "favorite", "72348", "5"),
    ]
    expected = [datetime(2016, 1, 31, 23, 59, 2, tzinfo=BEIJING), datetime(2016, 1, 31, 23, 59, 3, tzinfo=BEIJING),
                datetime(2016, 1, 31, 23, 59, 3, tzinfo=BEIJING), datetime(2016, 2, 1, 0, 0, 5, tzinfo=BEIJING),
                datetime(2016, 2, 1, 0, 0, 10, tzinfo=BEIJING), datetime(2016, 2, 1, 0, 1, 0, tzinfo=BEIJING)]
    assert batch.ts.tolist() == [t.timestamp() for t in expected]
    assert batch.tz_offset_min.tolist() == [480] * 6


def test_jdata_clicks_need_click_in_the_vocabulary(tmp_path):
    path = tmp_path / "JData_Action_201602.csv"
    path.write_text(JDATA_HEADER + JDATA_FEBRUARY)
    with pytest.raises(ValueError, match=r"JData_Action_201602\.csv: actions \['click'\] are not in the vocabulary"):
        load_events(path, "jdata", TenantConfig(allow_backfill=True))


REES46_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
REES46_ROWS = (
    "2019-10-01 00:00:04 UTC,cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,"
    "c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n"
    "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
    "72d76fde-8bb3-4e00-8c23-a032dfed738c\n"
    "2019-10-01 00:00:01 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,"
    "c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n"
    "2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,"
    "554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\n"
    "2019-10-01 00:02:15 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,"
    "c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n"
    "2019-10-01 00:01:30 UTC,remove_from_cart,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,"
    "535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n"
)


def test_rees46_events_load_in_time_order_with_utc_seconds(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(REES46_HEADER + REES46_ROWS)
    config = _config("rees46")
    batch = load_events(path, "rees46", config)
    assert _rows(batch, config) == [
        ("541312140", "view", "44600062", "2103807459595387724"),
        ("554748717", "view", "3900821", "2053013552326770905"),  # same second, later in the file
        ("535871217", "view", "1004237", "2053013555631882655"),
        ("535871217", "add_to_cart", "1004237", "2053013555631882655"),
        ("535871217", "remove_from_cart", "1004237", "2053013555631882655"),
        ("535871217", "purchase", "1004237", "2053013555631882655"),
    ]
    seconds = [(0, 0), (0, 0), (0, 1), (0, 4), (1, 30), (2, 15)]
    assert batch.ts.tolist() == [datetime(2019, 10, 1, 0, m, s, tzinfo=UTC).timestamp() for m, s in seconds]
    assert batch.tz_offset_min.tolist() == [0] * 6


OTTO_MS = ('{"session":0,"events":[{"aid":1517085,"ts":1659304800025,"type":"clicks"},'
           '{"aid":1563459,"ts":1659304904511,"type":"carts"}]}\n'
           '\n'
           '{"session":12899779,"events":[{"aid":59625,"ts":1659304800025,"type":"orders"},'
           '{"aid":1142000,"ts":1659304850000,"type":"clicks"}]}\n')
OTTO_S = OTTO_MS.replace("1659304800025", "1659304800").replace("1659304904511", "1659304904").replace(
    "1659304850000", "1659304850")


@pytest.mark.parametrize("text, fractions_us", [(OTTO_MS, (25000, 25000, 0, 511000)), (OTTO_S, (0, 0, 0, 0))],
                         ids=["milliseconds", "seconds"])
def test_otto_sessions_become_users_with_ms_or_s_times(tmp_path, text, fractions_us):
    path = tmp_path / "train.jsonl"
    path.write_text(text)
    config = _config("otto")
    batch = load_events(path, "otto", config)
    assert _rows(batch, config) == [
        ("0", "view", "1517085", None),
        ("12899779", "purchase", "59625", None),  # same instant, later in the file
        ("12899779", "view", "1142000", None),
        ("0", "add_to_cart", "1563459", None),
    ]
    whole = [datetime(2022, 7, 31, 22, 0, 0, tzinfo=UTC), datetime(2022, 7, 31, 22, 0, 0, tzinfo=UTC),
             datetime(2022, 7, 31, 22, 0, 50, tzinfo=UTC), datetime(2022, 7, 31, 22, 1, 44, tzinfo=UTC)]
    assert batch.ts.tolist() == [(t + timedelta(microseconds=us)).timestamp() for t, us in zip(whole, fractions_us)]


@pytest.mark.parametrize("fmt, name, text, limit, items", [
    ("jdata", "JData_Action_201602.csv", JDATA_HEADER + JDATA_FEBRUARY + JDATA_MARCH, 4,
     ["138778", "138778", "61226", "61226"]),
    ("rees46", "2019-Oct.csv", REES46_HEADER + REES46_ROWS, 3, ["44600062", "1004237", "1004237"]),
    ("otto", "train.jsonl", OTTO_MS, 2, ["1517085", "1563459"]),
    ("otto", "train.jsonl", OTTO_MS, 4, ["1517085", "59625", "1142000", "1563459"]),
])
def test_load_events_limit_reads_the_first_rows(tmp_path, fmt, name, text, limit, items):
    path = tmp_path / name
    path.write_text(text)
    batch = load_events(path, fmt, _config(fmt), limit=limit)
    assert len(batch) == limit and sorted(batch.item_ids.tolist()) == sorted(items)
    assert np.all(np.diff(batch.ts) >= 0)


def _yoochoose(clicks=YOOCHOOSE_CLICKS, buys=YOOCHOOSE_BUYS):
    files = {"clicks.csv": clicks}
    if buys is not None:
        files["buys.csv"] = buys
    return files


BAD_FILES = [
    # (format, files in the folder, path to load (folder when empty), message pattern)
    ("yoochoose", _yoochoose(clicks="1,2014-04-07T10:51:09.277Z,214536502,0\n"), "",
     r"clicks\.csv: the header lacks \['Category', 'Item_ID', 'Session_ID', 'Timestamp'\]"),
    ("yoochoose", _yoochoose(buys=YOOCHOOSE_BUYS + "420374,2014-04-06 18:44:58.314\n"), "buys.csv",
     r"buys\.csv:4: expected 5 columns"),
    ("yoochoose", _yoochoose(clicks=YOOCHOOSE_CLICKS + "s-42,2014-04-07 10:51:09.277,214536502,0\n"), "",
     r"clicks\.csv:6: Session_ID 's-42' is not a number"),
    ("yoochoose", _yoochoose(buys=None), "clicks.csv", r"yoochoose: no buys\.csv"),
    # The times are parsed all at once, after the rows: the message names the folder and no line.
    ("yoochoose", _yoochoose(buys=YOOCHOOSE_BUYS + "420374,2014-04-06 18:61:00.000,214537888,12462,1\n"), "",
     r"buys\.csv: a time is not YYYY-MM-DD HH:MM:SS"),
    ("jdata", {"JData_Action_201602.csv": "user_id,sku_id,time,model_id,cate,brand\n"
                                          "266079.0,138778,2016-01-31 23:59:02,,8,403\n"},
     "JData_Action_201602.csv", r"JData_Action_201602\.csv: the header lacks \['type'\]"),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + JDATA_FEBRUARY
                                          + "266079.0,138778,2016-01-31 23:59:09,,7,8,403\n"},
     "JData_Action_201602.csv", r"JData_Action_201602\.csv:5: unknown type '7'; expected 1-6"),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + "266079.0,138778,2016/01/31 23:59:02,,1,8,403\n"},
     "JData_Action_201602.csv", r"JData_Action_201602\.csv: a time is not YYYY-MM-DD HH:MM:SS"),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + "266079.5,138778,2016-01-31 23:59:02,,1,8,403\n"},
     "JData_Action_201602.csv", r"JData_Action_201602\.csv:2: user_id '266079\.5' is not a number"),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + "266079.0,138778,2016-01-31 23:59:02,,1\n"},
     "JData_Action_201602.csv", r"JData_Action_201602\.csv:2: expected 7 columns"),
    ("jdata", {"JData_User.csv": "user_id,age,sex,user_lv_cd,user_reg_tm\n"}, "",
     r"jdata: no JData_Action_\*\.csv files"),
    ("rees46", {"2019-Oct.csv": REES46_HEADER.replace(",user_id", ",visitor") + REES46_ROWS}, "2019-Oct.csv",
     r"2019-Oct\.csv: the header lacks \['user_id'\]"),
    ("rees46", {"2019-Oct.csv": REES46_HEADER + REES46_ROWS.replace(",cart,", ",wishlist,")}, "2019-Oct.csv",
     r"2019-Oct\.csv:2: unknown event_type 'wishlist'"),
    ("rees46", {"2019-Oct.csv": REES46_HEADER + REES46_ROWS.replace("00:02:15 UTC", "00:02:75 UTC")}, "2019-Oct.csv",
     r"2019-Oct\.csv: a time is not YYYY-MM-DD HH:MM:SS"),
    ("rees46", {"2019-Oct.csv": REES46_HEADER + REES46_ROWS.replace(",554748717,", ",,")}, "2019-Oct.csv",
     r"2019-Oct\.csv:5: user_id is empty"),
    ("rees46", {"2019-Oct.csv": REES46_HEADER + REES46_ROWS + "2019-10-01 00:03:00 UTC,view,1004237\n"}, "2019-Oct.csv",
     r"2019-Oct\.csv:8: expected 9 columns"),
    ("otto", {"train.jsonl": OTTO_MS + '{"session":7,"events":[{"aid":1,"ts":1659304800025,"type":"clicks"}\n'},
     "train.jsonl", r"train\.jsonl:4: not an OTTO session \(JSONDecodeError"),
    ("otto", {"train.jsonl": OTTO_MS.replace('"carts"', '"views"')}, "train.jsonl",
     r"train\.jsonl:1: not an OTTO session \(KeyError: 'views'\)"),
    ("otto", {"train.jsonl": OTTO_MS.replace('"session":12899779', '"session":"s-7"')}, "train.jsonl",
     r"train\.jsonl:3: not an OTTO session \(ValueError"),
    ("otto", {"train.jsonl": OTTO_MS + '{"session":7}\n'}, "train.jsonl",
     r"train\.jsonl:4: not an OTTO session \(KeyError: 'events'\)"),
]


@pytest.mark.parametrize("fmt, files, name, match", BAD_FILES,
                         ids=[f"{fmt}-{i}" for i, (fmt, *_) in enumerate(BAD_FILES)])
def test_load_events_bad_files_name_the_file_and_line(tmp_path, fmt, files, name, match):
    folder = tmp_path / fmt
    _write(folder, files)
    with pytest.raises(ValueError, match=match):
        load_events(folder / name if name else folder, fmt, _config(fmt))


@pytest.mark.parametrize("fmt, files, name, limit", [
    ("yoochoose", _yoochoose(), "", 2),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + JDATA_FEBRUARY,
               "JData_Action_201603.csv": JDATA_HEADER + JDATA_MARCH}, "", 2),
    ("otto", {"train.jsonl": OTTO_MS}, "train.jsonl", 1),
])
def test_load_events_limit_caps_the_whole_batch(tmp_path, fmt, files, name, limit):
    folder = tmp_path / fmt
    _write(folder, files)
    assert len(load_events(folder / name if name else folder, fmt, _config(fmt), limit=limit)) == limit


@pytest.mark.parametrize("time", ["", "NaT"])
def test_rees46_missing_time_is_refused(tmp_path, time):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(REES46_HEADER + REES46_ROWS.replace("2019-10-01 00:00:04 UTC", time))
    with pytest.raises(ValueError, match=r"2019-Oct\.csv"):
        load_events(path, "rees46", _config("rees46"))


def test_rees46_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "2019-Oct.csv"
    path.write_text(REES46_HEADER + "\n" + REES46_ROWS.replace(",cart,", ",wishlist,"))
    with pytest.raises(ValueError, match=r"2019-Oct\.csv:3: unknown event_type 'wishlist'"):
        load_events(path, "rees46", _config("rees46"))


@pytest.mark.parametrize("fmt, files, bad", [
    ("yoochoose", _yoochoose(buys=YOOCHOOSE_BUYS + "420374,2014-04-06 18:61:00.000,214537888,12462,1\n"), "buys.csv"),
    ("jdata", {"JData_Action_201602.csv": JDATA_HEADER + JDATA_FEBRUARY,
               "JData_Action_201603.csv": JDATA_HEADER + "200719.0,61226,2016-02-01 24:00:05,,3,8,30\n"},
     "JData_Action_201603.csv"),
])
def test_load_events_bad_time_in_a_folder_names_the_file(tmp_path, fmt, files, bad):
    folder = tmp_path / fmt
    _write(folder, files)
    with pytest.raises(ValueError, match=re.escape(bad)):
        load_events(folder, fmt, _config(fmt))
