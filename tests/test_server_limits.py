"""Request limits and strictness (issue 15 item 4/8, issue 17): body size, prompt length
before tokenizing, stop strings, strict types, seed range, 405, unknown fields, disconnects
of non-streaming clients while tokens flow, and /health staying responsive meanwhile."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from frod_rt.server import ServerConfig, ServerThread
from server_toy import engine, make_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def srv(toy):
    eng = engine(toy, max_waiting=64)
    with ServerThread(eng, config=ServerConfig(max_body_bytes=4 * 1024 * 1024)) as s:
        yield s
    eng.close()


BODY = {"model": "a0", "prompt": "the quick fox", "max_tokens": 3, "temperature": 0}


def _err(r, status):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


def _health_ok(url):
    assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_body_too_large_is_413_and_health_stays_responsive(srv):
    big = {"model": "a0", "prompt": "fox " * (5 * 1024 * 1024), "max_tokens": 2}
    result = {}

    def post():
        result["r"] = httpx.post(srv.url + "/v1/completions", json=big, timeout=120)

    t = threading.Thread(target=post)
    t.start()
    worst = 0.0
    while t.is_alive():
        t0 = time.perf_counter()
        _health_ok(srv.url)
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.02)
    t.join()
    e = _err(result["r"], 413)
    assert e["type"] == "invalid_request_error" and e["code"] == "request_too_large"
    assert worst < 2.0, f"/health took {worst:.2f} s while a huge body was refused"
    # a chunked upload (no Content-Length) over the limit is cut off as well
    def chunks():
        for _ in range(5):
            yield b"x" * (1024 * 1024)
    _err(httpx.post(srv.url + "/v1/completions", content=chunks(),
                    headers={"content-type": "application/json"}, timeout=60), 413)
    _health_ok(srv.url)


def test_long_prompt_refused_before_tokenizing(srv):
    n = 64 * srv.app.state.server.engine.max_model_len + 1
    t0 = time.perf_counter()
    e = _err(httpx.post(srv.url + "/v1/completions", json=dict(BODY, prompt="a" * n),
                        timeout=60), 400)
    assert e["param"] == "prompt" and e["code"] == "prompt_too_long"
    e = _err(httpx.post(srv.url + "/v1/chat/completions",
                        json={"model": "a0", "messages": [{"role": "user", "content": "a" * n}]},
                        timeout=60), 400)
    assert e["param"] == "messages"
    ids = list(range(5, 10)) * 2000
    e = _err(httpx.post(srv.url + "/v1/completions", json=dict(BODY, prompt=ids)), 400)
    assert e["param"] == "prompt"
    assert time.perf_counter() - t0 < 20


def test_stop_strings_bounded(srv):
    e = _err(httpx.post(srv.url + "/v1/completions",
                        json=dict(BODY, stop=[f"s{i}" for i in range(20000)])), 400)
    assert e["param"] == "stop"
    _err(httpx.post(srv.url + "/v1/completions", json=dict(BODY, stop=["x" * 10000])), 400)
    _err(httpx.post(srv.url + "/v1/completions",
                    json=dict(BODY, stop_token_ids=list(range(5000)))), 400)
    r = httpx.post(srv.url + "/v1/completions", json=dict(BODY, stop=["zz", "qq"]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field,value", [
    ("max_tokens", True), ("max_tokens", "5"), ("max_tokens", 2.0), ("temperature", "0.5"),
    ("temperature", False), ("stream", "yes"), ("seed", True), ("top_k", True),
    ("ignore_eos", 1), ("prompt", [5, True, 7])])
def test_strict_types(srv, field, value):
    e = _err(httpx.post(srv.url + "/v1/completions", json=dict(BODY, **{field: value})), 400)
    assert e["param"] is not None and e["param"].split(".")[0] == field


def test_seed_out_of_range_names_seed(srv):
    e = _err(httpx.post(srv.url + "/v1/completions",
                        json=dict(BODY, seed=2**64, temperature=1.0)), 400)
    assert e["param"] == "seed"
    r = httpx.post(srv.url + "/v1/completions", json=dict(BODY, seed=2**64 - 1, temperature=1))
    assert r.status_code == 200, r.text


def test_method_not_allowed_405(srv):
    r = httpx.get(srv.url + "/v1/completions")
    e = _err(r, 405)
    assert e["type"] == "invalid_request_error" and e["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


def test_unknown_fields_refused_by_default(srv):
    e = _err(httpx.post(srv.url + "/v1/completions", json=dict(BODY, temprature=0.5)), 400)
    assert e["param"] == "temprature" and "temprature" in e["message"]
    e = _err(httpx.post(srv.url + "/v1/chat/completions",
                        json={"model": "a0", "max_tokens": 2, "messages": [
                            {"role": "user", "content": "hi", "colour": "red"}]}), 400)
    assert e["param"] == "messages.0.colour"
    e = _err(httpx.post(srv.url + "/v1/completions",
                        json=dict(BODY, stream=True, stream_options={"include_usage": True,
                                                                     "x": 1})), 400)
    assert e["param"] == "stream_options.x"


def test_unknown_fields_can_be_allowed(toy):
    eng = engine(toy, adapters={})
    with ServerThread(eng, config=ServerConfig(strict_fields=False)) as s:
        r = httpx.post(s.url + "/v1/completions",
                       json={"model": "toybase", "prompt": "the fox", "max_tokens": 2,
                             "temprature": 0.5, "extra_thing": [1]})
        assert r.status_code == 200, r.text
    eng.close()


def test_non_streaming_disconnect_aborts_while_tokens_flow(toy):
    """The engine keeps producing tokens (each step slowed a little); the client gives up
    after 0.6 s: the server must notice, abort the request and free its KV blocks long
    before the 200 tokens are done."""
    eng = engine(toy, adapters={})
    real_step = eng.step

    def slow_step():
        time.sleep(0.02)
        return real_step()

    eng.step = slow_step
    with ServerThread(eng) as s:
        loop = s.app.state.server.loop
        before = eng.stats()
        body = {"model": "toybase", "prompt": "the fox", "max_tokens": 200,
                "ignore_eos": True, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json=body, timeout=0.6)
        deadline = time.monotonic() + 3.0
        while eng.stats()["requests_aborted_total"] == before["requests_aborted_total"]:
            assert time.monotonic() < deadline, "the disconnect was not noticed"
            time.sleep(0.02)
        st = eng.stats()
        assert loop.aborts_total >= 1
        assert st["tokens_generated_total"] - before["tokens_generated_total"] < 190
        deadline = time.monotonic() + 5.0
        while eng.stats()["kv_blocks_used"] or eng.stats()["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    eng.close()


def test_failed_request_is_500_and_others_are_served(toy, tmp_path):
    """An adapter holding huge finite values makes its request's logits non-finite: that
    request gets 500 (an error event when streaming), concurrent ones are answered."""
    import shutil
    import torch
    from safetensors.torch import load_file, save_file
    huge = tmp_path / "huge"
    shutil.copytree(toy["adapters"]["a0"], huge)
    t = load_file(huge / "frod_adapter.safetensors")
    save_file({k: torch.full_like(v, 3e38) for k, v in t.items()},
              str(huge / "frod_adapter.safetensors"))
    eng = engine(toy, adapters={"a1": toy["adapters"]["a1"], "huge": huge})
    with ServerThread(eng) as s:
        loop = s.app.state.server.loop
        loop.pause()                      # queue all three so they share a batch
        res = {}

        def post(name, body):
            res[name] = httpx.post(s.url + "/v1/completions", json=body, timeout=60)

        b = {"prompt": "the quick fox", "max_tokens": 5, "temperature": 0.7, "seed": 1}
        ts = [threading.Thread(target=post, args=(m, dict(b, model=m)))
              for m in ("huge", "a1", "toybase")]
        for t in ts:
            t.start()
        deadline = time.monotonic() + 30
        while eng.stats()["queue_depth"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        loop.resume()
        for t in ts:
            t.join(60)
        e = _err(res["huge"], 500)
        assert e["code"] == "generation_failed" and "non-finite" in e["message"]
        assert res["a1"].status_code == 200 and res["toybase"].status_code == 200
        with httpx.stream("POST", s.url + "/v1/completions",
                          json=dict(b, model="huge", stream=True)) as r:
            lines = [x for x in r.iter_lines() if x.startswith("data: ")]
        assert '"generation_failed"' in lines[-2] and lines[-1] == "data: [DONE]"
        assert loop.step_errors_total == 0
    eng.close()
