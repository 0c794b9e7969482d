"""The engine serves adapters on several bases of one base model (issue 18): frod_rt's own,
PEFT's (``decompose(basis="peft")``) and an imported file's (PEFT adapters whose basis does not
map onto frod_rt's), each basis group computing its own ``X V`` in the same step; a
PEFT-trained FRoD adapter served by ``frod-rt serve`` gives PEFT's greedy text."""
from __future__ import annotations

import copy

import httpx
import pytest
import torch

peft = pytest.importorskip("peft")

from frod_rt import FrodConfig, get_frod_model  # noqa: E402
from frod_rt.engine import Engine  # noqa: E402
from frod_rt.engine.toy import (load_merged, merged_weights, random_adapter,  # noqa: E402
                                save_toy_model, toy_llama, toy_tokenizer)
from frod_rt.method.decompose import decompose  # noqa: E402

from serve_process import serve_process  # noqa: E402
from frod_models import trained_peft  # noqa: E402

# v_proj (16x32, two layers) stacks to a square: every eigenvalue of T is equal, so PEFT's
# basis is not a signed permutation of frod_rt's and the import keeps PEFT's own basis
PEFT_TARGETS = ["q_proj", "v_proj", "up_proj"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_basis")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=4,
                      eos_token_id=None)
    base = save_toy_model(model, tok, root / "base")
    pm = trained_peft(model, PEFT_TARGETS, seed=5, lam_noise=1.0, s_scale=0.5)
    pm.eval().save_pretrained(root / "peft")
    native = random_adapter(model, root / "native", ["q_proj", "v_proj"], scale=0.3,
                            cache_dir=root / "cache")
    # an adapter trained in frod_rt on PEFT's basis
    dec = decompose(model, ["q_proj", "o_proj"], basis="peft", cache_dir=root / "cache",
                    progress=False)
    fm = get_frod_model(copy.deepcopy(model), FrodConfig(["q_proj", "o_proj"], init_std=0.05,
                                                         progress=False),
                        decomposition=dec)
    fm.save_adapter(root / "peft_basis")
    return {"root": root, "tok": tok, "model": model, "base": base, "pm": pm, "native": native,
            "fm": fm.eval()}


PROMPTS = ["the quick brown fox", "once upon a time there", "a journey of"]


def _greedy(model, tok, prompt, n=6, **kw):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             **kw)
    return out[0, ids.shape[1]:].tolist()


def test_one_batch_over_three_bases(setup):
    s = setup
    eng = Engine.load(s["base"], adapters={"peft": s["root"] / "peft",
                                           "native": s["root"] / "native",
                                           "pbasis": s["root"] / "peft_basis"},
                      cache_dir=s["root"] / "cache")
    tok = s["tok"]
    merged = copy.deepcopy(s["model"])
    load_merged(merged, merged_weights(merged, s["native"], cache_dir=s["root"] / "cache"))
    want = {"peft": [_greedy(s["pm"], tok, p) for p in PROMPTS],
            "native": [_greedy(merged, tok, p) for p in PROMPTS],
            "pbasis": [], None: [_greedy(s["model"], tok, p) for p in PROMPTS]}
    with s["fm"].adapter_routing(["default"]):
        want["pbasis"] = [_greedy(s["fm"], tok, p) for p in PROMPTS]
    assert want["peft"] != want[None] and want["pbasis"] != want[None]
    # every adapter in one step: 4 groups of rows (base, frod_rt basis, PEFT file basis,
    # PEFT-computed basis)
    names = ["peft", "native", "pbasis", None] * len(PROMPTS)
    prompts = [p for p in PROMPTS for _ in range(4)]
    res = eng.generate(prompts, adapters=names, max_tokens=6, ignore_eos=True)
    for i, r in enumerate(res):
        assert r.token_ids == want[names[i]][i // 4], (names[i], prompts[i])
    # the PEFT import kept PEFT's own basis (v_proj does not map onto frod_rt's)
    insts = {n: eng.pool.entries[n] for n in ("peft", "native", "pbasis")}
    fps = {n: e.decomposition.fingerprint for n, e in insts.items()}
    assert len(set(fps.values())) == 3
    eng.close()


def test_converted_copies_are_deleted_with_their_adapter(setup):
    """A PEFT adapter is converted into a copy under the engine's work directory; removing the
    adapter (or a refused add) deletes that copy, never the user's directory, so hot-loading
    adapters for a long time does not fill the disk."""
    s = setup
    eng = Engine.load(s["base"], cache_dir=s["root"] / "cache")
    try:
        copies = lambda: sorted(eng._work_dir.glob("adapter-*")) if eng._work_dir else []  # noqa: E731
        for i in range(3):
            eng.add_adapter("p", s["root"] / "peft")
            assert len(copies()) == 1
            first = eng.generate(PROMPTS[:1], adapter="p", max_tokens=3, ignore_eos=True)
            with pytest.raises(ValueError, match="already loaded"):
                eng.add_adapter("p", s["root"] / "peft")          # refused: its copy goes too
            assert len(copies()) == 1
            eng.remove_adapter("p")
            assert copies() == []
        assert (s["root"] / "peft" / "adapter_config.json").is_file()   # the user's files stay
        # refused after conversion: the message names the user's directory, never the
        # engine's converted copy (a path under the server's temp directory)
        from frod_rt.method.adapter_io import AdapterError
        real_add = eng.pool.add

        def refusing_add(name, path, file=None):
            raise AdapterError(f"adapter {name!r} ({path}) refused: its layers are odd ({path})")
        eng.pool.add = refusing_add
        with pytest.raises(AdapterError) as ei:
            eng.add_adapter("h", s["root"] / "peft")
        eng.pool.add = real_add
        assert str(s["root"] / "peft") in str(ei.value)
        assert "frod_rt-adapters-" not in str(ei.value)
        assert copies() == []
        eng.add_adapter("native", s["root"] / "native")        # a frod_rt adapter: no copy
        eng.remove_adapter("native")
        assert (s["root"] / "native").is_dir() and copies() == []
        assert first[0].token_ids
    finally:
        eng.close()


@pytest.mark.slow
def test_frod_rt_serve_gives_peft_greedy_text(setup):
    """``frod-rt serve --adapter peft=<PEFT FRoD dir>``: the served greedy completion equals
    PEFT's own ``generate``."""
    s = setup
    want = {p: s["tok"].decode(_greedy(s["pm"], s["tok"], p, 8), skip_special_tokens=True)
            for p in PROMPTS}
    args = ["--base", str(s["base"]), "--adapter", f"peft={s['root'] / 'peft'}",
            "--cache-dir", str(s["root"] / "cache"), "--log-level", "warning"]
    with serve_process(args) as (proc, url):
        for p in PROMPTS:
            r = httpx.post(url + "/v1/completions", json={
                "model": "peft", "prompt": p, "max_tokens": 8, "temperature": 0,
                "ignore_eos": True}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == want[p], p
    assert proc.returncode == 0
