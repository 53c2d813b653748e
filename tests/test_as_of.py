"""The batch scan for the default `--as_of` (`latest_valid_time`) bounds each record's time from its
bytes and validates only records that could raise the maximum. Whatever the bytes, it must return
exactly the exact definition: the max over the valid events of `timed` (every record validated)."""
from __future__ import annotations

import gzip
import math
import random
import uuid
from datetime import datetime, timezone

import fastavro
import orjson
import pytest

from issue_platform.generate import generate
from issue_platform.validation import LATEST_TIME, PayloadValidator
from pipelines import replay
from pipelines.replay import event_time_range, latest_valid_time, timed
from tests.pipeline_support import BASE, occurrence, status_change, write_jsonl

MAX_BYTES = 1 << 20


def exact(paths, max_bytes=MAX_BYTES):
    """The definition: every record validated, the latest time of a valid one."""
    return event_time_range(timed(paths, PayloadValidator(), max_bytes))[1]


def scanned(paths, max_bytes=MAX_BYTES):
    return latest_valid_time(paths, PayloadValidator(), max_bytes)


dumps = orjson.dumps


def late(seconds: float) -> bytes:
    """The time `seconds` after BASE as the JSON of a payload has it."""
    return dumps(BASE + seconds)


OCC, SC = occurrence("base", t=BASE), status_change("sc", t=BASE + 10)
# (name, extra lines next to a valid occurrence at BASE, the latest valid time)
CASES = [
    ("truncated JSON", [dumps(occurrence("x", t=BASE + 900))[:-1]], BASE),
    ("NaN literal", [dumps(occurrence("x", t=BASE + 900)).replace(late(900), b"NaN")], BASE),
    ("Infinity literal", [dumps(occurrence("x", t=BASE + 900)).replace(late(900), b"Infinity")], BASE),
    ("1e300", [dumps(occurrence("x", t=1e300))], BASE),
    ("1e400 (not a double)", [dumps(occurrence("x", t=BASE + 900)).replace(late(900), b"1e400")], BASE),
    ("2**64 (a float past 3000)", [dumps(occurrence("x", t=BASE)).replace(late(0), b"18446744073709551616")], BASE),
    ("zero and -0", [dumps(occurrence("x", t=0)), dumps(occurrence("y")).replace(late(0), b"-0")], BASE),
    ("exactly the last accepted time", [dumps(occurrence("x", t=LATEST_TIME))], LATEST_TIME),
    ("just past it", [dumps(occurrence("x", t=LATEST_TIME + 1e-3))], BASE),
    ("integer time", [dumps(occurrence("x", t=int(BASE) + 200))], BASE + 200),
    ("exponent time", [dumps(occurrence("x", t=BASE)).replace(late(0), b"1.7934914E+9")], 1793491400.0),
    ("RFC 3339 update_date", [dumps({**SC, "update_date": "2026-11-01T00:10:00Z"})], BASE + 600),
    ("RFC 3339 update_date with an offset",
     [dumps({**SC, "update_date": "2026-11-01T01:10:00+01:00"})], BASE + 600),
    ("RFC 3339 update_date with an escape",
     [dumps({**SC, "update_date": "2026-11-01T00:10:00Z"}).replace(b'00Z"', b'00\\u005a"')], BASE + 600),
    ("RFC 3339 update_date with an escaped separator",
     [dumps({**SC, "update_date": "2026-11-01T00:10:00Z"}).replace(b"T", b"\\/"),
      dumps({**SC, "update_date": "2026-11-01T00:10:01Z"}).replace(b"T", b"\\t")], BASE + 601),
    ("not a time string", [dumps({**SC, "update_date": "tomorrow"})], BASE),
    ("unix seconds as a string in a status change", [dumps({**SC, "update_date": "1793491900"})], BASE),
    ("detection_time as a string", [dumps(occurrence("x", t="2026-11-01T00:10:00Z"))], BASE),
    ("null update_date", [dumps({**SC, "update_date": None})], BASE),
    ("status change without update_date", [dumps({k: v for k, v in SC.items() if k != "update_date"})], BASE),
    ("nested times in evidence and event", [dumps({**{k: v for k, v in occurrence(
        "x", t=BASE + 5, evidence_data={"detection_time": BASE + 900, "update_date": "2026-11-02T00:00:00Z"}).items()
        if k != "event_id"}, "event": {"event_id": uuid.uuid4().hex, "project_id": 1, "platform": "python",
                                      "environment": "prod", "received": BASE, "timestamp": BASE, "tags": {},
                                      "detection_time": BASE + 950}})], BASE + 5),
    ("duplicated key, early last", [dumps(occurrence("x", t=BASE + 5)).replace(
        b"{", b'{"detection_time":%s,' % late(900), 1)], BASE + 5),
    ("duplicated key, late last", [dumps(occurrence("x", t=BASE + 900)).replace(
        b"{", b'{"detection_time":%s,' % late(5), 1)], BASE + 900),
    ("duplicated key, the first below every other time", [dumps(occurrence("x", t=BASE + 900)).replace(
        b"{", b'{"detection_time":%s,' % late(-100), 1)], BASE + 900),
    ("a hair later than the others, after a later reject",
     [dumps({**occurrence("x", t=BASE + 900), "level": 3}), dumps(occurrence("x", t=math.nextafter(BASE, 2 * BASE)))],
     math.nextafter(BASE, 2 * BASE)),
    ("status change carrying a later detection_time", [dumps({**SC, "detection_time": BASE + 900})], BASE + 10),
    ("occurrence carrying a later update_date", [dumps(occurrence("x", t=BASE + 5, update_date=BASE + 900))],
     BASE + 5),
    ("payload_type last", [dumps({**{k: v for k, v in SC.items() if k != "payload_type"},
                                  "payload_type": "status_change", "detection_time": BASE + 900})], BASE + 10),
    ("an unknown payload_type", [dumps({**occurrence("x", t=BASE + 900), "payload_type": "other"})], BASE),
    ("escaped detection_time key", [dumps(occurrence("x", t=BASE + 700)).replace(
        b'"detection_time"', b'"detection\\u005ftime"')], BASE + 700),
    ("escaped key wins as the last duplicate", [dumps(occurrence("x", t=BASE + 700)).replace(
        b'"detection_time"', b'"detection\\u005Ftime"').replace(b"{", b'{"detection_time":%s,' % late(1), 1)],
     BASE + 700),
    ("escaped key loses as the first duplicate", [dumps(occurrence("x", t=BASE + 1)).replace(
        b"{", b'{"detection\\u005ftime":%s,' % late(700), 1)], BASE + 1),
    ("escaped key, upper-case hex", [dumps(occurrence("x", t=BASE + 700)).replace(
        b'"detection_time"', b'"detection_ti\\u006De"')], BASE + 700),
    ("escapes that spell no key", [dumps(occurrence("x", t=BASE + 7, culprit="c")).replace(
        b'"culprit":"c"', b'"culprit":"caf\\u00e9 \\u0041\\u005b \\"q\\" \\\\"')], BASE + 7),
    ("escaped update_date key", [dumps({**SC, "update_date": BASE + 300}).replace(
        b'"update_date"', b'"\\u0075pdate_date"')], BASE + 300),
    ("escaped status_change type", [dumps({**SC, "update_date": BASE + 300, "detection_time": 1.0}).replace(
        b'"status_change"', b'"status\\u005fchange"')], BASE + 300),
    ("whitespace around the colon", [dumps(occurrence("x", t=BASE + 300)).replace(
        b'"detection_time":', b'"detection_time" \t:\r ')], BASE + 300),
    ("a key holding an escaped quote", [dumps({**occurrence("x", t=BASE + 5), 'q"detection_time': BASE + 900})],
     BASE + 5),
    ("backslashes elsewhere", [dumps(occurrence("x", t=BASE + 6, culprit='C:\\app\\"main"\n'))], BASE + 6),
    ("invalid UTF-8", [dumps(occurrence("x", t=BASE + 900, culprit="\x00")).replace(b"\\u0000", b"\xff")], BASE),
    ("not an object", [b"[%s]" % late(900), late(900), b'"detection_time":%s' % late(900)], BASE),
    ("a later record the validator rejects", [dumps({**occurrence("x", t=BASE + 900), "level": 3})], BASE),
]


@pytest.mark.parametrize("name,lines,expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("block", [1, 2, 1000])
def test_each_trap_gives_the_exact_latest_valid_time(tmp_path, monkeypatch, name, lines, expected, block):
    monkeypatch.setattr(replay, "_BLOCK", block)
    path = write_jsonl(tmp_path / "in.jsonl", [dumps(OCC), *lines, dumps(occurrence("y", t=BASE - 5))])
    assert scanned([path]) == exact([path]) == expected


def test_blank_and_crlf_lines_gz_and_an_oversized_record(tmp_path):
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n  \r\n" + dumps(occurrence("x", t=BASE + 300)) + b"\r\n\n"))
    big = write_jsonl(tmp_path / "big.jsonl", [dumps(occurrence("big", t=BASE + 900, culprit="c" * 3000)),
                                               dumps(OCC)])
    assert scanned([str(gz), big], max_bytes=2000) == exact([str(gz), big], max_bytes=2000) == BASE + 300
    assert scanned([str(gz), big]) == BASE + 900


def test_avro_records_plain_and_wrapped(tmp_path):
    """Avro records are dicts, or JSON text (str or bytes, lines or not) in a `payload` field."""
    wrapped = tmp_path / "wrapped.avro"
    with open(wrapped, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "string"}]},
                        [{"payload": dumps(occurrence("w", t=BASE + 450)).decode()}, {"payload": "{"}])
    flat_payload = {**occurrence("f", t=BASE + 500), "evidence_data": {}, "evidence_display": []}
    flat = tmp_path / "flat.avro"
    with open(flat, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "Occ", "fields": [
            {"name": k, "type": t} for k, t in [
                ("payload_type", "string"), ("id", "string"), ("project_id", "long"),
                ("fingerprint", {"type": "array", "items": "string"}), ("issue_title", "string"),
                ("subtitle", "string"), ("culprit", "string"), ("type", "long"), ("detection_time", "double"),
                ("level", "string"), ("event_id", "string"), ("evidence_data", {"type": "map", "values": "long"}),
                ("evidence_display", {"type": "array", "items": "string"})]]},
            [flat_payload, {**flat_payload, "detection_time": 1e300}, {**flat_payload, "detection_time": BASE + 400}])
    # JSON across lines: a time after a newline, and a valid occurrence on a line of its own that is
    # only part of an invalid record
    inner = dumps(occurrence("inner", t=BASE + 900))
    split = tmp_path / "split.avro"
    with open(split, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "bytes"}]},
                        [{"payload": p} for p in (
                            orjson.dumps(occurrence("i", t=BASE + 600), option=orjson.OPT_INDENT_2).replace(
                                b'"detection_time": ', b'"detection_time":\n'),
                            b'{"detection_time": "late",\n"evidence_data": {"x":\n' + inner + b"\n}}", inner[:-1])])
    paths = [str(wrapped), str(flat)]
    assert scanned(paths) == exact(paths) == BASE + 500
    assert scanned([str(wrapped)]) == exact([str(wrapped)]) == BASE + 450
    assert scanned([str(split), str(wrapped)]) == exact([str(split), str(wrapped)]) == BASE + 600


# Hostile lines at random: a valid payload, then a few of the traps above, then maybe broken. Their
# times sit where `generate`'s latest ones do, so hostile and plain records compete for the maximum.
# Without `strings` only numbers follow time keys, without `escapes` no backslash is written.
LAST = BASE + 3 * 86400
_NUMBER_TEXTS = [b"1e300", b"-1e300", b"1e400", b"0", b"-0", b"18446744073709551616",
                 b"32503680000.001", b"1.79375e9", b"%d" % LAST, b"-%d" % LAST]
_OTHER_TEXTS = [b"NaN", b"Infinity", b"-Infinity", b"null", b"true", b"{}", b"[]", b'"tomorrow"', b'"%d"' % LAST]


def _time_text(rng: random.Random, strings: bool) -> bytes:
    t = LAST + rng.randrange(-40, 40) + rng.choice([0, 0.5, 0.001])
    roll = rng.random()
    if roll < 0.002:  # the last time accepted
        return b"%d" % LATEST_TIME
    if roll < 0.55 or not strings and roll < 0.85:
        return orjson.dumps(t)
    if not strings:
        return rng.choice(_NUMBER_TEXTS)
    if roll < 0.75:
        text = datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", rng.choice(["Z", "+00:00"]))
        escape = rng.choice([None, None, (b'Z"', b'\\u005a"'), (b"T", b"\\/"), (b"T", b"\\t")])
        return orjson.dumps(text).replace(*escape) if escape else orjson.dumps(text)
    return rng.choice(_NUMBER_TEXTS + _OTHER_TEXTS)


def _escaped(name: str, rng: random.Random) -> bytes:
    """The key as JSON with one of its characters (often its '_') written as a \\u escape."""
    i = name.find("_") if "_" in name and rng.random() < 0.4 else rng.randrange(len(name))
    escape = (b"\\u%04x" if rng.random() < 0.5 else b"\\u%04X") % ord(name[i])
    return orjson.dumps(name[:i])[:-1] + escape + orjson.dumps(name[i + 1:])[1:]


def hostile_line(rng: random.Random, strings: bool = True, escapes: bool = True) -> bytes:
    if rng.random() < 0.6:
        payload = occurrence(f"fp{rng.randrange(5)}", id=str(uuid.UUID(int=rng.getrandbits(128))),
                             event_id=uuid.UUID(int=rng.getrandbits(128)).hex)
        field = "detection_time"
    else:
        payload = {**status_change(f"fp{rng.randrange(5)}"), "id": str(uuid.UUID(int=rng.getrandbits(128)))}
        field = "update_date"
    pairs = [[k, _time_text(rng, strings) if k == field else orjson.dumps(v)] for k, v in payload.items()]
    for _ in range(rng.randrange(4)):
        trap = rng.randrange(8)
        if trap == 0:  # a duplicate of either time field, anywhere
            pairs.insert(rng.randrange(len(pairs) + 1),
                         [rng.choice(["detection_time", "update_date"]), _time_text(rng, strings)])
        elif trap == 1:  # times nested in evidence or activity data
            nested = b'{"detection_time":%s,"update_date":%s}' % (_time_text(rng, strings), _time_text(rng, strings))
            pairs.append([rng.choice(["evidence_data", "activity_data"]), nested])
        elif trap == 2:  # payload_type moved, dropped, changed or escaped
            pairs = [p for p in pairs if p[0] != "payload_type"]
            value = rng.choice([b'"occurrence"', b'"status_change"', b"null", b'"other"',
                                b'"status\\u005fchange"' if escapes else b'"status_change"'])
            if rng.random() < 0.8:
                pairs.insert(rng.randrange(len(pairs) + 1), ["payload_type", value])
        elif trap == 3 and escapes:  # an escaped quote inside a key that ends like a time key
            pairs.append(['q"detection_time', _time_text(rng, strings)])
        elif trap == 4 and escapes:  # backslashes in an unrelated string
            pairs.append(["note", rng.choice([orjson.dumps('a\\b"c\n'), b'"caf\\u00e9 \\u0041\\\\u0064"'])])
        elif trap == 5:  # too big for the small max_bytes
            pairs.append(["pad", b'"' + b"p" * rng.choice([100, 2000]) + b'"'])
        elif trap == 6:  # a key dropped
            pairs.pop(rng.randrange(len(pairs)))
        elif trap == 7:  # the time field dropped
            pairs = [p for p in pairs if p[0] != field]
    sep = rng.choice([b":", b":", b" : ", b"\t:\r"])
    keys = [orjson.dumps(k) for k, _ in pairs]
    if escapes and rng.random() < 0.25:  # one key (of the time fields more often) escaped
        i = rng.choice([i for i, (k, _) in enumerate(pairs) if k in ("detection_time", "update_date")] or [0]
                       if rng.random() < 0.5 else range(len(pairs)))
        keys[i] = _escaped(pairs[i][0], rng)
    line = b"{" + b",".join(k + sep + v for k, (_, v) in zip(keys, pairs)) + b"}"
    roll = rng.random()
    if roll < 0.04:
        line = line[:rng.randrange(len(line))]
    elif roll < 0.06:
        line += b"}"
    elif roll < 0.08:
        line = b"[" + line + b"]"
    elif roll < 0.09 and escapes:
        line = line.replace(b'"fp', b'"\xfe', 1)
    elif roll < 0.11:
        line = b" \t" + line + b"  \r"
    return line


@pytest.mark.parametrize("seed", range(100))
def test_random_hostile_inputs_give_the_exact_latest_valid_time(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    monkeypatch.setattr(replay, "_BLOCK", rng.choice([1, 2, 3, 16, 1000]))
    strings, escapes = rng.choice([(False, False), (False, True), (True, True)])
    lines = [hostile_line(rng, strings, escapes) for _ in range(rng.choice([5, 60, 400]))]
    if rng.random() < 0.3:
        lines += list(generate(rng.choice([50, 300]), seed=seed, invalid_share=0.1, status_change_share=0.1))
    order = rng.choice(["random", "ascending", "descending"])
    rng.shuffle(lines)
    if order != "random":  # by valid time, the rejects anywhere
        validator = PayloadValidator()
        lines.sort(key=lambda line: replay._valid_time(line, validator, MAX_BYTES) or rng.uniform(LAST - 50, LAST + 50),
                   reverse=order == "descending")
    lines = [line if rng.random() > 0.02 else b"" for line in lines]
    cut = rng.randrange(len(lines) + 1)
    first = write_jsonl(tmp_path / "a.jsonl", lines[:cut])
    second = tmp_path / "b.jsonl.gz"
    second.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines[cut:])))
    paths = [first, str(second)]
    max_bytes = rng.choice([MAX_BYTES, 1500])
    assert scanned(paths, max_bytes) == exact(paths, max_bytes)


def test_random_hostile_records_win_the_maximum_in_every_form():
    """The random inputs above are worth their name: among groups of 30 of their records, the one
    holding the latest valid time is sometimes one with a string time, an escaped key, a duplicated
    or nested time key, and the records the scan must not believe often claim a later time."""
    rng, validator = random.Random(1), PayloadValidator()
    winners, fooled = [], 0
    for _ in range(100):
        lines = [hostile_line(rng) for _ in range(30)]
        times = [replay._valid_time(line, validator, MAX_BYTES) for line in lines]
        latest = max(t for t in times if t is not None)
        winners += [line for line, t in zip(lines, times) if t == latest]
        fooled += any(t is None and latest < replay._bound(line) < math.inf for line, t in zip(lines, times))
    assert any(isinstance(_time_value(orjson.loads(w)), str) for w in winners)  # an RFC 3339 string
    assert any(b"\\u" in w for w in winners)
    assert any(w.count(b'_time"') + w.count(b'_date"') > 1 for w in winners)
    assert fooled > 10


def _time_value(payload: dict):
    return payload.get("update_date" if payload.get("payload_type") == "status_change" else "detection_time")


class CountingValidator(PayloadValidator):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def validate(self, payload):
        self.calls += 1
        return super().validate(payload)


@pytest.mark.parametrize("order", ["generated", "shuffled", "reversed"])
def test_the_scan_validates_only_records_that_could_raise_the_maximum(tmp_path, order):
    """Counted with the real validator: in input sorted by time, reversed or shuffled, a handful of
    validations a block at most, a record with many claims validated once."""
    lines = list(generate(5000, seed=3, invalid_share=0.05, status_change_share=0.05))
    if order == "shuffled":
        random.Random(3).shuffle(lines)
    elif order == "reversed":
        lines.reverse()
    # a reject claiming the latest time at the top level and in 200 nested keys: validated once
    claims = {"detection_time": LAST + 3600, "nested": [{"detection_time": LAST + 3600 + i} for i in range(200)]}
    lines.insert(2500, dumps({**occurrence("claims", t=LAST + 3600), "level": 3, **claims}))
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    validator = CountingValidator()
    assert latest_valid_time([path], validator, MAX_BYTES) == exact([path])
    assert validator.calls <= 50  # of 5,000 records (one or two a block, plus rejects that claim later times)
