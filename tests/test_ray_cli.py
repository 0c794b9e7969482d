"""``frod-rt serve --replicas 2`` as a real process: a local Ray, two engine replicas, the
``openai`` client with the API key given by ``--api-key`` (the security options reach the
Ray router: 401 without it); SIGTERM shuts Serve and Ray down and exits 0. Skipped without
Ray."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

import httpx  # noqa: E402
import openai  # noqa: E402
from serve_process import child_env, start_serve, stop, wait_ready  # noqa: E402

from frod_rt.engine import Engine  # noqa: E402
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer  # noqa: E402,E501
from frod_rt.server import free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_serve_replicas_cli_round_trip(tmp_path):
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    base = save_toy_model(model, tok, tmp_path / "base")
    cache = tmp_path / "cache"
    random_adapter(model, tmp_path / "poems", ["q_proj", "v_proj"], seed=5, cache_dir=cache)
    port = free_port()
    env = child_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")     # the local Ray on loopback
    proc = start_serve(["--base", str(base), "--adapter", f"poems={tmp_path / 'poems'}",
                        "--port", str(port), "--cache-dir", str(cache), "--replicas", "2",
                        "--replica-cpus", "0.5", "--api-key", "cli-key"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, lambda r: r.status_code == 200 and r.json()["replicas_ok"] == 2,
                   timeout=180)
        r = httpx.get(url + "/v1/models", timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=url + "/v1", api_key="cli-key", max_retries=0)
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
        rc, out, err = stop(proc)
    assert rc == 0, err[-3000:]
    assert "with 2 replicas (Ray Serve)" in out and "frod-rt serve: stopped" in out
