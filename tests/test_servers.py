"""The local servers start on loopback, answer, and stop by process id."""
import psutil
import pytest

from servers import HOST, consume_kafka, create_kafka_topic, create_pubsub_topic, start_tansu


def test_servers_listen_on_loopback_only(pubsub_emulator, kafka_broker, apache_kafka):
    for server in (pubsub_emulator, kafka_broker, apache_kafka):
        pids = {server.process.pid, *(c.pid for c in psutil.Process(server.process.pid).children(recursive=True))}
        listening = {c.laddr.ip.removeprefix("::ffff:") for c in psutil.net_connections("tcp")
                     if c.pid in pids and c.status == psutil.CONN_LISTEN}
        assert listening == {HOST}, (server.name, listening)


def test_pubsub_emulator_round_trip(pubsub_emulator):
    from google.cloud import pubsub_v1

    create_pubsub_topic("servers-test", "topic", ("sub",))
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(publisher.topic_path("servers-test", "topic"), b"hello", a="1").result(10)
    subscriber = pubsub_v1.SubscriberClient()
    response = subscriber.pull(subscription=subscriber.subscription_path("servers-test", "sub"),
                               max_messages=10, timeout=10)
    assert [(m.message.data, dict(m.message.attributes)) for m in response.received_messages] == [
        (b"hello", {"a": "1"})]


@pytest.mark.servers
def test_kafka_broker_round_trip_and_stop_by_pid():
    from confluent_kafka import Producer

    broker = start_tansu()
    try:
        create_kafka_topic(broker.address, "topic")
        producer = Producer({"bootstrap.servers": broker.address, "enable.idempotence": True})
        producer.produce("topic", b"v", key=b"k")
        assert producer.flush(10) == 0
        producer.close()
        [message] = consume_kafka(broker.address, "topic", 1)
        assert (message.key(), message.value()) == (b"k", b"v")
    finally:
        broker.stop()
    assert broker.process.poll() is not None  # stopped and reaped
