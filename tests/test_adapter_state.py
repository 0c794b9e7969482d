"""Adapter state with one owner (issue 12) and requests bound to adapter instances (issue 15):

* an adapter with a non-zero pattern seed keeps its pattern through save, load, the engine and
  PEFT export (checked on PEFT's own output);
* the adapted layers own their slot tables: a batch whose slots share one pattern gets that
  pattern whatever other slots hold; device patterns are keyed by content and released;
* remove + add under one name never changes what an earlier request computes;
* reloading imported adapters many times gives the right output and no growth of cached
  patterns.
"""
from __future__ import annotations

import copy

import pytest
import torch

from engine_helpers import hf_greedy, random_prompts
from frod_rt import Engine, FrodConfig, get_frod_model
from frod_rt.engine.toy import random_adapter, toy_llama
from frod_rt.method.patterns import layer_pattern

TARGETS = ["q_proj", "v_proj", "up_proj"]
EXPORT_TARGETS = ["q_proj", "o_proj", "up_proj"]    # PEFT's float32 bases match ours here
Q0 = "model.layers.0.self_attn.q_proj"


def _fill_values(fm, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in fm.frod_layers().values():
            m.frod_dl[name].copy_(0.2 * m.frod_l * torch.randn(m.frod_l.shape, generator=g))
            s = m.frod_s[name]
            s.copy_(0.1 * float(m.frod_l.mean()) * torch.randn(s.shape, generator=g))


def test_seeded_adapter_save_load_serve_export(tmp_path, monkeypatch):
    """seed != 0: the adapter's own patterns survive every path (PEFT export used to draw the
    seed-0 pattern, so PEFT computed another update)."""
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    from frod_rt.interop import export_peft
    base = toy_llama(vocab_size=97, hidden=32, intermediate=40, eos_token_id=None, std=0.1)
    fm = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=EXPORT_TARGETS,
                                                        sparse_rate=0.05, seed=5, progress=False,
                                                        category_mode="per_role"))
    _fill_values(fm, "default", 3)
    fm.eval()
    d = fm.decomposition
    m = fm.frod_layers()[Q0]
    k = m.frod_s["default"].shape[0]
    seeded, plain = layer_pattern(d, m.category, 5, k), layer_pattern(d, m.category, 0, k)
    assert not torch.equal(seeded.rows * 1000 + seeded.cols, plain.rows * 1000 + plain.cols)
    assert torch.equal(m.pattern("default")[0].cpu(), seeded.rows)

    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = fm(input_ids=ids).logits
        effect = float((ours - base(input_ids=ids).logits).abs().max())
    assert effect > 1e-2

    # save + load into another model
    fm.save_adapter(tmp_path / "ad5")
    fm2 = get_frod_model(copy.deepcopy(base), FrodConfig(target_modules=EXPORT_TARGETS,
                                                         progress=False,
                                                         category_mode="per_role"),
                         adapter_name="zero")
    assert fm2.load_adapter(tmp_path / "ad5") == "default"
    fm2.set_adapter("default")
    with torch.no_grad():
        torch.testing.assert_close(fm2.eval()(input_ids=ids).logits, ours)

    # serve with the engine: greedy tokens equal the FrodModel's own generate
    eng = Engine.load(copy.deepcopy(base), adapters={"ad5": tmp_path / "ad5"})
    prompts = random_prompts(3, 97, torch.Generator().manual_seed(2))
    got = eng.generate(prompts, adapter="ad5", max_tokens=5, ignore_eos=True)
    for p, r in zip(prompts, got):
        assert r.token_ids == hf_greedy(fm, p, 5)

    # export to PEFT: PEFT's own model computes our output
    err = export_peft(fm.adapter_file("default"), base, tmp_path / "peft", d, tol=0.1)
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = pm(input_ids=ids).logits
    assert float((theirs - ours).abs().max()) <= 5 * err * effect + 1e-4


def test_slot_tables_per_slot_patterns_without_padding(tmp_path, gen):
    """A denser adapter (longer k) or an imported pattern in one slot never pads the other
    slots: each slot keeps its own planned pattern and uses s[a, :k_a] of one table; device
    plans are released with their last slot and the table shrinks back."""
    model = toy_llama(vocab_size=89, hidden=32, intermediate=40, eos_token_id=None, std=0.1)
    kinds = {"a": {}, "b": {}, "dense": {"sparse_rate": 0.2},
             "imported": {"explicit_pattern": True}}
    for i, (n, kw) in enumerate(kinds.items()):
        random_adapter(model, tmp_path / n, TARGETS, seed=i, cache_dir=tmp_path, **kw)
    eng = Engine.load(model, adapters={n: tmp_path / n for n in kinds}, cache_dir=tmp_path)
    eng.generate(random_prompts(4, 89, gen), adapters=list(kinds), max_tokens=2)
    slot = {n: eng.pool.entries[n].slot for n in kinds}
    assert all(s >= 0 for s in slot.values())
    tables = eng.pool.layers[Q0].slots
    k_std = tables.patterns.k(slot["a"])
    k_dense = tables.patterns.k(slot["dense"])
    assert k_dense > k_std > 0
    assert tables.patterns.plan(slot["a"]) is tables.patterns.plan(slot["b"])
    dl, s, patterns = tables.rotation_args()
    assert s.shape == (tables.A, k_dense) and patterns is tables.patterns
    assert len(patterns.table.plans) == 3          # a/b share one; dense; imported
    # per layer: one pattern for a/b, one for dense, one for imported
    n_layers = len(eng.pool.layers)
    assert len(eng.pool.patterns) <= 3 * n_layers
    before = len(eng.pool.patterns)
    eng.remove_adapter("dense")
    eng.remove_adapter("imported")
    assert tables.s.shape[1] == k_std            # the table shrank to the largest k in use
    assert len(eng.pool.patterns) < before
    eng.remove_adapter("a")
    eng.remove_adapter("b")
    assert len(eng.pool.patterns) == 0 and tables.s.shape[1] == 0
    assert eng.stats()["adapter_patterns_cached"] == 0


def _two_versions(tmp_path, **kw):
    model = toy_llama(vocab_size=89, hidden=32, intermediate=40, eos_token_id=None, std=0.1,
                      dtype=torch.float64)
    random_adapter(model, tmp_path / "v1", TARGETS, seed=1, scale=0.5, cache_dir=tmp_path, **kw)
    random_adapter(model, tmp_path / "v2", TARGETS, seed=2, scale=0.5, cache_dir=tmp_path, **kw)
    return model


def _alone(model, tmp_path, version, prompt, n):
    eng = Engine.load(model, adapters={"ad": tmp_path / version}, cache_dir=tmp_path)
    return eng.generate([prompt], adapter="ad", max_tokens=n, ignore_eos=True)[0].token_ids


def test_swap_keeps_running_and_aborts_queued_requests(tmp_path):
    """remove + add of one name while requests of the old instance run and wait: the running
    one finishes with the old weights, the queued one ends with the documented error (it used
    to be served by the new adapter), new requests get the new weights."""
    model = _two_versions(tmp_path)
    prompt = [5, 6, 7, 8, 9]
    want1, want2 = (_alone(model, tmp_path, v, prompt, 8) for v in ("v1", "v2"))
    assert want1 != want2
    eng = Engine.load(model, adapters={"ad": tmp_path / "v1"}, cache_dir=tmp_path,
                      max_num_seqs=1)
    running = eng.add_request(prompt, "ad", {"max_tokens": 8, "ignore_eos": True})
    queued = eng.add_request(prompt, "ad", {"max_tokens": 8, "ignore_eos": True})
    seqs = {r: eng.get_sequence(r) for r in (running, queued)}
    eng.step()
    eng.step()
    assert seqs[running].num_output >= 1 and seqs[queued].num_computed == 0
    eng.remove_adapter("ad")
    eng.add_adapter("ad", tmp_path / "v2")
    new = eng.add_request(prompt, "ad", {"max_tokens": 8, "ignore_eos": True})
    seqs[new] = eng.get_sequence(new)
    while eng.has_unfinished():
        eng.step()
    assert seqs[running].finish_reason == "length" and seqs[running].output_ids == want1
    assert seqs[queued].finish_reason == "abort" and "removed" in seqs[queued].error
    assert seqs[new].finish_reason == "length" and seqs[new].output_ids == want2
    st = eng.stats()
    assert st["adapters_loaded"] == 1 and st["adapters_on_device"] == 1


def test_preempted_request_recomputes_with_its_own_instance(tmp_path):
    """A request preempted (KV blocks ran out) while its adapter is swapped is recomputed with
    the instance it was submitted with, not the new one under the same name."""
    model = _two_versions(tmp_path)
    prompt_old, prompt_x = [3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]
    want1, want2 = (_alone(model, tmp_path, v, prompt_x, 10) for v in ("v1", "v2"))
    assert want1 != want2
    eng = Engine.load(model, adapters={"ad": tmp_path / "v1"}, cache_dir=tmp_path,
                      block_size=4, kv_blocks=7, max_num_seqs=2)
    older = eng.add_request(prompt_old, None, {"max_tokens": 14, "ignore_eos": True})
    x = eng.add_request(prompt_x, "ad", {"max_tokens": 10, "ignore_eos": True})
    sx, so = eng.get_sequence(x), eng.get_sequence(older)
    for _ in range(40):
        eng.step()
        if sx.preemptions:
            break
    assert sx.preemptions == 1 and sx.num_output >= 1 and not sx.is_finished
    eng.remove_adapter("ad")
    eng.add_adapter("ad", tmp_path / "v2")
    while eng.has_unfinished():
        eng.step()
    assert so.finish_reason == "length"
    assert sx.finish_reason == "length" and sx.output_ids == want1
    assert eng.generate([prompt_x], adapter="ad", max_tokens=10,
                        ignore_eos=True)[0].token_ids == want2
    assert eng.stats()["adapters_on_device"] == 1


def test_reloading_imported_adapters_300_times(tmp_path):
    """Imported adapters (own rows/cols) removed and re-added under one name 300 times: every
    output is its own adapter's, and the cached device patterns do not grow (they were keyed
    by id(AdapterFile): a reused address served another file's pattern)."""
    model = _two_versions(tmp_path, explicit_pattern=True)
    prompt = [5, 6, 7, 8]
    want = {v: _alone(model, tmp_path, v, prompt, 2) for v in ("v1", "v2")}
    assert want["v1"] != want["v2"]
    eng = Engine.load(model, cache_dir=tmp_path, host_adapter_capacity=1)
    sizes = set()
    for i in range(300):
        v = ("v1", "v2")[i % 2]
        eng.add_adapter("imp", tmp_path / v)
        got = eng.generate([prompt], adapter="imp", max_tokens=2, ignore_eos=True)[0]
        assert got.token_ids == want[v], (i, v)
        sizes.add(len(eng.pool.patterns))
        eng.remove_adapter("imp")
    assert len(sizes) == 1 and len(eng.pool.patterns) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_delta_accumulates_duplicate_positions(dtype, gen):
    """``delta_weight`` / ``adapted_weight`` sum repeated (row, col) entries (the kernel's
    CSR does; toy.merged_weights used a non-accumulating ``+=``), against a float64 loop."""
    from frod_rt.method.delta import adapted_weight, delta_weight
    out, n = 7, 5
    U = torch.randn(out, n, generator=gen, dtype=dtype)
    V = torch.randn(n, n, generator=gen, dtype=dtype)
    l = torch.rand(n, generator=gen, dtype=dtype) + 0.5
    dl = torch.randn(n, generator=gen, dtype=dtype)
    rows = torch.tensor([0, 3, 0, 4, 0], dtype=torch.int32)
    cols = torch.tensor([2, 1, 2, 0, 2], dtype=torch.int32)
    s = torch.randn(5, generator=gen, dtype=dtype)
    M = torch.diag(dl.double())
    for r, c, v in zip(rows.tolist(), cols.tolist(), s.double().tolist()):
        M[r, c] += v
    want = U.double() @ M @ V.double().T
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(delta_weight(U, V, dl, s, rows, cols, dtype=torch.float64), want,
                               rtol=tol, atol=tol)
    torch.testing.assert_close(
        adapted_weight(U, l, V, dl, s, rows, cols, dtype=torch.float64),
        want + U.double() @ torch.diag(l.double()) @ V.double().T, rtol=tol, atol=tol)


def test_slot_tables_unit(gen):
    """SlotTables on their own: per-slot k, overwriting a slot with another length, reset, the
    rotation arguments against a dense float64 reference, and the pattern store counts."""
    from frod_rt.engine.models.slots import PatternStore, SlotTables, SlotValues
    from frod_rt.method.delta import adapted_weight
    from frod_rt.method.patterns import own_pattern, positions_to_pairs
    from frod_rt.ops import rotate_slots
    n, out, A = 9, 6, 4
    dt = torch.float64
    V, U = torch.randn(n, n, generator=gen, dtype=dt), torch.randn(out, n, generator=gen, dtype=dt)
    l = torch.rand(n, generator=gen, dtype=dt) + 0.5
    store = PatternStore("cpu")
    st = SlotTables(A, V, U, l, store)

    def pattern(k, seed):
        pos = torch.randperm(n * (n - 1), generator=torch.Generator().manual_seed(seed))[:k]
        return own_pattern(*positions_to_pairs(pos.sort().values, n))

    def values(k, seed, p=None):
        g = torch.Generator().manual_seed(100 + seed)
        return SlotValues(torch.randn(n, generator=g, dtype=dt), torch.randn(k, generator=g, dtype=dt),
                          p or pattern(k, seed))

    shared = pattern(7, 1)
    vals = {0: values(7, 1, shared), 1: values(7, 2, shared), 2: values(20, 3), 3: values(5, 4)}
    for a, v in vals.items():
        st.set_slot(a, v)
    assert len(store) == 3 and st.s.shape == (A, 20)
    assert [st.patterns.k(a) for a in range(A)] == [7, 7, 20, 5]
    st.set_slot(3, values(11, 5))                  # another length into an occupied slot
    vals[3] = values(11, 5)
    assert [st.patterns.k(a) for a in range(A)] == [7, 7, 20, 11] and len(store) == 3
    z = torch.randn(8, n, generator=gen, dtype=dt)
    for slots in ([0, 1], [0, 2, 3], [1, 3]):
        per = 8 // len(slots)
        indptr = torch.tensor([i * per for i in range(len(slots) + 1)], dtype=torch.int32)
        seg = torch.tensor(slots, dtype=torch.int32)
        dl, s, patterns = st.rotation_args()
        h = rotate_slots(z[:per * len(slots)], indptr, seg, dl, s, patterns)
        for i, a in enumerate(slots):
            v = vals[a]
            Wp = adapted_weight(U, l, V, v.dl, v.s, v.pattern.rows, v.pattern.cols,
                                compute=dt)
            zi = z[i * per:(i + 1) * per]
            # y = H U^T must equal x W'^T for x with Z = x V: compare H U^T against Z V^-1 W'^T
            want = zi @ torch.linalg.solve(V, Wp.T)
            torch.testing.assert_close(h[i * per:(i + 1) * per] @ U.T, want, rtol=1e-9, atol=1e-9)
    st.reset_slot(2)
    st.reset_slot(3)
    assert st.s.shape == (A, 7) and len(store) == 1
    st.reset_slot(0)
    st.reset_slot(1)
    assert st.s.shape == (A, 0) and len(store) == 0 and not st.target_slots


def test_add_adapter_reads_the_file_once(tmp_path, monkeypatch):
    """Engine.add_adapter parses an adapter directory once (the fit check and the manager
    share the parsed file), and the adapter serves."""
    import frod_rt.engine.adapter_sources as sources
    import frod_rt.method.adapter_io as io
    model = toy_llama(vocab_size=97, hidden=32, intermediate=40, std=0.1)
    random_adapter(model, tmp_path / "a", ["q_proj", "v_proj"], seed=1, cache_dir=tmp_path)
    eng = Engine.load(model, cache_dir=tmp_path)
    reads = []
    real = io.read_adapter

    def counting(path, name=None):
        reads.append(str(path))
        return real(path, name=name)
    monkeypatch.setattr(io, "read_adapter", counting)
    monkeypatch.setattr(sources, "read_adapter", counting)
    eng.add_adapter("a", tmp_path / "a")
    assert reads == [str(tmp_path / "a")]
    assert eng.generate([[5, 6, 7]], adapter="a", max_tokens=2, ignore_eos=True)[0].token_ids
    eng.close()
