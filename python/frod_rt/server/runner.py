"""Running the app with uvicorn: in the foreground (``serve``) or in a thread
(``ServerThread``, for tests and for embedding a server in another program)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

from .app import create_app
from .config import ServerConfig
from .timeouts import protocol_class


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(app, host, port, log_level, config: ServerConfig):
    """uvicorn's config: h11 with a request-head timeout (``timeouts.py``), the idle
    keep-alive timeout, no server header."""
    import uvicorn
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5, lifespan="on",
                          http=protocol_class(config.header_timeout_s),
                          timeout_keep_alive=config.keep_alive_s, server_header=False)


def _server_class():
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful shutdown on SIGINT / SIGTERM it
        returns normally instead of re-raising the signal (so ``frod-rt serve`` exits 0)."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

    return _Server


def serve(engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          default_max_tokens: int = 16, config: ServerConfig | None = None) -> None:
    """Serve ``engine`` until SIGINT / SIGTERM, which shut it down gracefully (requests in
    flight are aborted) and return. ``config``: limits and security (:class:`ServerConfig`)."""
    config = config or ServerConfig()
    app = create_app(engine, default_max_tokens=default_max_tokens, config=config)
    server = _server_class()(_config(app, host, port, log_level, config))
    server.run()
    if not server.started:
        raise OSError(f"could not serve on {host}:{port} (see the log above)")


class ServerThread:
    """A uvicorn server for ``engine`` on a background thread.

    ``with ServerThread(engine) as srv: srv.url`` -> ``"http://127.0.0.1:<port>"``; the
    engine loop starts with it and stops on exit. ``srv.app.state.server`` gives the
    :class:`ServerState` (and ``.loop``, the :class:`EngineLoop`)."""

    def __init__(self, engine, host: str = "127.0.0.1", port: int | None = None,
                 log_level: str = "warning", default_max_tokens: int = 16,
                 config: ServerConfig | None = None):
        import uvicorn
        self.host = host
        self.port = port or free_port(host)
        self.config = config or ServerConfig()
        self.app = create_app(engine, default_max_tokens=default_max_tokens,
                              config=self.config)
        self.server = uvicorn.Server(_config(self.app, host, self.port, log_level,
                                             self.config))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self._thread = threading.Thread(target=self.server.run, name="frod-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.url} failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on {self.url} did not start in {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
