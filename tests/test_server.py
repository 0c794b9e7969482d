"""The OpenAI-compatible server: a real uvicorn server on 127.0.0.1 (a thread), a tiny
random-weight Llama with 8 FRoD adapters, and the official ``openai`` client.

Greedy outputs are checked against ``Engine.generate`` on a second engine (the engine is
batch invariant, so a request's text must not depend on what else the server batched)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import torch

from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer
from frod_rt.server import ServerConfig, ServerThread
from frod_rt.server.chat import chat_prompt, simple_template
from frod_rt.server.protocol import ChatMessage

LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = [LLAMA_T, ["q_proj", "v_proj"], ["gate_proj", "up_proj", "down_proj"],
           ["o_proj", "k_proj"]]
WORDS = ("the quick brown fox jumps over the lazy dog a journey of a thousand miles begins "
         "with a single step to be or not that is question once upon time there was small "
         "model").split()
N_ADAPTERS = 8


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """A saved toy Llama + tokenizer, 8 served adapters and 1 spare, and a foreign adapter
    (made for another base)."""
    root = tmp_path_factory.mktemp("server_toy")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=3)
    base = save_toy_model(model, tok, root / "toybase")
    cache = root / "cache"
    adapters = {}
    for i in range(N_ADAPTERS + 1):
        name = f"ad{i}"
        random_adapter(model, root / name, TARGETS[i % len(TARGETS)], seed=10 + i,
                       cache_dir=cache)
        adapters[name] = root / name
    other = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=99)
    random_adapter(other, root / "foreign", ["q_proj"], seed=1, cache_dir=cache)
    return {"root": root, "base": base, "cache": cache, "adapters": adapters,
            "served": {n: adapters[n] for n in list(adapters)[:N_ADAPTERS]},
            "spare": ("ad8", adapters["ad8"]), "foreign": root / "foreign"}


def _engine(toy, adapters, **kw):
    kw.setdefault("device_adapter_capacity", 4)      # < 8 adapters: evictions happen
    return Engine.load(toy["base"], adapters=adapters, cache_dir=toy["cache"], **kw)


@pytest.fixture(scope="session")
def reference(toy):
    """An engine with every adapter (incl. the spare), driven offline by Engine.generate."""
    return _engine(toy, toy["adapters"], device_adapter_capacity=N_ADAPTERS + 1)


@pytest.fixture(scope="session")
def server(toy):
    eng = _engine(toy, toy["served"], max_waiting=64)
    with ServerThread(eng, config=ServerConfig(allow_adapter_loading=toy["root"])) as srv:
        yield srv
    eng.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _prompt(i: int) -> str:
    g = torch.Generator().manual_seed(1000 + i)
    n = int(torch.randint(2, 9, (1,), generator=g))
    return " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g).tolist())


def _ok(server) -> None:
    """The server still answers."""
    assert httpx.get(server.url + "/health").status_code == 200
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "toybase", "prompt": "the fox", "max_tokens": 2,
                         "temperature": 0})
    assert r.status_code == 200, r.text


def _metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(f"frod_rt_{name} ") or line.startswith(f"frod_rt_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_models_lists_base_and_adapters(client, toy):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "toybase"
    assert sorted(ids[1:]) == sorted(toy["served"])


def test_32_concurrent_requests_match_engine_generate(server, reference):
    names = ["toybase"] + sorted(f"ad{i}" for i in range(N_ADAPTERS))
    jobs = [(_prompt(i), names[i % len(names)], 3 + i % 9) for i in range(32)]
    aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                 max_retries=0, timeout=120)

    async def one(p, m, n):
        return await aclient.completions.create(model=m, prompt=p, max_tokens=n,
                                                temperature=0)

    async def all_of():
        try:
            return await asyncio.gather(*(one(*j) for j in jobs))
        finally:
            await aclient.close()

    before = _metric(server, "requests_total")
    results = asyncio.run(all_of())
    for (p, m, n), r in zip(jobs, results):
        ref = reference.generate(p, adapter=None if m == "toybase" else m, max_tokens=n)[0]
        assert r.model == m
        assert r.choices[0].text == ref.text, (p, m)
        assert r.choices[0].finish_reason == ref.finish_reason
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.prompt_tokens == ref.prompt_tokens
    # the adapters really change the outputs
    changed = sum(r.choices[0].text != reference.generate(p, max_tokens=n)[0].text
                  for (p, m, n), r in zip(jobs, results) if m != "toybase")
    assert changed >= 20
    assert _metric(server, "requests_total") - before >= 32
    assert _metric(server, "adapter_evictions_total") > 0      # 8 adapters, 4 device slots
    assert _metric(server, "adapters_loaded") == N_ADAPTERS


def test_streaming_completion_and_chat(client, reference, server):
    p = _prompt(77)
    ref = reference.generate(p, adapter="ad1", max_tokens=10, ignore_eos=True)[0]
    chunks = list(client.completions.create(model="ad1", prompt=p, max_tokens=10,
                                            temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len(chunks) > 1

    # chat: the toy tokenizer has no chat template -> the documented simple template
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": p}]
    cref = reference.generate(simple_template(msgs), adapter="ad2", max_tokens=6)[0]
    full = client.chat.completions.create(model="ad2", messages=msgs, max_tokens=6,
                                          temperature=0)
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == cref.text
    stream = list(client.chat.completions.create(
        model="ad2", messages=msgs, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == cref.text
    assert stream[-1].choices == [] and stream[-1].usage.completion_tokens == len(cref.token_ids)

    # raw SSE framing ends with [DONE]
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"model": "toybase", "prompt": p, "max_tokens": 3,
                            "temperature": 0, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_multiple_prompts_one_request(server, reference):
    ps = [_prompt(5), _prompt(6), _prompt(7)]
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "ad3", "prompt": ps, "max_tokens": 5, "temperature": 0},
                   timeout=60).json()
    refs = reference.generate(ps, adapter="ad3", max_tokens=5)
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert [c["text"] for c in r["choices"]] == [x.text for x in refs]
    assert r["usage"]["prompt_tokens"] == sum(x.prompt_tokens for x in refs)
    # token-id prompts, one token each: usage still counts the prompts exactly
    ids = [reference.tokenizer(p)["input_ids"] for p in ps]
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "ad3", "prompt": ids, "max_tokens": 1, "temperature": 0},
                   timeout=60).json()
    refs1 = reference.generate(ids, adapter="ad3", max_tokens=1)
    assert [c["text"] for c in r["choices"]] == [x.text for x in refs1]
    assert r["usage"] == {"prompt_tokens": sum(map(len, ids)),
                          "completion_tokens": sum(len(x.token_ids) for x in refs1),
                          "total_tokens": sum(map(len, ids)) + sum(len(x.token_ids)
                                                                   for x in refs1)}


def test_load_and_unload_at_run_time(client, server, reference, toy):
    name, path = toy["spare"]
    p = _prompt(11)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=name, prompt=p, max_tokens=4, temperature=0)
    r = httpx.post(server.url + "/v1/adapters", json={"name": name, "path": str(path)})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == name
    assert name in [m.id for m in client.models.list().data]
    out = client.completions.create(model=name, prompt=p, max_tokens=8, temperature=0)
    assert out.choices[0].text == reference.generate(p, adapter=name, max_tokens=8)[0].text
    # same name again -> 409; the loaded one keeps serving
    r = httpx.post(server.url + "/v1/adapters", json={"name": name, "path": str(path)})
    assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_exists"
    r = httpx.delete(server.url + f"/v1/adapters/{name}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert name not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=name, prompt=p, max_tokens=4, temperature=0)
    # reload under another name works too
    r = httpx.post(server.url + "/v1/adapters", json={"name": "again", "path": str(path)})
    assert r.status_code == 201
    out2 = client.completions.create(model="again", prompt=p, max_tokens=8, temperature=0)
    assert out2.choices[0].text == out.choices[0].text
    assert httpx.delete(server.url + "/v1/adapters/again").status_code == 200
    _ok(server)


def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("case", [
    "unknown_model", "invalid_json", "missing_field", "wrong_type", "bad_temperature",
    "bad_max_tokens", "too_long", "n_2", "logprobs", "bad_stop", "empty_messages",
    "bad_role", "unknown_route", "load_missing_dir", "load_foreign_adapter",
    "load_bad_body", "delete_unknown"])
def test_errors_keep_server_alive(server, toy, case):
    u = server.url
    c = {"model": "ad0", "prompt": "the fox", "temperature": 0}
    if case == "unknown_model":
        e = _err(httpx.post(u + "/v1/completions", json=dict(c, model="nope")), 404)
        assert e["param"] == "model" and "nope" in e["message"]
        e = _err(httpx.post(u + "/v1/chat/completions",
                            json={"model": "nope", "messages": [{"role": "user",
                                                                 "content": "hi"}]}), 404)
    elif case == "invalid_json":
        _err(httpx.post(u + "/v1/completions", content=b'{"model": "ad0", "prompt": ',
                        headers={"content-type": "application/json"}), 400)
    elif case == "missing_field":
        assert _err(httpx.post(u + "/v1/completions", json={"model": "ad0"}),
                    400)["param"] == "prompt"
    elif case == "wrong_type":
        _err(httpx.post(u + "/v1/completions", json=dict(c, max_tokens="many")), 400)
    elif case == "bad_temperature":
        assert _err(httpx.post(u + "/v1/completions", json=dict(c, temperature=-1)),
                    400)["param"] == "temperature"
    elif case == "bad_max_tokens":
        assert _err(httpx.post(u + "/v1/completions", json=dict(c, max_tokens=0)),
                    400)["param"] == "max_tokens"
    elif case == "too_long":
        assert _err(httpx.post(u + "/v1/completions", json=dict(c, max_tokens=100000)),
                    400)["param"] == "max_tokens"
    elif case == "n_2":
        assert _err(httpx.post(u + "/v1/completions", json=dict(c, n=2)), 400)["param"] == "n"
    elif case == "logprobs":
        _err(httpx.post(u + "/v1/completions", json=dict(c, logprobs=2)), 400)
    elif case == "bad_stop":
        assert _err(httpx.post(u + "/v1/completions", json=dict(c, stop=[""])),
                    400)["param"] == "stop"
    elif case == "empty_messages":
        _err(httpx.post(u + "/v1/chat/completions", json={"model": "ad0", "messages": []}),
             400)
    elif case == "bad_role":
        _err(httpx.post(u + "/v1/chat/completions",
                        json={"model": "ad0", "messages": [{"role": "robot", "content": "x"}]}),
             400)
    elif case == "unknown_route":
        _err(httpx.get(u + "/v1/nothing"), 404)
    elif case == "load_missing_dir":
        assert _err(httpx.post(u + "/v1/adapters",
                               json={"name": "x", "path": str(toy["root"] / "missing")}),
                    400)["param"] == "path"
    elif case == "load_foreign_adapter":
        e = _err(httpx.post(u + "/v1/adapters",
                            json={"name": "foreign", "path": str(toy["foreign"])}), 400)
        assert "foreign" in e["message"]
        assert "foreign" not in [m["id"] for m in httpx.get(u + "/v1/models").json()["data"]]
    elif case == "load_bad_body":
        _err(httpx.post(u + "/v1/adapters", json={"name": "x"}), 400)
    elif case == "delete_unknown":
        _err(httpx.delete(u + "/v1/adapters/never-loaded"), 404)
    _ok(server)
    assert len(httpx.get(u + "/v1/models").json()["data"]) == N_ADAPTERS + 1


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert ei.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="ad0", prompt="x", temperature=-2)


def test_health_and_metrics(server):
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx.get(server.url + "/metrics").text
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, typ in (("requests", "counter"), ("generation_tokens", "counter"),
                      ("generation_tokens_per_second", "gauge"), ("queue_depth", "gauge"),
                      ("adapters_loaded", "gauge"), ("adapter_evictions", "counter"),
                      ("requests_rejected", "counter")):
        assert types.get(f"frod_rt_{name}") == typ, name
    assert _metric(server, "queue_depth") == 0


def test_overload_429_and_disconnect_abort(toy):
    """A full waiting queue answers 429 (the server keeps going); a client that disconnects
    has its request aborted. The engine loop is paused so the queue state is exact."""
    eng = _engine(toy, {"ad0": toy["adapters"]["ad0"]}, max_waiting=2)
    with ServerThread(eng) as srv:
        loop = srv.app.state.server.loop
        body = {"model": "ad0", "prompt": "the quick fox", "max_tokens": 4, "temperature": 0}
        loop.pause()
        results = []

        def post():
            results.append(httpx.post(srv.url + "/v1/completions", json=body, timeout=120))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while eng.stats()["queue_depth"] < 2:
            assert time.monotonic() < deadline, "requests did not reach the queue"
            time.sleep(0.02)
        r = httpx.post(srv.url + "/v1/completions", json=body)
        e = _err(r, 429)
        assert e["type"] == "rate_limit_error" and r.headers.get("retry-after")
        assert _metric(srv, 'requests_rejected_total') == 1
        loop.resume()
        for t in threads:
            t.join(60)
        assert [x.status_code for x in results] == [200, 200]
        assert results[0].json()["choices"][0]["text"] == results[1].json()["choices"][0]["text"]

        # disconnect: open a stream while paused, drop it, then let the engine run
        loop.pause()
        aborted = _metric(srv, "requests_aborted_total")
        with httpx.stream("POST", srv.url + "/v1/completions",
                          json=dict(body, stream=True, max_tokens=50)) as resp:
            assert resp.status_code == 200
        deadline = time.monotonic() + 30
        while loop.aborts_total == 0:
            assert time.monotonic() < deadline, "disconnect was not noticed"
            time.sleep(0.05)
        loop.resume()
        while _metric(srv, "requests_aborted_total") < aborted + 1:
            assert time.monotonic() < deadline, "request was not aborted"
            time.sleep(0.05)
        assert eng.stats()["running"] == 0

        # a non-streaming client that gives up (times out) is noticed and aborted as well
        loop.pause()
        seen = loop.aborts_total
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json=dict(body, max_tokens=50), timeout=0.5)
        deadline = time.monotonic() + 30
        while loop.aborts_total == seen:
            assert time.monotonic() < deadline, "disconnect was not noticed"
            time.sleep(0.05)
        loop.resume()
        while _metric(srv, "requests_aborted_total") < aborted + 2:
            assert time.monotonic() < deadline, "request was not aborted"
            time.sleep(0.05)
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200
    eng.close()


def test_chat_prompt_uses_tokenizer_template():
    tok = toy_tokenizer()
    msgs = [ChatMessage(role="user", content="the fox")]
    assert chat_prompt(tok, msgs) == "user: the fox\nassistant:"
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} says {{ m['content'] }} "
                         "{% endfor %}{% if add_generation_prompt %}reply{% endif %}")
    ids = chat_prompt(tok, msgs)
    assert ids == tok("user says the fox reply", add_special_tokens=False)["input_ids"]
