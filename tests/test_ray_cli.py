"""``frod-rt serve --replicas 2`` as a real process: a local Ray, two engine replicas, the
``openai`` client; SIGTERM shuts Serve and Ray down and exits 0. Skipped without Ray."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

import httpx  # noqa: E402
import openai  # noqa: E402

from frod_rt.engine import Engine  # noqa: E402
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer  # noqa: E402,E501
from frod_rt.server import free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PYTHON_DIR = str(Path(__file__).resolve().parents[1] / "python")


def test_serve_replicas_cli_round_trip(tmp_path):
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    base = save_toy_model(model, tok, tmp_path / "base")
    cache = tmp_path / "cache"
    random_adapter(model, tmp_path / "poems", ["q_proj", "v_proj"], seed=5, cache_dir=cache)
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"        # the local Ray on loopback
    cmd = [sys.executable, "-m", "frod_rt.cli", "serve", "--base", str(base),
           "--adapter", f"poems={tmp_path / 'poems'}", "--port", str(port),
           "--cache-dir", str(cache), "--replicas", "2", "--replica-cpus", "0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                r = httpx.get(url + "/health", timeout=2)
                if r.status_code == 200 and r.json()["replicas_ok"] == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "frod-rt serve --replicas 2 did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "poems"]
        eng = Engine.load(base, adapters={"poems": tmp_path / "poems"}, cache_dir=cache)
        for m, adapter in (("poems", "poems"), ("base", None)):
            raw = client.completions.with_raw_response.create(
                model=m, prompt="the quick brown fox", max_tokens=6, temperature=0,
                extra_body={"ignore_eos": True})
            assert raw.headers["x-frod-rt-replica"]
            ref = eng.generate("the quick brown fox", adapter=adapter, max_tokens=6,
                               ignore_eos=True)[0]
            assert raw.parse().choices[0].text == ref.text
        eng.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert rc == 0, err[-3000:]
    assert "with 2 replicas (Ray Serve)" in out and "frod-rt serve: stopped" in out
