"""/metrics on prometheus_client: per-adapter series, the four latency histograms, bounded
label cardinality. The exposition is read back with prometheus_client's own parser."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_toy import engine, make_toy

from frod_rt.server import ServerThread
from frod_rt.server.config import ServerConfig
from frod_rt.server.metrics import OTHER, AdapterLabels, ServerMetrics

HISTOGRAMS = ("frod_rt_time_to_first_token_seconds", "frod_rt_inter_token_latency_seconds",
              "frod_rt_e2e_request_latency_seconds", "frod_rt_request_queue_time_seconds")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("metrics_toy"), n_adapters=2)


def _scrape(url) -> dict:
    """{family name: family} of the parsed exposition text."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _by_adapter(fams, name, suffix="_total") -> dict:
    return {s.labels["adapter"]: s.value for s in fams[name].samples
            if s.name == name + suffix}


def _sample(fams, name, sample, **labels) -> float:
    for s in fams[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, sample, labels))


def test_metrics_per_adapter_and_histograms(toy):
    eng = engine(toy, max_waiting=16)
    with ServerThread(eng) as srv:
        post = lambda **b: httpx.post(srv.url + "/v1/completions", timeout=60,  # noqa: E731
                                      json={"temperature": 0, **b})
        sent = {"toybase": [3], "a0": [4, 2], "a1": [5]}       # max_tokens per request
        gen = {}
        for model_name, mts in sent.items():
            for mt in mts:
                r = post(model=model_name, prompt="the quick fox", max_tokens=mt,
                         ignore_eos=True)
                assert r.status_code == 200, r.text
                gen[model_name] = gen.get(model_name, 0) + r.json()["usage"]["completion_tokens"]
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=60,
                          json={"model": "a1", "prompt": "a journey", "max_tokens": 3,
                                "temperature": 0, "stream": True, "ignore_eos": True}) as s:
            assert s.status_code == 200 and "[DONE]" in s.read().decode()
        gen["a1"] += 3
        assert post(model="a0", prompt="x", temperature=-1).status_code == 400
        assert post(model="nope", prompt="x").status_code == 404

        fams = _scrape(srv.url)
        reqs = _by_adapter(fams, "frod_rt_adapter_requests")
        assert reqs == {"toybase": 1, "a0": 2, "a1": 2}
        assert _by_adapter(fams, "frod_rt_adapter_generation_tokens") == gen
        ptok = _by_adapter(fams, "frod_rt_adapter_prompt_tokens")
        assert sum(ptok.values()) == _sample(fams, "frod_rt_prompt_tokens",
                                             "frod_rt_prompt_tokens_total")
        assert _by_adapter(fams, "frod_rt_adapter_request_errors") == {"a0": 1}
        assert _sample(fams, "frod_rt_http_errors", "frod_rt_http_errors_total",
                       status="404") == 1
        n_req, n_tok = 5, sum(gen.values())
        for h in HISTOGRAMS:
            assert fams[h].type == "histogram", h
            buckets = [s for s in fams[h].samples if s.name == h + "_bucket"]
            assert len(buckets) > 10 and buckets[-1].labels["le"] == "+Inf"
        count = {h: _sample(fams, h, h + "_count") for h in HISTOGRAMS}
        assert count["frod_rt_time_to_first_token_seconds"] == n_req
        assert count["frod_rt_inter_token_latency_seconds"] == n_tok - n_req   # 1 token/step
        assert count["frod_rt_e2e_request_latency_seconds"] == n_req
        assert count["frod_rt_request_queue_time_seconds"] == n_req
        assert _sample(fams, "frod_rt_e2e_request_latency_seconds",
                       "frod_rt_e2e_request_latency_seconds_sum") > 0
        # the engine's own series are still there
        assert _sample(fams, "frod_rt_requests", "frod_rt_requests_total") == n_req
        assert fams["frod_rt_queue_depth"].type == "gauge"
    eng.close()


def test_adapter_labels_capped_and_removed(toy):
    """With room for 2 label values (base + one adapter), a second adapter is counted under
    "(other)"; unloading the first removes its series and frees the room."""
    eng = engine(toy, max_waiting=16)
    config = ServerConfig(max_adapter_labels=2, allow_adapter_loading=toy["adapter_root"])
    with ServerThread(eng, config=config) as srv:
        def ask(name):
            r = httpx.post(srv.url + "/v1/completions", timeout=60,
                           json={"model": name, "prompt": "the fox", "max_tokens": 1})
            assert r.status_code == 200, r.text
        for name in ("toybase", "a0", "a1"):
            ask(name)
        fams = _scrape(srv.url)
        assert _by_adapter(fams, "frod_rt_adapter_requests") == \
            {"toybase": 1, "a0": 1, OTHER: 1}
        assert httpx.delete(srv.url + "/v1/adapters/a0").status_code == 200
        assert "a0" not in _by_adapter(_scrape(srv.url), "frod_rt_adapter_requests")
        ask("a1")
        assert _by_adapter(_scrape(srv.url), "frod_rt_adapter_requests") == \
            {"toybase": 1, "a1": 1, OTHER: 1}
    eng.close()


class _FakeEngine:
    base_name = "base"

    def __init__(self):
        self.loaded: set[str] = set()

    def adapters(self):
        return sorted(self.loaded)

    def stats(self):
        return {"requests_total": 0}


class _FakeLoop:
    step_errors_total = 0

    def tokens_per_second(self):
        return 0.0

    def in_flight(self):
        return 0


def test_cardinality_bounded_while_thousands_of_adapters_come_and_go():
    eng = _FakeEngine()
    m = ServerMetrics(eng, _FakeLoop(), max_adapter_labels=8)
    for i in range(3000):
        name = f"a{i}"
        eng.loaded.add(name)
        if i >= 20:                      # at most 20 adapters loaded at any time
            eng.loaded.discard(f"a{i - 20}")
        label = m.label_for(name)
        m.request_submitted(label, 3)
        m.tokens(label, 2, 0.01, None)
        if i % 7 == 0:
            m.request_error(label)
        assert len(m.labels.tracked()) <= 8
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    for fam in ("frod_rt_adapter_requests", "frod_rt_adapter_prompt_tokens",
                "frod_rt_adapter_generation_tokens"):
        vals = _by_adapter(fams, fam)
        assert len(vals) <= 9, (fam, len(vals))          # 8 names + "(other)"
        assert set(vals) - {OTHER} <= eng.loaded         # only loaded adapters keep series
    assert sum(_by_adapter(fams, "frod_rt_adapter_requests").values()) <= 3000
    assert _by_adapter(fams, "frod_rt_adapter_requests")[OTHER] > 0


def test_adapter_labels_unit():
    loaded = {"x", "y"}
    lab = AdapterLabels(2, lambda: loaded, lambda: "b")
    assert lab.assign("b") == ("b", [])
    assert lab.assign("x") == ("x", [])
    assert lab.assign("y") == (OTHER, [])             # full, nothing to drop
    loaded.discard("x")
    assert lab.live("x") == "x"                       # dropped only by a sweep / overflow
    assert lab.assign("y") == ("y", ["x"])            # overflow sweeps the unloaded "x"
    assert lab.live("x") == OTHER
    with pytest.raises(ValueError, match="max_adapter_labels"):
        AdapterLabels(0, lambda: (), lambda: "b")
