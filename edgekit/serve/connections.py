"""What uvicorn leaves to the application, done on its HTTP connections (httptools): a connection
cap, a header timeout, a body timeout, and a drain that still answers requests already sent.

Read in uvicorn 0.54's source: `timeout_keep_alive` closes a connection idle *between* requests
only, and is not armed on a new connection; nothing bounds the time a client takes to send its
headers or its body; `limit_concurrency` answers 503 only once a request's headers are complete,
so connections that never finish their headers pile up until the process runs out of file
descriptors (at systemd's default of 1024, ~1,000 half-sent requests locked every client out);
on shutdown an idle keep-alive connection is closed at once, dropping a request its client had
already written.

Here:
- at most `max_connections` connections are served at once; one more gets an immediate 503 with
  `Connection: close` (closed once the client has sent its request or after LINGER_S, so the
  client reads the 503 instead of a reset);
- a request's headers must be complete within `timeout` seconds of its first byte (of the
  connection, for a new one), else 408 and the connection is closed;
- a request's body may pause at most `timeout` seconds between two pieces (nginx's
  client_body_timeout), else 408 and the connection is closed; the application sees a disconnect;
- on shutdown an idle connection stays open for DRAIN_IDLE_S: a request that arrives in that time
  is answered (with `Connection: close`).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_S = 2.0
DRAIN_IDLE_S = 1.0


def raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


def protocol(max_connections: int, timeout: float):
    """The protocol class uvicorn runs (its `http` setting), with these limits."""
    busy = raw_response(
        503,
        "Service Unavailable",
        f"the server is at its connection limit ({max_connections}, --max-connections); "
        "try again shortly",
        "retry-after: 1\r\n",
    )
    slow = raw_response(
        408,
        "Request Timeout",
        f"the request did not arrive in time: headers within {timeout:g} s, and no pause in the "
        f"body longer than {timeout:g} s (--client-timeout)",
    )

    class Guarded(HttpToolsProtocol):
        _timer = None
        _rejected = False
        _draining = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._rejected = True
                self.connections.discard(self)
                transport.write(busy)
                if transport.can_write_eof():
                    transport.write_eof()
                self._timer = self.loop.call_later(LINGER_S, transport.close)
                return
            self._arm(self._headers_late)

        def data_received(self, data: bytes) -> None:
            if self._rejected:  # read what the client sends, then close: no reset
                self.transport.close()
                return
            super().data_received(data)

        def eof_received(self):
            if self._rejected:
                self.transport.close()
            return super().eof_received()

        def connection_lost(self, exc) -> None:
            self._arm(None)
            super().connection_lost(exc)

        def _arm(self, callback) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if callback is None else self.loop.call_later(timeout, callback)

        # the request's parts, as httptools reports them
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(self._headers_late)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False
            self._arm(self._body_late)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm(self._body_late)

        def on_message_complete(self) -> None:
            self._arm(None)
            super().on_message_complete()

        def _headers_late(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.write(slow)
                self.transport.close()

        def _body_late(self) -> None:
            self._timer = None
            cycle = self.cycle
            if self.transport.is_closing() or cycle is None or cycle.response_complete:
                return
            if not cycle.response_started:
                self.transport.write(slow)
            cycle.disconnected = True  # the application's receive() says so; its send() is ignored
            cycle.message_event.set()
            self.transport.close()

        def shutdown(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                # idle: a request the client has already written may not have been read yet
                self._draining = True
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    DRAIN_IDLE_S, self._close_if_idle
                )
            else:
                self.cycle.keep_alive = False

        def _close_if_idle(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

    return Guarded
