"""Serving on Ray Serve (``frod_rt.server.ray_app``): a local Ray on loopback, 2 engine
replicas of 1 thread each, a random-weight toy Llama with 4 adapters.

Checked against the single-engine server (``ServerThread``) on the same base and adapters:
greedy texts equal, adapter affinity (>= 80% of an adapter's requests on one replica), the
``x-frod-rt-replica`` header, aggregated /health and /metrics, and a replica killed with
SIGKILL mid-load: every request gets its answer or a retryable 503, and the deployment
recovers. The deployment runs with a ``ServerConfig`` (API key, adapter root, Host allow-list,
body limit): every request here sends the key, and one test checks the router enforces each
rule as the single-process server does. Skipped when Ray is not installed; the module takes
about 1-2 minutes."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter, defaultdict

import pytest

# Ray picks its node address before anything starts: keep every Ray service on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import httpx  # noqa: E402

from frod_rt.engine import Engine  # noqa: E402
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer  # noqa: E402,E501
from frod_rt.server import ServerConfig, ServerThread, free_port  # noqa: E402
from frod_rt.server.ray_app import REPLICA_HEADER, build_app, run_app  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TARGETS = [["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           ["q_proj", "v_proj"], ["gate_proj", "up_proj", "down_proj"], ["o_proj", "k_proj"]]
WORDS = ("the quick brown fox jumps over the lazy dog a journey of a thousand miles begins "
         "with a single step to be or not that is question once upon time").split()
ADAPTERS = [f"ad{i}" for i in range(4)]
BASE = "toybase"
KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
http = httpx.Client(headers=AUTH, timeout=60)      # every call of these tests sends the key


def _prompt(i: int) -> str:
    return " ".join(WORDS[(7 * i + 3 * j) % len(WORDS)] for j in range(2 + i % 5))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_toy")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    base = save_toy_model(model, tok, root / BASE)
    cache = root / "cache"
    adapters = {}
    for i, name in enumerate(ADAPTERS):
        random_adapter(model, root / name, TARGETS[i], seed=10 + i, cache_dir=cache)
        adapters[name] = root / name
    spare = root / "spare"                   # loaded at run time
    random_adapter(model, spare, TARGETS[0], seed=99, cache_dir=cache)
    outside = tmp_path_factory.mktemp("ray_outside") / "elsewhere"   # outside the root
    random_adapter(model, outside, TARGETS[1], seed=98, cache_dir=cache)
    (root / "link").symlink_to(outside, target_is_directory=True)
    return {"base": base, "cache": cache, "adapters": adapters, "spare": spare,
            "root": root, "outside": outside}


def _config(toy, **kw) -> ServerConfig:
    return ServerConfig(allow_adapter_loading=str(toy["root"]), **kw)


@pytest.fixture(scope="module")
def single(toy):
    """The single-engine server on the same base and adapters: the reference."""
    eng = Engine.load(toy["base"], adapters=toy["adapters"], cache_dir=toy["cache"],
                      device_adapter_capacity=4)
    with ServerThread(eng, config=_config(toy)) as srv:
        yield srv
    eng.close()


@pytest.fixture(scope="module")
def cluster(toy):
    """Ray (2 CPUs, no dashboard, loopback) + Serve with 2 engine replicas; torn down
    whatever happens."""
    port = free_port()
    try:
        app = build_app(toy["base"], {n: str(p) for n, p in toy["adapters"].items()},
                        replicas=2, engine_options={"cache_dir": str(toy["cache"]),
                                                    "device_adapter_capacity": 4},
                        threads_per_replica=1, replica_cpus=1, adapters_per_replica=4,
                        health_check_period_s=1.0, report_period_s=0.25,
                        config=_config(toy, api_key=KEY, allowed_hosts=("127.0.0.1",),
                                       max_body_bytes=256 * 1024))
        run_app(app, host="127.0.0.1", port=port, num_cpus=2)   # starts the local Ray
        url = f"http://127.0.0.1:{port}"
        _wait_health(url, replicas_ok=2, timeout=120)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _wait_health(url, replicas_ok: int, timeout: float, exclude_pids=()) -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/health", timeout=10)             # no key: /health is open
            body = r.json()
            pids = {v.get("pid") for v in body.get("replicas", {}).values()}
            if (r.status_code == 200 and body.get("replicas_ok") == replicas_ok
                    and not pids & set(exclude_pids)):
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the deployment did not reach {replicas_ok} healthy replicas in "
                         f"{timeout} s: {body}")


def _metric(url, name: str) -> float:
    for line in http.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"frod_rt_{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def _complete_all(url, jobs, stream=False):
    """POST every (model, prompt, max_tokens) at once; (status, body or events, replica)."""
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=AUTH) as c:
        async def one(m, p, n):
            req = {"model": m, "prompt": p, "max_tokens": n, "temperature": 0,
                   "ignore_eos": True, "stream": stream}
            if not stream:
                r = await c.post("/v1/completions", json=req)
                return r.status_code, r.json(), r.headers.get(REPLICA_HEADER), r.headers
            async with c.stream("POST", "/v1/completions", json=req) as r:
                lines = [ln async for ln in r.aiter_lines() if ln]
                return r.status_code, lines, r.headers.get(REPLICA_HEADER), r.headers
        return await asyncio.gather(*(one(*j) for j in jobs))


def _stream_text(lines) -> tuple[str, dict | None]:
    """(concatenated text, error body or None) of SSE lines ending with [DONE]."""
    assert lines[-1] == "data: [DONE]", lines[-3:]
    text, err = "", None
    for ln in lines[:-1]:
        obj = json.loads(ln[len("data: "):])
        if "error" in obj:
            err = obj
        else:
            text += obj["choices"][0]["text"]
    return text, err


def test_two_replicas_match_single_engine_with_adapter_affinity(cluster, single):
    models = [BASE] + ADAPTERS
    # warm-up: each adapter once, so each has a home replica before the load
    warm = asyncio.run(_complete_all(cluster, [(m, _prompt(0), 2) for m in ADAPTERS]))
    assert all(s == 200 for s, *_ in warm), warm
    deadline = time.monotonic() + 20          # Serve learns where each adapter is resident
    while True:
        reps = http.get(cluster + "/health", timeout=10).json()["replicas"].values()
        if set(ADAPTERS) <= {a for v in reps for a in v["resident_adapters"]}:
            break
        assert time.monotonic() < deadline, list(reps)
        time.sleep(0.25)
    time.sleep(1.0)
    jobs = [(models[i % 5], _prompt(i), 3 + i % 6) for i in range(50)]
    got = asyncio.run(_complete_all(cluster, jobs))
    ref = asyncio.run(_complete_all(single.url, jobs))
    where: dict[str, Counter] = defaultdict(Counter)
    for (m, p, n), (st, body, rep, _), (rst, rbody, _, _) in zip(jobs, got, ref):
        assert st == 200 and rst == 200, (body, rbody)
        assert body["choices"][0]["text"] == rbody["choices"][0]["text"], (m, p)
        assert body["usage"] == rbody["usage"] and body["model"] == m
        assert rep, "missing x-frod-rt-replica"
        where[m][rep] += 1
    # the adapters change the outputs (so the comparison above means something)
    base_text = {p: b["choices"][0]["text"] for (m, p, n), (_, b, _, _) in zip(jobs, ref)
                 if m == BASE}
    assert len({rep for c in where.values() for rep in c}) == 2, where   # both replicas serve
    for m in ADAPTERS:
        top = where[m].most_common(1)[0][1]
        assert top >= 0.8 * sum(where[m].values()), (m, where[m])
    assert base_text

    # streaming through the router equals the single server's stream
    sjobs = [(ADAPTERS[1], _prompt(3), 8), (BASE, _prompt(4), 5)]
    sgot = asyncio.run(_complete_all(cluster, sjobs, stream=True))
    sref = asyncio.run(_complete_all(single.url, sjobs, stream=True))
    for (st, lines, rep, hdrs), (_, rlines, _, _) in zip(sgot, sref):
        assert st == 200 and rep and hdrs["content-type"].startswith("text/event-stream")
        assert _stream_text(lines) == _stream_text(rlines)
        assert len(lines) > 2

    # chat through the router equals the single server's
    chat = {"model": ADAPTERS[2], "messages": [{"role": "user", "content": _prompt(9)}],
            "max_tokens": 6, "temperature": 0}
    got_c = http.post(cluster + "/v1/chat/completions", json=chat, timeout=60)
    ref_c = http.post(single.url + "/v1/chat/completions", json=chat, timeout=60)
    assert got_c.status_code == 200 and got_c.headers[REPLICA_HEADER]
    assert (got_c.json()["choices"][0]["message"]
            == ref_c.json()["choices"][0]["message"])

    # models, errors and the header on router-made answers
    r = http.get(cluster + "/v1/models")
    assert [d["id"] for d in r.json()["data"]] == [BASE] + ADAPTERS
    assert r.headers[REPLICA_HEADER].startswith("router:")
    r = http.post(cluster + "/v1/completions", json={"model": "nope", "prompt": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post(cluster + "/v1/completions",
                   json={"model": "ad0", "prompt": "a", "max_tokens": 0})
    assert r.status_code == 400 and r.headers[REPLICA_HEADER]       # the replica's own check


def test_health_and_metrics_aggregate_the_replicas(cluster, single):
    body = _wait_health(cluster, replicas_ok=2, timeout=30)
    assert body["replicas_expected"] == 2 and not body["degraded"]
    assert all(v["threads"] == 1 for v in body["replicas"].values())
    before = _metric(cluster, "requests_total")
    jobs = [(m, _prompt(i), 2) for i, m in enumerate([BASE] + ADAPTERS) for _ in range(2)]
    res = asyncio.run(_complete_all(cluster, jobs))
    assert all(s == 200 for s, *_ in res)
    deadline = time.monotonic() + 20
    while _metric(cluster, "requests_total") - before < len(jobs):
        assert time.monotonic() < deadline, "aggregated requests_total did not grow"
        time.sleep(0.3)
    assert _metric(cluster, "replicas") == 2
    text = http.get(cluster + "/metrics").text
    assert text.count('frod_rt_replica_up{replica="') == 2
    assert text.count("# TYPE frod_rt_requests counter") == 1
    assert "# TYPE frod_rt_e2e_request_latency_seconds histogram" in text
    assert _metric(cluster, "e2e_request_latency_seconds_count") >= len(jobs)


def test_killed_replica_loses_no_request_and_recovers(cluster, single):
    health = _wait_health(cluster, replicas_ok=2, timeout=60)
    victim = next(iter(health["replicas"].values()))
    jobs = [((BASE, *ADAPTERS)[i % 5], _prompt(i), 32) for i in range(30)]
    ref = asyncio.run(_complete_all(single.url, jobs))

    async def load_and_kill():
        async def killer():              # as soon as the victim answers requests
            deadline = time.monotonic() + 20
            async with httpx.AsyncClient(base_url=cluster, timeout=10, headers=AUTH) as c:
                while time.monotonic() < deadline:
                    reps = (await c.get("/health")).json()["replicas"]
                    if reps.get(victim["replica"], {}).get("in_flight", 0) > 0:
                        break
                    await asyncio.sleep(0.05)
            os.kill(victim["pid"], signal.SIGKILL)
        plain = _complete_all(cluster, jobs[:20])
        streamed = _complete_all(cluster, jobs[20:], stream=True)
        return await asyncio.gather(plain, streamed, killer())

    plain, streamed, _ = asyncio.run(load_and_kill())
    ok = failed = 0
    for (st, body, rep, hdrs), (_, rbody, _, _) in zip(plain, ref[:20]):
        if st == 200:
            assert body["choices"][0]["text"] == rbody["choices"][0]["text"]
            ok += 1
        else:           # retryable, clear, and only from the replica that died
            assert st == 503, body
            assert body["error"]["code"] == "replica_unavailable"
            assert hdrs["retry-after"] == "1"
            failed += 1
    for (st, lines, rep, hdrs), (_, rbody, _, _) in zip(streamed, ref[20:]):
        if st == 503:
            failed += 1
            continue
        assert st == 200
        text, err = _stream_text(lines)
        if err is None:
            assert text == rbody["choices"][0]["text"]
            ok += 1
        else:
            assert err["error"]["code"] == "replica_unavailable"
            failed += 1
    assert ok + failed == len(jobs)
    print(f"killed replica {victim['replica']}: {ok} answered, {failed} retryable 503")
    assert ok > 0 and failed > 0        # the other replica served; the victim's got 503
    # Ray Serve restarts the replica; the deployment serves every model again
    _wait_health(cluster, replicas_ok=2, timeout=120, exclude_pids=[victim["pid"]])
    after = asyncio.run(_complete_all(cluster, jobs[:10]))
    for (st, body, _, _), (_, rbody, _, _) in zip(after, ref[:10]):
        assert st == 200 and body["choices"][0]["text"] == rbody["choices"][0]["text"]


def test_adapters_loaded_and_deleted_at_run_time(cluster, single, toy):
    p, n = _prompt(11), 6
    spare, ad1 = str(toy["spare"]), str(toy["adapters"]["ad1"])
    assert http.post(single.url + "/v1/adapters",
                      json={"name": "extra", "path": spare}).status_code == 201
    r = http.post(cluster + "/v1/adapters", json={"name": "extra", "path": spare}, timeout=60)
    assert r.status_code == 201 and r.json()["id"] == "extra"
    assert "extra" in [d["id"] for d in http.get(cluster + "/v1/models").json()["data"]]
    got = asyncio.run(_complete_all(cluster, [("extra", p, n)]))[0]
    ref = asyncio.run(_complete_all(single.url, [("extra", p, n)]))[0]
    assert got[0] == 200 and got[1]["choices"][0]["text"] == ref[1]["choices"][0]["text"]
    # a name taken, a missing directory, the base's name: the single server's answers
    assert http.post(cluster + "/v1/adapters",
                      json={"name": "extra", "path": spare}).status_code == 409
    r = http.post(cluster + "/v1/adapters", json={"name": "x2", "path": spare + "-nope"},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "path"
    assert http.post(cluster + "/v1/adapters",
                      json={"name": BASE, "path": spare}).status_code == 400
    # delete, then the same name for another file: the replicas serve the new file
    assert http.delete(cluster + "/v1/adapters/extra").json()["deleted"] is True
    r = http.post(cluster + "/v1/completions", json={"model": "extra", "prompt": p})
    assert r.status_code == 404
    assert http.post(cluster + "/v1/adapters",
                      json={"name": "extra", "path": ad1}, timeout=60).status_code == 201
    got = asyncio.run(_complete_all(cluster, [("extra", p, n)] * 3))
    ref = asyncio.run(_complete_all(single.url, [("ad1", p, n)]))[0]
    assert all(g[0] == 200 and g[1]["choices"][0]["text"] == ref[1]["choices"][0]["text"]
               for g in got)


def test_router_enforces_the_servers_security_rules(cluster, single, toy):
    """The router's own routes and the forwarded ones under the single server's rules: the
    API key (not on /health), the Host allow-list, the body limit, strict fields (the
    replica's app), run-time loading only under the adapter root (symlinks resolved, no
    server path in the answer), vLLM's load/unload routes, blends refused with 400."""
    comp = {"model": "ad0", "prompt": "a b", "max_tokens": 2, "temperature": 0}
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/metrics", None),
                               ("POST", "/v1/completions", comp),
                               ("POST", "/v1/adapters", {"name": "n", "path": "spare"}),
                               ("POST", "/v1/load_lora_adapter",
                                {"lora_name": "n", "lora_path": "spare"}),
                               ("DELETE", "/v1/adapters/ad0", None)):
        for hdrs in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, cluster + path, json=body, headers=hdrs, timeout=30)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(cluster + "/health", timeout=30).status_code == 200
    assert "ad0" in [d["id"] for d in http.get(cluster + "/v1/models").json()["data"]]
    assert http.post(cluster + "/v1/completions", json=comp).status_code == 200
    # Host allow-list, body limit, docs off, strict fields, blends
    r = http.get(cluster + "/v1/models", headers={"Host": "evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    r = http.post(cluster + "/v1/completions", json={**comp, "prompt": "a " * 200_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert http.get(cluster + "/docs").status_code == 404
    r = http.post(cluster + "/v1/completions", json={**comp, "frobnicate": 1})
    assert r.status_code == 400 and "frobnicate" in r.json()["error"]["message"]
    r = http.post(cluster + "/v1/completions",
                  json={**comp, "model": BASE, "adapter_weights": {"ad0": 0.5, "ad1": 0.5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "adapter_weights"
    # loading outside the root: absolute, relative with '..', a symlink out; refused, unread
    root = str(toy["root"])
    for path in (str(toy["outside"]), "../" + toy["outside"].parent.name + "/elsewhere",
                 "link", "/etc"):
        for route, body in (("/v1/adapters", {"name": "out", "path": path}),
                            ("/v1/load_lora_adapter", {"lora_name": "out", "lora_path": path})):
            r = http.post(cluster + route, json=body)
            assert r.status_code == 403, (route, path, r.text)
            assert r.json()["error"]["code"] == "path_not_allowed"
            assert root not in r.text
    r = http.post(cluster + "/v1/adapters", json={"name": "x3", "path": "missing"})
    assert r.status_code == 400 and root not in r.text and "<adapter-root>" in r.text
    assert "out" not in [d["id"] for d in http.get(cluster + "/v1/models").json()["data"]]
    # vLLM's routes through the router, a path relative to the root
    r = http.post(cluster + "/v1/load_lora_adapter",
                  json={"lora_name": "vl", "lora_path": "spare"})
    assert r.status_code == 200 and r.text.startswith("Success"), r.text
    r = http.post(cluster + "/v1/load_lora_adapter",
                  json={"lora_name": "vl", "lora_path": "spare"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_exists"
    http.post(single.url + "/v1/adapters", json={"name": "vl", "path": str(toy["spare"])})
    got = asyncio.run(_complete_all(cluster, [("vl", _prompt(5), 5)]))[0]
    ref = asyncio.run(_complete_all(single.url, [("vl", _prompt(5), 5)]))[0]
    assert got[0] == 200 and got[1]["choices"][0]["text"] == ref[1]["choices"][0]["text"]
    r = http.post(cluster + "/v1/unload_lora_adapter", json={"lora_name": "vl"})
    assert r.status_code == 200 and r.text.startswith("Success")
    r = http.post(cluster + "/v1/unload_lora_adapter", json={"lora_name": "vl"})
    assert r.status_code == 404
    assert http.post(cluster + "/v1/completions",
                     json={**comp, "model": "vl"}).status_code == 404


def _sample(url, line_start: str) -> float:
    for line in http.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_router_counts_what_it_answers_itself(cluster, toy):
    """Refusals and catalog changes made by the router (not by a replica) show in the
    aggregated /metrics: 401s from its Guard, 404 for an unknown model, adapter loads and
    unloads."""
    e401, e404 = 'frod_rt_http_errors_total{status="401"}', 'frod_rt_http_errors_total{status="404"}'
    loads, unloads = "frod_rt_adapter_loads_total", "frod_rt_adapter_unloads_total"
    before = {k: _sample(cluster, k) for k in (e401, e404, loads, unloads)}
    for _ in range(3):
        assert httpx.get(cluster + "/v1/models", timeout=30).status_code == 401
    r = http.post(cluster + "/v1/completions", json={"model": "nope", "prompt": "a"})
    assert r.status_code == 404
    assert http.post(cluster + "/v1/adapters", json={"name": "cnt", "path": str(toy["spare"])},
                     timeout=60).status_code == 201
    assert http.delete(cluster + "/v1/adapters/cnt").status_code == 200
    after = {k: _sample(cluster, k) for k in before}
    assert after[e401] - before[e401] == 3
    assert after[e404] - before[e404] == 1
    assert after[loads] - before[loads] == 1 and after[unloads] - before[unloads] == 1


def test_run_time_adapters_survive_a_router_restart(cluster, single, toy):
    """The adapter catalog lives outside the router: after the router's process is killed
    and Ray Serve restarts it, an adapter loaded at run time is still listed and served, and
    a name deleted before the restart stays deleted."""
    p, n = _prompt(13), 5
    assert http.post(cluster + "/v1/adapters", json={"name": "late", "path": str(toy["spare"])},
                     timeout=60).status_code == 201
    assert http.post(cluster + "/v1/adapters", json={"name": "gone", "path": str(toy["spare"])},
                     timeout=60).status_code == 201
    assert http.delete(cluster + "/v1/adapters/gone").status_code == 200
    http.post(single.url + "/v1/adapters", json={"name": "late", "path": str(toy["spare"])})
    ref = asyncio.run(_complete_all(single.url, [("late", p, n)]))[0]
    router = httpx.get(cluster + "/health", timeout=30).json()["router"]
    os.kill(router["pid"], signal.SIGKILL)
    deadline, models = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        try:
            h = httpx.get(cluster + "/health", timeout=10).json()
            if h.get("router", {}).get("pid") not in (None, router["pid"]):
                models = [d["id"] for d in http.get(cluster + "/v1/models").json()["data"]]
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    assert models is not None, "the router did not come back"
    assert "late" in models and "gone" not in models and "ad0" in models
    got = asyncio.run(_complete_all(cluster, [("late", p, n)]))[0]
    assert got[0] == 200 and got[1]["choices"][0]["text"] == ref[1]["choices"][0]["text"]
    assert http.delete(cluster + "/v1/adapters/late").status_code == 200
