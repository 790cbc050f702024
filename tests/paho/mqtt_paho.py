"""MQTT interop with the Eclipse Paho Python client (paho-mqtt 2.x), for
3.1.1 and 5.0: QoS 0/1/2, v5 properties, retained messages, wills,
persistent sessions and wildcards against a running Starling.

Usage: python mqtt_paho.py HOST PORT
Prints one line per check and exits 1 at the first failure.
"""

import queue
import socket
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = sys.argv[1]
PORT = int(sys.argv[2])
WAIT_S = 20


def client(client_id, protocol, clean=True, will=None):
    """A connected client whose received messages land in `c.inbox`."""
    kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": client_id,
              "protocol": protocol}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = clean
    c = mqtt.Client(**kwargs)
    c.username_pw_set(client_id)
    c.inbox = queue.Queue()
    c.connected = queue.Queue()
    c.on_message = lambda _c, _u, message: c.inbox.put(message)
    c.on_connect = lambda _c, _u, flags, reason, _p: c.connected.put((flags, reason))
    if will:
        c.will_set(*will)
    if protocol == mqtt.MQTTv5:
        properties = Properties(PacketTypes.CONNECT)
        if not clean:
            properties.SessionExpiryInterval = 3600
        c.connect(HOST, PORT, keepalive=30, clean_start=clean, properties=properties)
    else:
        c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    flags, reason = c.connected.get(timeout=WAIT_S)
    if reason.is_failure:
        raise AssertionError(f"CONNECT of {client_id} refused: {reason}")
    c.session_present = flags.session_present
    return c


def subscribe(c, topic, qos):
    done = queue.Queue()
    c.on_subscribe = lambda _c, _u, _mid, codes, _p: done.put(codes)
    c.subscribe(topic, qos)
    codes = done.get(timeout=WAIT_S)
    if any(code.is_failure for code in codes):
        raise AssertionError(f"SUBSCRIBE {topic} refused: {codes}")


def publish(c, topic, payload, qos, retain=False, properties=None):
    info = c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
    info.wait_for_publish(timeout=WAIT_S)
    if not info.is_published():
        raise AssertionError(f"PUBLISH to {topic} was not acknowledged")


def receive(c, count):
    return [c.inbox.get(timeout=WAIT_S) for _ in range(count)]


def stop(c):
    c.disconnect()
    c.loop_stop()


def unique(name):
    return f"{name}-{uuid.uuid4().hex[:8]}"


CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


@check
def qos_0_1_2_in_both_versions():
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        topic = unique("paho/qos")
        sub = client(unique("sub"), protocol)
        subscribe(sub, topic, 2)
        pub = client(unique("pub"), protocol)
        for qos in (0, 1, 2):
            publish(pub, topic, f"qos {qos}", qos)
        got = receive(sub, 3)
        assert [m.payload.decode() for m in got] == ["qos 0", "qos 1", "qos 2"], got
        assert [m.qos for m in got] == [2, 2, 2], [m.qos for m in got]
        stop(pub)
        stop(sub)


@check
def v5_properties_travel_with_the_message():
    topic = unique("paho/props")
    sub = client(unique("sub"), mqtt.MQTTv5)
    subscribe(sub, topic, 1)
    pub = client(unique("pub"), mqtt.MQTTv5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "paho/replies"
    properties.CorrelationData = b"\x01\x02"
    properties.UserProperty = [("trace", "abc")]
    properties.ContentType = "text/plain"
    publish(pub, topic, "request", 1, properties=properties)
    (message,) = receive(sub, 1)
    assert message.properties.ResponseTopic == "paho/replies", message.properties
    assert message.properties.CorrelationData == b"\x01\x02", message.properties
    assert message.properties.UserProperty == [("trace", "abc")], message.properties
    assert message.properties.ContentType == "text/plain", message.properties
    stop(pub)
    stop(sub)


@check
def retained_message_for_new_subscribers():
    topic = unique("paho/retained")
    pub = client(unique("pub"), mqtt.MQTTv311)
    publish(pub, topic, "last known", 1, retain=True)
    stop(pub)
    sub = client(unique("sub"), mqtt.MQTTv5)
    subscribe(sub, topic, 1)
    (message,) = receive(sub, 1)
    assert message.retain and message.payload == b"last known", message
    stop(sub)


@check
def will_is_published_when_the_connection_drops():
    topic = unique("paho/will")
    watcher = client(unique("watch"), mqtt.MQTTv5)
    subscribe(watcher, topic, 1)
    doomed = client(unique("doomed"), mqtt.MQTTv311, will=(topic, "gone", 1))
    # Drop the TCP connection without DISCONNECT.
    doomed.loop_stop()
    doomed.socket().shutdown(socket.SHUT_RDWR)
    doomed.socket().close()
    (message,) = receive(watcher, 1)
    assert message.payload == b"gone", message
    stop(watcher)


@check
def persistent_session_gets_what_was_published_while_away():
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        topic = unique("paho/session")
        worker_id = unique("worker")
        worker = client(worker_id, protocol, clean=False)
        subscribe(worker, topic, 1)
        stop(worker)
        pub = client(unique("pub"), protocol)
        for n in range(3):
            publish(pub, topic, f"job {n}", 1)
        stop(pub)
        worker = client(worker_id, protocol, clean=False)
        assert worker.session_present, "the session was kept"
        got = receive(worker, 3)
        assert [m.payload.decode() for m in got] == ["job 0", "job 1", "job 2"], got
        stop(worker)


@check
def wildcards_match_levels():
    base = unique("paho/wild")
    sub = client(unique("sub"), mqtt.MQTTv5)
    subscribe(sub, f"{base}/+/temp", 0)
    pub = client(unique("pub"), mqtt.MQTTv311)
    publish(pub, f"{base}/hall/temp", "21", 1)
    publish(pub, f"{base}/hall/humidity", "40", 1)
    publish(pub, f"{base}/door/temp", "19", 1)
    got = receive(sub, 2)
    assert [(m.topic, m.payload.decode()) for m in got] == [
        (f"{base}/hall/temp", "21"), (f"{base}/door/temp", "19")], got
    stop(pub)
    stop(sub)


def main():
    failed = 0
    for number, function in enumerate(CHECKS, 1):
        started = time.time()
        try:
            function()
            print(f"ok {number} - {function.__name__} ({time.time() - started:.2f} s)")
        except Exception as error:  # noqa: BLE001 - report every failure the same way
            failed += 1
            print(f"not ok {number} - {function.__name__}: {error!r}")
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
