"""Adapter files: round trips, imported patterns, subsets, and every bad-file case raising
AdapterError with the model left unchanged."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from frod_rt import AdapterError, FrodConfig, get_frod_model, read_adapter, write_adapter
from frod_rt.method import AdapterFile, LayerDelta, check_against
from frod_rt.method.adapter_io import CONFIG_NAME, WEIGHTS_NAME

from frod_models import tiny_bert

TARGETS = ["query", "value", "intermediate.dense"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _model(seed=0, targets=TARGETS, **kw):
    kw.setdefault("init_std", 0.1)
    kw.setdefault("category_mode", "per_role")     # the tests below build per-role keys
    torch.manual_seed(100 + seed)
    return get_frod_model(tiny_bert(seed), FrodConfig(targets, sparse_rate=0.05, progress=False,
                                                      **kw))


IDS = torch.randint(0, 60, (2, 5), generator=torch.Generator().manual_seed(1))


def _out(fm, name):
    with torch.no_grad(), fm.adapter_routing([name] * IDS.shape[0]):
        return fm(IDS).last_hidden_state


def _snapshot(fm):
    return (list(fm.adapters), fm.active_adapter,
            {k: v.detach().clone() for k, v in fm.state_dict().items()},
            sum(b.numel() for b in fm.buffers()))


def _assert_same(fm, snap):
    adapters, active, state, nbuf = snap
    assert fm.adapters == adapters and fm.active_adapter == active
    now = fm.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert sum(b.numel() for b in fm.buffers()) == nbuf


def test_save_load_roundtrip(tmp_path):
    src = _model()
    src.save_adapter(tmp_path / "a")
    assert {p.name for p in (tmp_path / "a").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    raw = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert raw["format_version"] == 2 and raw["decomposition_fingerprint"] == src.fingerprint
    assert raw["base_fingerprint"] == src.decomposition.base_fingerprint != src.fingerprint
    assert raw["base_model"]["architecture"] == "BertModel"
    assert raw["sparse_rate"] == 0.05 and raw["seed"] == 0 and raw["alpha"] == 1e-3
    assert set(raw["categories"]) == {c for c in src.decomposition.categories}
    dst = _model(init_std=0.0)  # same base (same seed), fresh zero adapter "default"
    assert dst.load_adapter(tmp_path / "a", "loaded") == "loaded"
    torch.testing.assert_close(_out(dst, "loaded"), _out(src, "default"), rtol=0, atol=0)
    for n, m in dst.frod_layers().items():
        assert torch.equal(m.frod_s["loaded"], src.frod_layers()[n].frod_s["default"])
        assert torch.equal(m.pattern("loaded")[0], m.pattern("default")[0])  # shared pattern
    f = read_adapter(tmp_path / "a")
    assert f.name == "default" and len(f.layers) == 6


def test_seeded_adapter_and_own_pattern_roundtrip(tmp_path):
    fm = _model()
    fm.add_adapter("seeded", FrodConfig(["query"], sparse_rate=0.05, seed=5, init_std=0.1,
                                        progress=False))
    # an "imported" adapter whose pattern differs from ours (explicit rows/cols)
    g = torch.Generator().manual_seed(2)
    layers = {}
    for n in ("encoder.layer.0.attention.self.value", "encoder.layer.1.attention.self.value"):
        rows = torch.tensor([0, 3, 5, 23], dtype=torch.int32)
        cols = torch.tensor([1, 2, 9, 0], dtype=torch.int32)
        layers[n] = LayerDelta(torch.randn(24, generator=g), torch.randn(4, generator=g), rows, cols)
    key = "encoder.layer.*.attention.self.value:24x24"
    cat = fm.decomposition.categories[key]
    cfg = fm.adapter_file("default").config
    cfg.categories = {key: {"out": 24, "in": 24, "k": 4, "layers": list(layers),
                            "fingerprint": cat.fingerprint}}
    cfg.extra = {"imported_from": "test"}
    fm.add_adapter_from_file(AdapterFile("imp", cfg, layers))
    # the imported layer computes W + U (diag(dl) + S) V^T with its own pattern
    m = fm.frod_layers()["encoder.layer.0.attention.self.value"]
    d = layers["encoder.layer.0.attention.self.value"]
    M = torch.diag(d.dl.double())
    M[d.rows.long(), d.cols.long()] += d.s.double()
    dW = m.frod_U.double() @ M @ m.V.double().T
    torch.testing.assert_close(m.delta_weight("imp", torch.float64), dW, rtol=1e-6, atol=1e-6)
    x = torch.randn(3, 24)
    with torch.no_grad(), fm.adapter_routing(["imp", "seeded", "imp"]):
        y = m(x)
    ref = x.double() @ (m.weight.double() + dW).T + m.bias.double()
    torch.testing.assert_close(y[[0, 2]].double(), ref[[0, 2]], rtol=1e-5, atol=1e-5)
    for name in ("seeded", "imp"):
        fm.save_adapter(tmp_path / name, name)
    back = read_adapter(tmp_path / "imp")
    assert torch.equal(back.layers["encoder.layer.1.attention.self.value"].cols, layers[
        "encoder.layer.1.attention.self.value"].cols)
    assert back.config.extra["imported_from"] == "test"
    dst = _model(init_std=0.0)
    for name in ("seeded", "imp"):
        dst.load_adapter(tmp_path / name)
        torch.testing.assert_close(_out(dst, name), _out(fm, name), rtol=0, atol=0)
    a, b = dst.frod_layers()["encoder.layer.0.attention.self.query"].pattern("seeded")
    c, d_ = dst.frod_layers()["encoder.layer.0.attention.self.query"].pattern("default")
    assert not (torch.equal(a, c) and torch.equal(b, d_))  # seed != 0: own default pattern


def test_subset_adapter_loads_on_larger_decomposition(tmp_path):
    small = _model(targets=["query"])
    small.save_adapter(tmp_path / "q")
    big = _model(init_std=0.0)
    assert big.fingerprint != small.fingerprint
    big.load_adapter(tmp_path / "q", "q")  # category fingerprints match
    assert set(big.adapter_configs["q"].target_modules) == {"query"}
    assert all(("q" in m.frod_dl) == (".query" in n) for n, m in big.frod_layers().items())
    torch.testing.assert_close(_out(big, "q"), _out(small, "default"), rtol=0, atol=0)


def _corrupt(tmp_path, how):
    src = _model(seed=0)
    d = tmp_path / how
    src.save_adapter(d)
    w, c = d / WEIGHTS_NAME, d / CONFIG_NAME
    if how == "truncated":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        w.write_bytes(b"\x00" * 64)
    elif how == "bad_json":
        c.write_text("{not json")
    elif how == "version":
        raw = json.loads(c.read_text())
        raw["format_version"] = 99
        c.write_text(json.dumps(raw))
    elif how == "missing_field":
        raw = json.loads(c.read_text())
        del raw["decomposition_fingerprint"]
        c.write_text(json.dumps(raw))
    elif how == "no_weights":
        w.unlink()
    else:
        t = load_file(str(w))
        key = sorted(t)[0]
        if how == "missing_tensor":
            del t[key]
        elif how == "shape":
            s_key = next(k for k in sorted(t) if k.endswith(".s"))
            t[s_key] = torch.zeros(t[s_key].shape[0] + 1)
        elif how == "extra_tensor":
            t["encoder.layer.0.attention.self.key.dl"] = torch.zeros(24)
        elif how == "nan":
            t[key] = t[key].clone()
            t[key][0] = float("nan")
        elif how == "diagonal_pattern":
            s_key = next(k for k in sorted(t) if k.endswith(".s"))
            k = t[s_key].shape[0]
            layer = s_key[:-2]
            t[layer + ".rows"] = torch.arange(k, dtype=torch.int32) % 24
            t[layer + ".cols"] = torch.arange(k, dtype=torch.int32) % 24
        elif how == "half_pattern":
            layer = next(k for k in sorted(t) if k.endswith(".s"))[:-2]
            t[layer + ".rows"] = torch.zeros(t[layer + ".s"].shape[0], dtype=torch.int32)
        save_file(t, str(w))
    return d


BAD = ["truncated", "garbage", "bad_json", "version", "missing_field", "no_weights",
       "missing_tensor", "shape", "extra_tensor", "nan", "diagonal_pattern", "half_pattern"]


@pytest.mark.parametrize("how", BAD)
def test_bad_files_raise_and_leave_model_unchanged(tmp_path, how):
    d = _corrupt(tmp_path, how)
    fm = _model(seed=0, init_std=0.1)
    fm.add_adapter("keep", FrodConfig(TARGETS, sparse_rate=0.05, init_std=0.1, progress=False))
    snap = _snapshot(fm)
    out = _out(fm, "keep")
    with pytest.raises(AdapterError) as err:
        fm.load_adapter(d, "new")
    assert str(d) in str(err.value)
    _assert_same(fm, snap)
    torch.testing.assert_close(_out(fm, "keep"), out, rtol=0, atol=0)


def test_other_base_raises_and_leaves_model_unchanged(tmp_path):
    _model(seed=0).save_adapter(tmp_path / "a")
    other = _model(seed=1)
    snap = _snapshot(other)
    with pytest.raises(AdapterError, match="trained for a different base model of the same architecture"):
        other.load_adapter(tmp_path / "a", "x")
    _assert_same(other, snap)
    # a file that names a layer of another category / shape also fails before any change
    f = read_adapter(tmp_path / "a")
    key = next(iter(f.config.categories))
    f.config.categories[key]["out"] = 99
    same = _model(seed=0)
    snap = _snapshot(same)
    with pytest.raises(AdapterError, match="shape"):
        same.add_adapter_from_file(f, "y")
    _assert_same(same, snap)


def test_name_collision_and_bad_name(tmp_path):
    fm = _model()
    fm.save_adapter(tmp_path / "a")
    snap = _snapshot(fm)
    with pytest.raises(ValueError, match="already exists"):
        fm.load_adapter(tmp_path / "a")
    with pytest.raises(AdapterError, match="adapter name"):
        fm.load_adapter(tmp_path / "a", "bad.name")
    _assert_same(fm, snap)
    with pytest.raises(AdapterError, match="not a directory"):
        read_adapter(tmp_path / "missing")


def test_write_adapter_validates_and_check_against(tmp_path):
    fm = _model()
    f = fm.adapter_file("default")
    check_against(f, fm.decomposition)
    layer = next(iter(f.layers))
    f.layers[layer] = LayerDelta(f.layers[layer].dl, torch.zeros(3))
    with pytest.raises(AdapterError, match="shape"):
        write_adapter(f, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    f2 = fm.adapter_file("default")
    f2.config.alpha = 0.5
    with pytest.raises(AdapterError, match="alpha"):
        check_against(f2, fm.decomposition)
