"""The detector-side producer against the real Pub/Sub emulator and a real Kafka-protocol broker (Tansu):
what is sent arrives with its body, group key, ordering key and attributes; what the pipeline would
dead-letter is refused with the same reason code and never sent."""
import gzip
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from issue_platform import outcomes
from issue_platform.enums import GroupStatus, GroupSubStatus
from issue_platform.fingerprint import group_key, hash_fingerprint
from issue_platform.producer import (EVENT_TIME_ATTRIBUTE, IssueEvidence, IssueOccurrence, PayloadType,
                                     StatusChangeMessage, configure, connect, produce_occurrence_to_kafka,
                                     shutdown)
from issue_platform.validation import PayloadValidator, Rejected, parse
from pipelines.cli import main
from pipeline_support import BASE, occurrence, status_change, write_jsonl
from servers import consume_kafka, create_kafka_topic, create_pubsub_topic, pull_pubsub

PROJECT = "producer-test"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _occurrence(fingerprint: str, t: float, project_id: int = 1, **extra) -> IssueOccurrence:
    return IssueOccurrence(
        project_id=project_id, fingerprint=[fingerprint], issue_title="Cron job ran late", subtitle="42 min",
        culprit="backup", type=4001, detection_time=t, evidence_data={"minutes": 42},
        evidence_display=[IssueEvidence("Late by", "42 min", important=True)], **extra)


def _key(project_id: int, fingerprint: str) -> str:
    return group_key(project_id, hash_fingerprint([fingerprint])[0])


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _sent_batch(producer):
    """Two groups in two projects: three occurrences and a status change, in send order."""
    event = {"event_id": None, "project_id": 2, "platform": "python", "received": BASE, "timestamp": BASE,
             "environment": "prod", "tags": {}}
    with_event = _occurrence("fp-b", BASE + 1, project_id=2)
    event["event_id"] = with_event.event_id
    messages = [
        producer.produce(PayloadType.OCCURRENCE, occurrence=_occurrence("fp-a", BASE)),
        producer.produce(PayloadType.OCCURRENCE, occurrence=with_event, event_data=event),
        producer.produce(PayloadType.OCCURRENCE, occurrence=_occurrence("fp-a", BASE + 2)),
        producer.produce(PayloadType.STATUS_CHANGE, status_change=StatusChangeMessage(
            project_id=1, fingerprint=["fp-a"], new_status=GroupStatus.IGNORED,
            new_substatus=GroupSubStatus.FOREVER, update_date=BASE + 3)),
    ]
    assert producer.flush(20) == 4
    return messages


def _check_batch(messages, bodies, keys, attributes):
    """What arrived equals what was sent; each body passes the pipeline's validator."""
    assert bodies == [m.body for m in messages]
    assert keys == [_key(1, "fp-a"), _key(2, "fp-b"), _key(1, "fp-a"), _key(1, "fp-a")]
    assert [a[EVENT_TIME_ATTRIBUTE] for a in attributes] == [_rfc3339(BASE + i) for i in range(4)]
    assert [a["payload_type"] for a in attributes] == ["occurrence"] * 3 + ["status_change"]
    payloads = [orjson.loads(b) for b in bodies]
    assert payloads[1]["event"]["environment"] == "prod"
    assert payloads[3]["new_status"] == GroupStatus.IGNORED and payloads[3]["payload_type"] == "status_change"
    validator = PayloadValidator()
    assert [validator.validate(parse(b)).project_id for b in bodies] == [1, 2, 1, 1]


def test_pubsub_send_and_pull_back(pubsub_emulator):
    topic, sub = _name("ingest"), _name("sub")
    create_pubsub_topic(PROJECT, topic, (sub,), ordering=True)
    producer = connect(f"pubsub:projects/{PROJECT}/topics/{topic}")
    messages = _sent_batch(producer)
    producer.close()
    received = pull_pubsub(PROJECT, sub, 4)
    assert len(received) == 4
    # Pub/Sub orders within an ordering key only: compare per key, in send order.
    by_id = {orjson.loads(m.data)["id"]: m for m in received}
    in_send_order = [by_id[orjson.loads(m.body)["id"]] for m in messages]
    _check_batch(messages, [m.data for m in in_send_order], [m.ordering_key for m in in_send_order],
                 [dict(m.attributes) for m in in_send_order])
    same_key = [orjson.loads(m.data)["id"] for m in received if m.ordering_key == _key(1, "fp-a")]
    assert same_key == [orjson.loads(m.body)["id"] for m in messages if m.key == _key(1, "fp-a")]


def test_kafka_send_and_consume_back(kafka_broker):
    topic = _name("ingest")
    create_kafka_topic(kafka_broker.address, topic, partitions=3)
    producer = connect(f"kafka:{kafka_broker.address}/{topic}")
    messages = _sent_batch(producer)
    producer.close()
    received = consume_kafka(kafka_broker.address, topic, 4)
    assert len(received) == 4
    # One key, one partition: the group's messages arrive in send order.
    partitions = {m.key(): {r.partition() for r in received if r.key() == m.key()} for m in received}
    assert all(len(p) == 1 for p in partitions.values())
    by_id = {orjson.loads(m.value())["id"]: m for m in received}
    in_send_order = [by_id[orjson.loads(m.body)["id"]] for m in messages]
    _check_batch(messages, [m.value() for m in in_send_order], [m.key().decode() for m in in_send_order],
                 [{k: v.decode() for k, v in m.headers()} for m in in_send_order])
    fp_a = sorted((m for m in received if m.key().decode() == _key(1, "fp-a")), key=lambda m: m.offset())
    assert [m.value() for m in fp_a] == [m.body for m in messages if m.key == _key(1, "fp-a")]


@pytest.mark.parametrize("change, reason", [
    ({"fingerprint": []}, outcomes.EMPTY_FINGERPRINT),
    ({"type": 999_999}, outcomes.UNKNOWN_GROUP_TYPE),
    ({"id": "not-a-uuid"}, outcomes.INVALID_UUID),
    ({"priority": 30}, outcomes.INVALID_VALUE),
])
def test_invalid_occurrences_are_refused_and_not_sent(kafka_broker, change, reason):
    topic = _name("ingest")
    create_kafka_topic(kafka_broker.address, topic)
    producer = connect(f"kafka:{kafka_broker.address}/{topic}")
    base = dict(project_id=1, fingerprint=["fp"], issue_title="t", subtitle="s", culprit="c", type=4001,
                detection_time=BASE)
    with pytest.raises(Rejected) as refused:
        producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(**{**base, **change}))
    assert refused.value.reason == reason
    sent = producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(**base))  # a valid one after it
    assert producer.flush(20) == 1
    producer.close()
    # One partition: had the refused payload been sent, it would be the topic's first message.
    [first] = consume_kafka(kafka_broker.address, topic, 1)
    assert first.value() == sent.body


def test_builder_misuse_is_a_value_error(kafka_broker):
    producer = connect(f"kafka:{kafka_broker.address}/unused")  # nothing is sent: the arguments are checked first
    with pytest.raises(ValueError, match="occurrence must be provided"):
        producer.produce(PayloadType.OCCURRENCE)
    with pytest.raises(ValueError, match="same"):
        producer.produce(PayloadType.OCCURRENCE, occurrence=_occurrence("fp", BASE), event_data={"event_id": "x"})
    producer.close(0)
    with pytest.raises(ValueError, match="expected pubsub"):
        connect("pubsub:topics/x")


def test_module_level_function_uses_the_configured_producer(kafka_broker):
    topic = _name("ingest")
    create_kafka_topic(kafka_broker.address, topic)
    producer = configure(f"kafka:{kafka_broker.address}/{topic}")
    message = produce_occurrence_to_kafka(PayloadType.OCCURRENCE, occurrence=_occurrence("fp-m", BASE))
    assert producer.flush(20) == 1
    shutdown()
    [received] = consume_kafka(kafka_broker.address, topic, 1)
    assert (received.key().decode(), received.value()) == (message.key, message.body)


def test_cli_sends_valid_lines_and_lists_refused_ones(kafka_broker, tmp_path, capsys):
    topic = _name("ingest")
    create_kafka_topic(kafka_broker.address, topic)
    good = [occurrence("fp-1", type_id=4001, t=BASE + i) for i in range(3)] + [status_change("fp-1", t=BASE + 9)]
    path = tmp_path / "payloads.jsonl.gz"
    with gzip.open(path, "wb") as handle:
        lines = [orjson.dumps(good[0]), b"{not json", orjson.dumps(good[1]), b"",
                 orjson.dumps({**good[2], "project_id": 0}), orjson.dumps(good[2]), orjson.dumps(good[3])]
        handle.write(b"\n".join(lines) + b"\n")
    assert main(["produce", str(path), "--to", f"kafka:{kafka_broker.address}/{topic}"]) == 1
    out, err = capsys.readouterr()
    refused = out.splitlines()
    assert len(refused) == 2
    assert refused[0].startswith(f"{path}:2: invalid_json: ") and refused[1].startswith(f"{path}:5: invalid_value: ")
    assert "4 sent, 2 refused" in err
    # One partition, file order: a refused line sent by mistake would be among the first four.
    received = consume_kafka(kafka_broker.address, topic, 4)
    assert [orjson.loads(m.value()) for m in received] == good


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["produce", str(tmp_path / "missing.jsonl"), "--to", "kafka:127.0.0.1:9/t"]) == 2
    assert capsys.readouterr().err == f"issue-platform: error: {tmp_path / 'missing.jsonl'}: no such file\n"
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence()])
    assert main(["produce", path, "--to", "nowhere"]) == 2
    assert "expected pubsub:projects/P/topics/T or kafka:HOST:PORT/TOPIC" in capsys.readouterr().err


def test_readme_detector_sends_an_occurrence(pubsub_emulator):
    """The README's ten-line detector, run as written against the emulator (only the topic differs)."""
    topic, sub = _name("ingest"), _name("sub")
    create_pubsub_topic(PROJECT, topic, (sub,))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Sending from a detector", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code.replace("projects/my-project/topics/ingest-occurrences",
                              f"projects/{PROJECT}/topics/{topic}"), "README", "exec"), {})
    [message] = pull_pubsub(PROJECT, sub, 1)
    payload = orjson.loads(message.data)
    assert payload["type"] == 4001 and payload["fingerprint"] == ["cron-late:nightly-backup"]
    assert message.attributes["payload_type"] == "occurrence"


def test_unconfirmed_sends_raise_produce_error(pubsub_emulator):
    """Nothing is lost silently: a broker that never answers (refused before anything is sent), a
    topic that does not exist."""
    from issue_platform.producer import ProduceError, TargetError
    from servers import free_port

    with pytest.raises(TargetError, match="no broker answered within 1 s"):
        connect(f"kafka:127.0.0.1:{free_port()}/ingest", connect_timeout=1)
    pubsub = connect(f"pubsub:projects/{PROJECT}/topics/{_name('missing')}")
    pubsub.produce(PayloadType.OCCURRENCE, occurrence=_occurrence("fp", BASE))
    with pytest.raises(ProduceError, match="1 failed, 0 unconfirmed; first error: NotFound"):
        pubsub.flush(10)


def test_a_status_change_without_update_date_carries_its_send_time():
    from issue_platform.producer import payload_for, prepare

    before = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    message = prepare(orjson.dumps(payload_for(PayloadType.STATUS_CHANGE, status_change=StatusChangeMessage(
        project_id=3, fingerprint=["fp"], new_status=GroupStatus.RESOLVED))), PayloadValidator())
    after = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert before <= message.attributes[EVENT_TIME_ATTRIBUTE] <= after
    assert message.key == _key(3, "fp") and orjson.loads(message.body)["update_date"] is None
