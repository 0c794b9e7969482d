"""``frod-rt serve`` as a child process in tests: its environment, waiting until it
answers, and stopping it with SIGTERM (the graceful shutdown, exit 0). ``serve_process`` is
the context manager built on ``start_serve`` / ``wait_ready`` / ``stop``."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import frod_rt
from frod_rt.server import free_port

# the child processes import the same frod_rt as this one (installed or in-tree)
PYTHON_DIR = str(Path(frod_rt.__file__).resolve().parents[1])


def child_env(**extra: str) -> dict:
    """This process's environment with ``PYTHON_DIR`` first on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def start_serve(args: list[str], env: dict) -> subprocess.Popen:
    """``python -m frod_rt.cli serve ARGS`` with stdout/stderr captured as text."""
    return subprocess.Popen([sys.executable, "-m", "frod_rt.cli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, ready=lambda r: r.status_code == 200,
               timeout: float = 240) -> None:
    """Poll ``url/health`` until ``ready(response)``; fail with the child's stderr if it
    exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if ready(httpx.get(url + "/health", timeout=2)):
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"frod-rt serve did not come up in {timeout} s"
        time.sleep(0.3)


def terminate(proc: subprocess.Popen, timeout: float = 90) -> int:
    """SIGTERM, wait (kill after ``timeout`` s): the exit code. The pipes stay unread."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def stop(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    """``terminate``, then read the pipes: (exit code, stdout, stderr)."""
    rc = terminate(proc, timeout)
    return rc, proc.stdout.read(), proc.stderr.read()


@contextlib.contextmanager
def serve_process(args: list[str], startup_s: float = 240, env: dict | None = None):
    """Start ``frod-rt serve ARGS --port <free>`` and wait for /health; yields
    (process, base URL). On exit sends SIGTERM and waits (``terminate``); the test checks
    ``proc.returncode`` and reads ``proc.stdout`` / ``proc.stderr`` afterwards."""
    port = free_port()
    proc = start_serve([*args, "--port", str(port)], env or child_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=startup_s)
        yield proc, url
    finally:
        terminate(proc, 60)
