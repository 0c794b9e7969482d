"""An HTTP protocol for uvicorn that closes connections which never send a request.

uvicorn's keep-alive timer starts only after a response, so a connection that opens and
sends nothing (or a request head one byte at a time, "slowloris") stays open forever. This
subclass of uvicorn's h11 protocol arms a timer when the connection is made and after every
response; if the client has not sent a complete request head when it fires, the connection
is closed. Requests being answered are never cut (slow bodies are ``Guard``'s job).
"""
from __future__ import annotations


def protocol_class(header_timeout_s: float):
    """A uvicorn ``http=`` protocol class with a ``header_timeout_s`` request-head timeout."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11(H11Protocol):
        _head_timer = None

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            waiting_for_head = self.conn.their_state is h11.IDLE and (
                self.cycle is None or self.cycle.response_complete)
            if waiting_for_head and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return HeadTimeoutH11
