"""The pieces of the Ray Serve application that run without Ray: the in-process ASGI call
(``asgi_call``), the aggregation of replicas' /health and /metrics (``aggregate``), and the
``--replicas`` options of ``frod-rt serve`` (a clear error without Ray installed)."""
from __future__ import annotations

import asyncio
import json

import pytest

from frod_rt.cli import main
from frod_rt.cli import serve_ray
from frod_rt.engine import Engine
from frod_rt.engine.toy import save_toy_model, toy_llama, toy_tokenizer
from frod_rt.server import create_app
from frod_rt.server.aggregate import merge_health, merge_metrics, parse_samples
from frod_rt.server.asgi_call import Lifespan, call_app


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    return save_toy_model(model, tok, tmp_path_factory.mktemp("scale") / "toybase")


def test_call_app_runs_the_server_app_in_process(base):
    eng = Engine.load(base)
    app = create_app(eng)
    ref = eng.generate("the quick fox", max_tokens=5, ignore_eos=True)[0].text

    async def go():
        life = Lifespan(app)
        await life.startup()
        try:
            req = {"model": "toybase", "prompt": "the quick fox", "max_tokens": 5,
                   "temperature": 0, "ignore_eos": True}
            parts = [p async for p in call_app(app, "POST", "/v1/completions", b"",
                                               [(b"content-type", b"application/json")],
                                               json.dumps(req).encode())]
            req["stream"] = True
            sparts = [p async for p in call_app(app, "POST", "/v1/completions", b"",
                                                [(b"content-type", b"application/json")],
                                                json.dumps(req).encode())]
            bad = [p async for p in call_app(app, "POST", "/v1/completions", b"",
                                             [(b"content-type", b"application/json")],
                                             b"{not json")]
            health = [p async for p in call_app(app, "GET", "/health")]
            return parts, sparts, bad, health
        finally:
            await life.shutdown()

    try:
        parts, sparts, bad, health = asyncio.run(go())
    finally:
        eng.close()
    assert len(parts) == 1 and parts[0][0] == "start" and parts[0][1] == 200
    assert json.loads(parts[0][3])["choices"][0]["text"] == ref
    kind, status, headers, body = sparts[0]
    assert status == 200 and body is None                    # a stream: chunks follow
    events = b"".join(sparts[1:]).decode().split("\n\n")
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events
             if e.startswith("data: {")]
    assert "".join(texts) == ref and "data: [DONE]" in events
    assert bad[0][1] == 400 and json.loads(bad[0][3])["error"]["code"] == "invalid_json"
    assert health[0][1] == 200 and json.loads(health[0][3])["status"] == "ok"


def test_merge_metrics_sums_samples_over_replicas():
    a = ("# HELP frod_rt_requests_total Requests.\n# TYPE frod_rt_requests_total counter\n"
         "frod_rt_requests_total 3\n# TYPE frod_rt_http_errors_total counter\n"
         'frod_rt_http_errors_total{status="404"} 1\nfrod_rt_tps 1.5\n')
    b = ("# HELP frod_rt_requests_total Requests.\n# TYPE frod_rt_requests_total counter\n"
         "frod_rt_requests_total 4\n# TYPE frod_rt_http_errors_total counter\n"
         'frod_rt_http_errors_total{status="404"} 2\n'
         'frod_rt_http_errors_total{status="503"} 5\nfrod_rt_tps 0.25\n')
    text = merge_metrics({"r1": a, "r2": b})
    _, s = parse_samples(text)
    assert s["frod_rt_requests_total"] == 7
    assert s['frod_rt_http_errors_total{status="404"}'] == 3
    assert s['frod_rt_http_errors_total{status="503"}'] == 5
    assert s["frod_rt_tps"] == 1.75
    assert s["frod_rt_replicas"] == 2
    assert s['frod_rt_replica_up{replica="r1"}'] == 1
    assert text.count("# TYPE frod_rt_requests counter") == 1
    assert parse_samples(merge_metrics({}))[1]["frod_rt_replicas"] == 0


def test_merge_metrics_of_the_servers_prometheus_pages(base):
    """Two replicas' real /metrics pages (prometheus_client, histograms and per-adapter
    counters) merge into one page that prometheus_client parses, each family once with its
    type, every sample the sum (here: twice one page's), ``_created`` dropped."""
    from prometheus_client.parser import text_string_to_metric_families
    eng = Engine.load(base)
    app = create_app(eng)
    req = {"model": "toybase", "prompt": "the quick fox", "max_tokens": 3, "temperature": 0}

    async def go():
        life = Lifespan(app)
        await life.startup()
        try:
            async for _ in call_app(app, "POST", "/v1/completions", b"",
                                    [(b"content-type", b"application/json")],
                                    json.dumps(req).encode()):
                pass
            return [p async for p in call_app(app, "GET", "/metrics")][0][3].decode()
        finally:
            await life.shutdown()

    try:
        page = asyncio.run(go())
    finally:
        eng.close()
    one = parse_samples(page)[1]
    merged = merge_metrics({"r1": page, "r2": page})
    fams = {f.name: f for f in text_string_to_metric_families(merged)}   # parses
    types = {f.name: f.type for f in text_string_to_metric_families(page)}
    assert {n: fams[n].type for n in types} == types
    assert any(t == "histogram" for t in types.values())
    assert all(merged.count(f"# TYPE {n} ") == 1 for n in types)
    two = parse_samples(merged)[1]
    kept = {k: v for k, v in one.items() if "_created" not in k.split("{")[0]}
    assert kept and all(two[k] == 2 * v for k, v in kept.items())
    assert one["frod_rt_requests_total"] >= 1
    assert not any("_created" in k.split("{")[0] for k in two)


def test_merge_health_counts_ok_replicas():
    code, body = merge_health("b", {"r1": {"status": "ok", "in_flight": 2},
                                    "r2": {"status": "engine loop not running",
                                           "in_flight": 1}}, expected=2)
    assert code == 200 and body["replicas_ok"] == 1 and body["degraded"]
    assert body["in_flight"] == 3 and list(body["replicas"]) == ["r1", "r2"]
    code, body = merge_health("b", {}, expected=2)
    assert code == 503 and body["replicas_ok"] == 0


def test_serve_replicas_without_ray_is_a_clear_error(monkeypatch, capsys, base):
    monkeypatch.setattr(serve_ray, "ray_serve_available", lambda: False)
    assert main(["serve", "--base", str(base), "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert "--replicas 2 needs Ray Serve" in err and "pip install 'frod-rt[ray]'" in err
    assert main(["serve", "--base", str(base), "--replicas", "0"]) == 2
    assert "--replicas must be >= 1" in capsys.readouterr().err


def test_serve_replicas_more_than_local_resources(capsys, base):
    """Refused before Ray starts (Serve would wait forever for the missing resources)."""
    pytest.importorskip("ray.serve")
    import os

    import torch

    from frod_rt.server import free_port
    n = (os.cpu_count() or 1) + 1
    port = str(free_port())
    assert main(["serve", "--base", str(base), "--replicas", str(n), "--port", port]) == 2
    err = capsys.readouterr().err
    assert f"needs {n} CPUs" in err and "--replica-cpus" in err
    if torch.cuda.device_count() < 2:
        assert main(["serve", "--base", str(base), "--replicas", "2", "--port", port,
                     "--replica-cpus", "0.5", "--replica-gpus", "1"]) == 2
        assert "GPUs; this machine has" in capsys.readouterr().err


def test_evicted_adapter_waits_for_its_requests_then_leaves_the_engine(base, tmp_path):
    """``ray_app._Resident.__del__`` (what Ray Serve's multiplex LRU calls on eviction)."""
    pytest.importorskip("ray.serve")
    import threading
    from collections import Counter
    from types import SimpleNamespace

    from frod_rt.engine.toy import random_adapter, toy_llama, toy_tokenizer
    from frod_rt.server.ray_app import _Resident

    model = toy_llama(vocab_size=len(toy_tokenizer()), hidden=32, intermediate=48, std=0.1,
                      seed=3)
    random_adapter(model, tmp_path / "ad", ["q_proj"], seed=1, cache_dir=tmp_path / "c")
    eng = Engine.load(base, adapters={"ad": tmp_path / "ad"}, cache_dir=tmp_path / "c")
    try:
        rep = SimpleNamespace(engine=eng, in_use=Counter(ad=1), generation={"ad": 0})
        res = _Resident(rep, "ad", 0)
        t = threading.Thread(target=res.__del__)
        t.start()
        t.join(0.3)
        assert t.is_alive() and "ad" in eng.adapters()     # a request still uses it
        rep.in_use["ad"] -= 1
        t.join(10)
        assert not t.is_alive() and "ad" not in eng.adapters()
        assert "ad" not in rep.generation
        # an older generation's object never removes the newer load of the same name
        eng.add_adapter("ad", tmp_path / "ad")
        rep.generation["ad"] = 2
        _Resident(rep, "ad", 1).__del__()
        assert "ad" in eng.adapters()
        res.__del__()                                      # second call (GC): nothing
        assert "ad" in eng.adapters()
    finally:
        eng.close()
