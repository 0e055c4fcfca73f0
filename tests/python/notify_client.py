"""Python `websockets` as an independent client of examples/notify_server.

    python notify_client.py ws://127.0.0.1:PORT/ws SCENARIO

Scenarios: `protocol` (admission, the wire format, errors, recovery by (epoch, offset)).
Prints `OK` and exits 0 when every check passed; an assertion error otherwise.
"""

import json
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

URL = sys.argv[1]
SCENARIO = sys.argv[2]


def open_ws(token, in_query=False):
    if in_query:
        return connect(f"{URL}?token={token}", open_timeout=5)
    return connect(URL, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5)


def recv(ws):
    return json.loads(ws.recv(timeout=5))


def send(ws, obj):
    ws.send(json.dumps(obj))


def subscribe(ws, channel, since=None):
    req = {"op": "subscribe", "channel": channel}
    if since is not None:
        req["since"] = since
    send(ws, req)
    reply = recv(ws)
    assert reply["op"] == "subscribed" and reply["channel"] == channel, reply
    return reply


def protocol():
    for bad in ["nope", ""]:
        try:
            open_ws(bad)
            raise AssertionError(f"token {bad!r} was accepted")
        except InvalidStatus as e:
            assert e.response.status_code == 401, e.response.status_code

    a = open_ws("s1")
    b = open_ws("s2", in_query=True)
    s = subscribe(a, "py")
    assert s == {"op": "subscribed", "channel": "py", "epoch": s["epoch"], "offset": 0,
                 "recovered": False}, s
    epoch = s["epoch"]

    values = [None, 1, "x", [1, 2], {"k": "v"}, True]
    for v in values:
        send(b, {"op": "publish", "channel": "py", "data": v})
    for i, v in enumerate(values, start=1):
        m = recv(a)
        assert m == {"op": "message", "channel": "py", "epoch": epoch, "offset": i, "from": "bob",
                     "data": v}, m

    # Errors leave the connection usable.
    b.send("{not json")
    assert recv(b)["op"] == "error"
    send(b, {"op": "dance"})
    e = recv(b)
    assert e["op"] == "error" and "code" in e and "message" in e, e
    send(b, {"op": "publish"})
    assert recv(b)["op"] == "error"
    send(b, {"op": "publish", "channel": "py", "data": "after errors"})
    m = recv(a)
    assert (m["offset"], m["data"]) == (7, "after errors"), m
    send(a, {"op": "subscribe", "channel": "py"})
    assert recv(a)["op"] == "error"  # already subscribed

    # a goes away at offset 7; three publications happen; a comes back with since.
    a.close()
    for n in range(8, 11):
        send(b, {"op": "publish", "channel": "py", "data": n})
    a2 = open_ws("s1")
    s2 = subscribe(a2, "py", {"epoch": epoch, "offset": 7})
    assert (s2["epoch"], s2["offset"], s2["recovered"]) == (epoch, 10, True), s2
    assert [recv(a2)["offset"] for _ in range(3)] == [8, 9, 10]
    send(b, {"op": "publish", "channel": "py", "data": "live"})
    m = recv(a2)
    assert (m["offset"], m["data"]) == (11, "live"), m

    # An epoch the server never issued: nothing replayed, live from the current offset.
    a3 = open_ws("s1")
    s3 = subscribe(a3, "py", {"epoch": "bogus", "offset": 3})
    assert (s3["offset"], s3["recovered"]) == (11, False), s3
    send(b, {"op": "publish", "channel": "py", "data": "next"})
    assert recv(a3)["offset"] == 12
    assert recv(a2)["offset"] == 12

    # Unsubscribe: no more messages on that channel.
    send(a2, {"op": "unsubscribe", "channel": "py"})
    assert recv(a2) == {"op": "unsubscribed", "channel": "py"}
    send(b, {"op": "publish", "channel": "py", "data": "after unsubscribe"})
    assert recv(a3)["offset"] == 13
    send(a2, {"op": "dance"})
    assert recv(a2)["op"] == "error"  # the next frame a2 sees is this error, not a message

    for ws in (a2, a3, b):
        ws.close()


def deflate():
    """The server runs with --deflate: websockets' default offer is accepted, and a large
    repetitive message the client sends compressed is inflated, published, and sent to the
    subscriber compressed by the hub (websockets inflates it)."""
    a = open_ws("s1")
    b = open_ws("s2")
    ext = b.response.headers.get("Sec-WebSocket-Extensions", "")
    assert ext.startswith("permessage-deflate"), ext
    subscribe(a, "z")
    data = {"rows": [{"sym": "BTC-USD", "px": 101.25, "qty": i} for i in range(500)]}
    for _ in range(3):
        send(b, {"op": "publish", "channel": "z", "data": data})
    for i in range(1, 4):
        m = recv(a)
        assert (m["offset"], m["data"]) == (i, data), m["offset"]
    for ws in (a, b):
        ws.close()


{"protocol": protocol, "deflate": deflate}[SCENARIO]()
print("OK", flush=True)
