"""Running the real ``frod-rt serve`` in a child process for the CLI tests."""
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


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    return env


@contextlib.contextmanager
def serve_process(args: list[str], startup_s: float = 240):
    """Start ``frod-rt serve ARGS --port <free>`` and wait for /health; yields
    (process, base URL). On exit sends SIGTERM and waits; the test checks ``proc.returncode``
    and reads ``proc.stdout`` / ``proc.stderr`` afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "frod_rt.cli", "serve", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "frod-rt serve did not come up"
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
