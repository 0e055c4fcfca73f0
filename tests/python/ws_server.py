#!/usr/bin/env python3
"""Independent WebSocket peer for syncws interop tests (tests/interop_python.rs,
tests/interop_reconnect.rs).

Runs a Python `websockets` (>= 17) server on 127.0.0.1, port chosen by the OS, and prints
`PORT <n>` as its first stdout line. Later stdout lines report what the server observed, one
per line, flushed at once, so the Rust test can assert on them:

    PONG <result>             ping results (`ping` and `ping-mid-fragment` modes)
    CLOSED <code> <reason>    when a connection has ended, in every mode: the close code and
                              reason the server received from the client (1006 and an empty
                              reason when no close frame arrived, 1005 for an empty close frame)
    PONG_IN <n>               `keepalive` mode: the client answered a keepalive ping (n-th)
    CLIENT_PING <hex>         `keepalive` mode: the client sent a ping (payload in hex)
    KEEPALIVE sent=<n> answered=<n> client_pings=<n>
                              `keepalive` mode, when a connection has ended (before CLOSED):
                              keepalive pings sent, pings answered by the client's pongs, and
                              pings the client sent
    CONN <n> SUBS <t1,t2,...> `resubscribe` and `subscribe-no-ack` modes, once connection n
                              (1-based, in accept order) is done: the topics of the `sub <topic>`
                              frames it received, in order, duplicates included
    CONN <n> OTHER <message>  those modes: a message on connection n that is not `sub <topic>`
    CONN <n> CLOSED <code> <reason>
                              those modes: like CLOSED, tagged with the connection number

The process exits by itself when its stdin reaches EOF (the Rust test holds the pipe and drops
it at the end) and, as a last resort, after a hard lifetime limit, so it never runs forever.
Every wait for the client is bounded too.

Usage:
    ws_server.py --mode MODE [ARGS...] [--tls CERT KEY]

Modes:
    echo                 echo every text and binary message (no size limit)
    echo-deflate         echo, with permessage-deflate enabled (websockets' default); prints
                         `EXT <negotiated Sec-WebSocket-Extensions, or none>` per connection
    fragments            send a fragmented text and a fragmented binary message, then echo
    ping                 ping the client with known payloads, wait for each pong, send each
                         result as a text message `pong-ok:<payload>` / `pong-timeout:<payload>`
                         (also printed as `PONG <result>`), then echo
    ping-mid-fragment    send a fragmented text message with a ping (and a wait for its pong)
                         between two fragments, then the ping result as text, then echo
    close CODE [REASON]  close with CODE and REASON right after the handshake; CODE `none`
                         sends a close frame without a status code
    send-then-close N CODE REASON
                         send N text messages `msg <i>` back to back, then close
    abort                echo the first message; on the second, drop the TCP connection
                         without a close frame
    stream               send text messages `tick <i>` (1 KiB each) as fast as possible until
                         the client closes
    bad-utf8             send a text frame that is not valid UTF-8, then wait
    max-size N           echo, accepting messages of at most N bytes (bigger: close 1009)
    expect-close         echo until the client closes (then `CLOSED` tells its code/reason)
    request              send what the upgrade request carried as text messages:
                         `path:<path>`, `header:<name>:<value>` for X-Syncws-* and Authorization
                         headers, `subprotocol:<selected>`; then echo
    subprotocol PROTO    select PROTO if the client offers it (else none); then as `request`
    reject STATUS        refuse the upgrade with HTTP STATUS and a known text body
    keepalive INTERVAL TIMEOUT
                         echo, with websockets' own keepalive: a ping every INTERVAL seconds,
                         each to be answered within TIMEOUT seconds (else websockets closes
                         with 1011); counts the client's pongs and pings (see PONG_IN,
                         CLIENT_PING, KEEPALIVE)
    resubscribe N DELAY  a venue that restarts often: answer each text `sub <topic>` with
                         `ack:<topic>`; once N subscriptions arrived on a connection, wait DELAY
                         seconds (still answering), then close with 1001 "going away"; every
                         connection alike (see CONN lines)
    subscribe-no-ack     record `sub <topic>` frames but never acknowledge them (see CONN lines)
"""

import argparse
import asyncio
import http
import itertools
import logging
import os
import ssl
import sys
import threading

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Opcode

# Never outlive a forgotten test by much.
MAX_LIFETIME_S = 120.0
# Bound on every wait for the client.
STEP_TIMEOUT_S = 10.0

# Payloads of the server's pings (ASCII so they print unambiguously); the empty payload and the
# largest allowed control payload (125 bytes) are the interesting edges.
PING_PAYLOADS = [b"syncws-ping-1", b"", b"P" * 125]

# Body of refused upgrades; the Rust test looks for it in the error.
REJECT_BODY = "syncws interop: upgrade refused\n"

# Fragmented messages sent in `fragments` mode.
TEXT_FRAGMENTS = ["frag", "ment", "ed \u2713"]
BINARY_FRAGMENTS = [bytes(range(256)) * 4, b"", bytes([7]) * 70_000, b"end"]

# Upper bound on the messages of `stream` mode.
STREAM_MAX = 1_000_000


def report(line):
    print(line, flush=True)


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def echo_with_extensions(ws):
    """Echo, after printing the negotiated extensions (`EXT <header or none>`)."""
    print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions", "none"), flush=True)
    await echo(ws)


async def ping_and_wait(ws, data):
    """Pings with `data`; `pong-ok:<data>` once the matching pong arrived, else `pong-timeout`.

    websockets completes a ping's waiter only for a pong carrying exactly that ping's payload
    (or for a later ping's pong, and the tests send one ping at a time)."""
    waiter = await ws.ping(data)
    try:
        await asyncio.wait_for(waiter, STEP_TIMEOUT_S)
        result = "pong-ok:" + data.decode("ascii")
    except asyncio.TimeoutError:
        result = "pong-timeout:" + data.decode("ascii")
    report("PONG " + result)
    return result


async def handle_fragments(ws):
    await ws.send(TEXT_FRAGMENTS)
    await ws.send(BINARY_FRAGMENTS)
    await echo(ws)


async def handle_ping(ws):
    for data in PING_PAYLOADS:
        await ws.send(await ping_and_wait(ws, data))
    await echo(ws)


async def handle_ping_mid_fragment(ws):
    results = []

    async def fragments():
        yield "before ping, "
        # Control frames may be interleaved with the fragments of a message (RFC 6455 §5.4).
        results.append(await ping_and_wait(ws, b"mid-fragment"))
        yield "after ping"

    await ws.send(fragments())
    await ws.send(results[0])
    await echo(ws)


def handle_close(code, reason):
    async def handler(ws):
        await asyncio.wait_for(ws.close(code, reason), STEP_TIMEOUT_S)

    return handler


def handle_send_then_close(count, code, reason):
    async def handler(ws):
        for i in range(count):
            await ws.send(f"msg {i}")
        await asyncio.wait_for(ws.close(code, reason), STEP_TIMEOUT_S)

    return handler


async def handle_abort(ws):
    await ws.send(await asyncio.wait_for(ws.recv(), STEP_TIMEOUT_S))
    # Abort only once the client has the echo: abort() discards unsent buffered data.
    await asyncio.wait_for(ws.recv(), STEP_TIMEOUT_S)
    ws.transport.abort()


async def handle_stream(ws):
    pad = "." * 1000
    for i in range(STREAM_MAX):
        await ws.send(f"tick {i} {pad}")
        # Let the event loop process the client's frames (its close) between messages.
        await asyncio.sleep(0)


async def handle_bad_utf8(ws):
    # websockets sends bytes given with text=True as they are, without validating them.
    await ws.send(b"bad \xff\xfe utf-8", text=True)
    await asyncio.wait_for(echo(ws), STEP_TIMEOUT_S)


async def handle_expect_close(ws):
    await asyncio.wait_for(echo(ws), STEP_TIMEOUT_S)


async def handle_request(ws):
    await ws.send("path:" + ws.request.path)
    for name, value in ws.request.headers.raw_items():
        if name.lower().startswith("x-syncws-") or name.lower() == "authorization":
            await ws.send(f"header:{name.lower()}:{value}")
    await ws.send(f"subprotocol:{ws.subprotocol or ''}")
    await echo(ws)


class CountingConnection(ServerConnection):
    """A connection that counts the client's control frames (`keepalive` mode)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pings_sent = 0
        self.pongs_answered = 0
        self.client_pings = 0

    async def ping(self, data=None):
        # websockets' keepalive task pings through this method.
        waiter = await super().ping(data)
        self.pings_sent += 1
        return waiter

    def process_event(self, event):
        # The first event is the upgrade request; frames follow (control frames included).
        if self.request is not None:
            if event.opcode is Opcode.PING:
                self.client_pings += 1
                report(f"CLIENT_PING {bytes(event.data).hex()}")
            elif event.opcode is Opcode.PONG and bytes(event.data) in self.pending_pings:
                self.pongs_answered += 1
                report(f"PONG_IN {self.pongs_answered}")
        super().process_event(event)

    def summary(self):
        return (
            f"KEEPALIVE sent={self.pings_sent} answered={self.pongs_answered} "
            f"client_pings={self.client_pings}"
        )


# Connection numbers of the `resubscribe` and `subscribe-no-ack` modes (1-based, accept order).
CONNECTIONS = itertools.count(1)


def handle_subscriptions(expected, delay, ack):
    """`resubscribe` (ack=True) and `subscribe-no-ack` (ack=False, expected=None)."""

    async def handler(ws):
        n = next(CONNECTIONS)
        subs = []
        enough = asyncio.Event()

        async def read():
            try:
                async for message in ws:
                    if isinstance(message, str) and message.startswith("sub "):
                        topic = message[len("sub ") :]
                        subs.append(topic)
                        if ack:
                            await ws.send(f"ack:{topic}")
                        if expected is not None and len(subs) >= expected:
                            enough.set()
                    else:
                        report(f"CONN {n} OTHER {message!r}")
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        try:
            if expected is not None:
                waiter = asyncio.create_task(enough.wait())
                await asyncio.wait(
                    {reader, waiter},
                    timeout=STEP_TIMEOUT_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                if not reader.done():
                    if not enough.is_set():
                        report(f"TIMEOUT CONN {n} waiting for {expected} subscriptions")
                    # Still reading (and acknowledging): a duplicate would be seen.
                    await asyncio.sleep(delay)
                    await asyncio.wait_for(ws.close(1001, "going away"), STEP_TIMEOUT_S)
            await asyncio.wait_for(reader, STEP_TIMEOUT_S)
        finally:
            reader.cancel()
            report(f"CONN {n} SUBS {','.join(subs)}")
            try:
                await asyncio.wait_for(ws.wait_closed(), STEP_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
            report(f"CONN {n} CLOSED {ws.close_code} {ws.close_reason}")

    return handler


def reporting(handler):
    """Runs `handler`, then waits (bounded) for the connection to end and prints `CLOSED`."""

    async def wrapped(ws):
        try:
            await handler(ws)
        except websockets.ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            report("TIMEOUT in handler")
        try:
            await asyncio.wait_for(ws.wait_closed(), STEP_TIMEOUT_S)
        except asyncio.TimeoutError:
            report("TIMEOUT waiting for the connection to close")
            ws.transport.abort()
            await ws.wait_closed()
        if isinstance(ws, CountingConnection):
            report(ws.summary())
        report(f"CLOSED {ws.close_code} {ws.close_reason}")

    return wrapped


def reject(status):
    def process_request(connection, request):
        return connection.respond(http.HTTPStatus(status), REJECT_BODY)

    return process_request


async def stdin_closed():
    """Completes when stdin reaches EOF (read on a thread: portable, never blocks the loop)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def watch():
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    await done


def parse_mode(parser, words):
    """The connection handler and `serve` options for the mode words."""
    mode, *rest = words
    options = {}
    simple = {
        "echo": echo,
        "fragments": handle_fragments,
        "ping": handle_ping,
        "ping-mid-fragment": handle_ping_mid_fragment,
        "abort": handle_abort,
        "stream": handle_stream,
        "bad-utf8": handle_bad_utf8,
        "expect-close": handle_expect_close,
        "request": handle_request,
    }
    if mode in simple and not rest:
        handler = simple[mode]
    elif mode == "close" and len(rest) in (1, 2):
        code = None if rest[0] == "none" else int(rest[0])
        handler = handle_close(code, rest[1] if len(rest) == 2 else "")
    elif mode == "send-then-close" and len(rest) == 3:
        handler = handle_send_then_close(int(rest[0]), int(rest[1]), rest[2])
    elif mode == "echo-deflate" and not rest:
        handler = echo_with_extensions
        options["compression"] = "deflate"
    elif mode == "max-size" and len(rest) == 1:
        handler = echo
        options["max_size"] = int(rest[0])
    elif mode == "subprotocol" and len(rest) == 1:
        handler = handle_request
        options["subprotocols"] = [rest[0]]
    elif mode == "reject" and len(rest) == 1:
        handler = echo
        options["process_request"] = reject(int(rest[0]))
    elif mode == "keepalive" and len(rest) == 2:
        handler = echo
        options["ping_interval"] = float(rest[0])
        options["ping_timeout"] = float(rest[1])
        options["create_connection"] = CountingConnection
    elif mode == "resubscribe" and len(rest) == 2:
        handler = handle_subscriptions(int(rest[0]), float(rest[1]), ack=True)
    elif mode == "subscribe-no-ack" and not rest:
        handler = handle_subscriptions(None, 0.0, ack=False)
    else:
        parser.error(f"unknown mode or wrong arguments: {words}")
    return reporting(handler), options


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", required=True, nargs="+", metavar="MODE")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    handler, options = parse_mode(parser, args.mode)

    ssl_context = None
    if args.tls:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls[0], args.tls[1])
        ssl_context.set_alpn_protocols(["http/1.1"])

    serve_options = {
        "max_size": None,
        # Keepalive pings would interleave with the pings the tests make.
        "ping_interval": None,
        "compression": None,
        "close_timeout": 2,
    }
    serve_options.update(options)
    async with serve(handler, "127.0.0.1", 0, ssl=ssl_context, **serve_options) as server:
        port = server.sockets[0].getsockname()[1]
        report(f"PORT {port}")
        try:
            await asyncio.wait_for(stdin_closed(), MAX_LIFETIME_S)
        except asyncio.TimeoutError:
            print("ws_server.py: lifetime limit reached, exiting", file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("SYNCWS_PY_LOG", "WARNING").upper(),
        format="ws_server.py %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
