"""Security of the server, off by default where it opens anything: API key, run-time adapter
loading confined to a root (symlinks resolved, nothing outside touched), vLLM's adapter
routes, errors without server paths or adapter lists, Host allow-list, /docs, idle and
half-open connection timeouts, the bind warning, and the missing-extra message."""
from __future__ import annotations

import os
import socket
import sys
import time

import httpx
import openai
import pytest

from frod_rt.cli import main
from frod_rt.cli.serve import bind_warning
from frod_rt.server import ServerConfig, ServerThread
from server_toy import engine, make_toy

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("security"))


def _err(r, status):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return e


@pytest.fixture(scope="module")
def default_srv(toy):
    """Default configuration: no key, no run-time loading, no docs."""
    eng = engine(toy, adapters={"a0": toy["adapters"]["a0"]})
    with ServerThread(eng, config=ServerConfig(api_key=None)) as s:
        yield s
    eng.close()


def test_defaults_open_nothing(default_srv, toy):
    u = default_srv.url
    path = str(toy["adapters"]["a1"])
    for r in (httpx.post(u + "/v1/adapters", json={"name": "x", "path": path}),
              httpx.post(u + "/v1/load_lora_adapter", json={"lora_name": "x",
                                                            "lora_path": path}),
              httpx.post(u + "/v1/unload_lora_adapter", json={"lora_name": "a0"}),
              httpx.delete(u + "/v1/adapters/a0")):
        e = _err(r, 403)
        assert e["type"] == "permission_error" and e["code"] == "adapter_loading_disabled"
    assert [m["id"] for m in httpx.get(u + "/v1/models").json()["data"]] == ["toybase", "a0"]
    for p in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(u + p).status_code == 404


def test_unknown_model_does_not_list_adapters(default_srv):
    e = _err(httpx.post(default_srv.url + "/v1/completions",
                        json={"model": "nope", "prompt": "the fox", "max_tokens": 2}), 404)
    assert "nope" in e["message"] and "a0" not in e["message"]


def test_api_key(toy, monkeypatch):
    monkeypatch.setenv("FROD_RT_API_KEY", KEY)
    cfg = ServerConfig()                      # the key comes from the environment
    assert cfg.api_key == KEY
    eng = engine(toy, adapters={"a0": toy["adapters"]["a0"]})
    with ServerThread(eng, config=cfg) as s:
        u = s.url
        assert httpx.get(u + "/health").status_code == 200           # open
        for route in ("/v1/models", "/metrics", "/v1/models/a0", "/v1/nothing"):
            e = _err(httpx.get(u + route), 401)
            assert e["type"] == "authentication_error"
            _err(httpx.get(u + route, headers={"Authorization": "Bearer wrong"}), 401)
            _err(httpx.get(u + route, headers={"Authorization": KEY}), 401)
        r = httpx.post(u + "/v1/completions", json={"model": "a0", "prompt": "the fox"})
        assert _err(r, 401)["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        ok = httpx.get(u + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        client = openai.OpenAI(base_url=u + "/v1", api_key=KEY, max_retries=0)
        out = client.completions.create(model="a0", prompt="the fox", max_tokens=3,
                                        temperature=0)
        assert out.choices[0].finish_reason in ("stop", "length")
        bad = openai.OpenAI(base_url=u + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    eng.close()


@pytest.fixture(scope="module")
def loading_srv(toy):
    eng = engine(toy, adapters={"a0": toy["adapters"]["a0"]})
    cfg = ServerConfig(api_key=None, allow_adapter_loading=toy["adapter_root"])
    with ServerThread(eng, config=cfg) as s:
        yield s
    eng.close()


def test_paths_confined_to_the_root(loading_srv, toy, tmp_path):
    u = loading_srv.url
    root = str(toy["adapter_root"])
    outside = tmp_path / "outside"
    import shutil
    shutil.copytree(toy["adapters"]["a1"], outside)
    link = toy["adapter_root"] / "sneaky"
    os.symlink(outside, link)
    try:
        cases = [str(outside), "../security0/adapters/../../" + outside.name, "sneaky",
                 str(link), "/etc", "/nonexistent/dir", "a1/../../cache"]
        for path in cases:
            for r in (httpx.post(u + "/v1/adapters", json={"name": "x", "path": path}),
                      httpx.post(u + "/v1/load_lora_adapter",
                                 json={"lora_name": "x", "lora_path": path})):
                e = _err(r, 403)
                assert e["code"] == "path_not_allowed", path
                # no probing: the answer is the same whether the target exists or not,
                # and it does not echo server paths
                assert root not in e["message"] and str(tmp_path) not in e["message"]
        assert "x" not in [m["id"] for m in httpx.get(u + "/v1/models").json()["data"]]
    finally:
        link.unlink()


def test_errors_do_not_echo_server_paths(loading_srv, toy):
    u = loading_srv.url
    root = str(toy["adapter_root"])
    for r, status in ((httpx.post(u + "/v1/adapters", json={"name": "x", "path": "missing"}),
                       400),
                      (httpx.post(u + "/v1/load_lora_adapter",
                                  json={"lora_name": "x", "lora_path": "missing"}), 404)):
        e = _err(r, status)
        assert root not in e["message"] and "missing" in e["message"]
    bad = toy["adapter_root"] / "broken"
    bad.mkdir(exist_ok=True)
    (bad / "frod_adapter.json").write_text("{not json")
    e = _err(httpx.post(u + "/v1/adapters", json={"name": "x", "path": "broken"}), 400)
    assert root not in e["message"] and "broken" in e["message"]


def test_vllm_adapter_routes(loading_srv, toy):
    u = loading_srv.url
    body = {"model": "lora1", "prompt": "the quick fox", "max_tokens": 6, "temperature": 0}
    r = httpx.post(u + "/v1/load_lora_adapter", json={"lora_name": "lora1", "lora_path": "a1"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'lora1' added successfully."
    assert "lora1" in [m["id"] for m in httpx.get(u + "/v1/models").json()["data"]]
    via_vllm = httpx.post(u + "/v1/completions", json=body).json()["choices"][0]["text"]
    r = httpx.post(u + "/v1/load_lora_adapter",
                   json={"lora_name": "lora1", "lora_path": str(toy["adapters"]["a1"])})
    assert _err(r, 400)["code"] == "adapter_exists"
    _err(httpx.post(u + "/v1/load_lora_adapter", json={"lora_name": "z"}), 400)
    r = httpx.post(u + "/v1/unload_lora_adapter", json={"lora_name": "lora1"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'lora1' removed successfully."
    _err(httpx.post(u + "/v1/completions", json=body), 404)
    _err(httpx.post(u + "/v1/unload_lora_adapter", json={"lora_name": "lora1"}), 404)
    # the same adapter through frod_rt's own route gives the same text
    r = httpx.post(u + "/v1/adapters", json={"name": "lora1", "path": "a1"})
    assert r.status_code == 201
    assert httpx.post(u + "/v1/completions", json=body).json()["choices"][0]["text"] == via_vllm
    assert httpx.delete(u + "/v1/adapters/lora1").status_code == 200


def test_host_allow_list_and_docs(toy):
    eng = engine(toy, adapters={})
    cfg = ServerConfig(api_key=None, allowed_hosts=("localhost", "127.0.0.1"),
                       enable_docs=True)
    with ServerThread(eng, config=cfg) as s:
        u = s.url
        assert httpx.get(u + "/v1/models").status_code == 200          # Host: 127.0.0.1:port
        assert httpx.get(u + "/v1/models",
                         headers={"Host": f"localhost:{s.port}"}).status_code == 200
        e = _err(httpx.get(u + "/v1/models", headers={"Host": "evil.example:80"}), 400)
        assert e["code"] == "invalid_host"
        _err(httpx.get(u + "/health", headers={"Host": "evil.example"}), 400)
        assert httpx.get(u + "/docs").status_code == 200
        assert httpx.get(u + "/openapi.json").status_code == 200
    eng.close()


def test_half_open_and_slow_connections_time_out(toy):
    eng = engine(toy, adapters={})
    cfg = ServerConfig(api_key=None, header_timeout_s=0.5, body_timeout_s=0.5)
    with ServerThread(eng, config=cfg) as s:
        # a connection that sends half a request head and nothing more is closed
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            t0 = time.monotonic()
            assert c.recv(1024) == b""            # closed by the server, not a timeout
            assert time.monotonic() - t0 < 4
        # a connection that never sends anything is closed as well
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            assert c.recv(1024) == b""
        # a body that stops arriving gets 408
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mo")
            data = c.recv(4096)
            assert data.startswith(b"HTTP/1.1 408"), data[:100]
        assert httpx.get(s.url + "/health").status_code == 200
    eng.close()


def test_bind_warning():
    assert bind_warning("127.0.0.1", None) is None
    assert bind_warning("localhost", None) is None
    assert bind_warning("::1", None) is None
    assert bind_warning("0.0.0.0", "key") is None
    w = bind_warning("0.0.0.0", None)
    assert w and "API key" in w and "0.0.0.0" in w
    assert bind_warning("192.168.1.5", None)


@pytest.mark.parametrize("dep", ["fastapi", "prometheus_client"])
def test_serve_without_server_extra_says_what_to_install(toy, monkeypatch, capsys, dep):
    for mod in list(sys.modules):
        if mod == dep or mod.startswith(dep + ".") or mod.startswith("frod_rt.server"):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, dep, None)             # import <dep> -> ImportError
    monkeypatch.delattr(sys.modules["frod_rt"], "server", raising=False)
    rc = main(["serve", "--base", str(toy["base"]), "--port", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install 'frod-rt[serve]'" in err and dep in err
    assert "Traceback" not in err


def test_serve_refuses_a_missing_adapter_root(toy, tmp_path, capsys):
    rc = main(["serve", "--base", str(toy["base"]), "--allow-adapter-loading",
               str(tmp_path / "nope")])
    assert rc == 2 and "--allow-adapter-loading" in capsys.readouterr().err
