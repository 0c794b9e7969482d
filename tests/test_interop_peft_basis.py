"""The PEFT-compatible basis (issue 18): adapters trained in frod_rt on
``decompose(..., basis="peft")`` export to PEFT exactly (PeftModel.from_pretrained outputs
equal to frod_rt's within float32 round-off, checked with PEFT itself); ``frod-rt export`` /
``frod-rt import``; ``Engine.load`` accepts a PEFT FRoD directory (import on load)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft import PeftModel  # noqa: E402

from frod_rt import FrodConfig, get_frod_model, read_adapter  # noqa: E402
from frod_rt.cli import main  # noqa: E402
from frod_rt.interop import export_peft  # noqa: E402
from frod_rt.method.decompose import decompose  # noqa: E402

from frod_models import trained_peft  # noqa: E402

BERT_TARGETS = ["query", "value", "intermediate.dense", "output.dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))


def _bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=72, vocab_size=97,
                                max_position_embeddings=32)).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=88,
                                        vocab_size=97, max_position_embeddings=64)).eval()


MODELS = {"bert": (_bert, BERT_TARGETS), "llama": (_llama, LLAMA_TARGETS)}
IDS = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(7))


def _out(model):
    with torch.no_grad():
        o = model(input_ids=IDS)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _train(fm, steps=4):
    """A few real AdamW steps towards a random target (frod_rt's training path)."""
    opt = torch.optim.AdamW(fm.optimizer_param_groups(lr_s=5e-2, lr_dl=5e-2))
    target = torch.randn_like(_out(fm), generator=torch.Generator().manual_seed(3))
    fm.train()
    for _ in range(steps):
        o = fm(input_ids=IDS)
        out = o.logits if hasattr(o, "logits") else o.last_hidden_state
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return fm.eval()


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_peft_basis_adapter_exports_exactly(kind, tmp_path):
    make, targets = MODELS[kind]
    base = make()
    dec = decompose(base, targets, basis="peft", progress=False)
    assert dec.basis == "peft"
    fm = _train(get_frod_model(copy.deepcopy(base), FrodConfig(targets, sparse_rate=0.05,
                                                               progress=False),
                               decomposition=dec))
    ours, plain = _out(fm), _out(base)
    assert float((ours - plain).abs().max()) > 1e-2          # training changed the model
    err = export_peft(fm.adapter_file("default"), base, tmp_path / "exp")   # finds the basis
    assert err < 1e-6
    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "exp").eval()
    torch.testing.assert_close(_out(pm), ours, rtol=1e-4, atol=1e-5)


def test_cli_export_and_import_round_trip(tmp_path, capsys):
    base = _llama()
    base.save_pretrained(tmp_path / "base")
    dec = decompose(base, LLAMA_TARGETS, basis="peft", progress=False)
    fm = _train(get_frod_model(copy.deepcopy(base), FrodConfig(LLAMA_TARGETS, sparse_rate=0.05,
                                                               progress=False),
                               decomposition=dec))
    fm.save_adapter(tmp_path / "ours")
    assert main(["export", str(tmp_path / "ours"), "--base", str(tmp_path / "base"),
                 "--out", str(tmp_path / "peft")]) == 0
    import re
    err = float(re.search(r"error of the update (\S+)", capsys.readouterr().out).group(1))
    assert err < 1e-6                                   # float32 round-off of the stored values
    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    torch.testing.assert_close(_out(pm), _out(fm), rtol=1e-4, atol=1e-5)
    # and back: a PEFT directory into a frod_rt adapter, kept in PEFT's basis
    assert main(["import", str(tmp_path / "peft"), "--base", str(tmp_path / "base"),
                 "--out", str(tmp_path / "back"), "--basis", "file"]) == 0
    assert "(file basis" in capsys.readouterr().out
    from frod_rt.method.basis import Decomposition
    back = read_adapter(tmp_path / "back")
    d2 = Decomposition.load(tmp_path / "back" / "decomposition")
    fm2 = get_frod_model(copy.deepcopy(base), FrodConfig(sorted(back.layers), progress=False),
                         adapter_name="zero", decomposition=d2)
    fm2.add_adapter_from_file(back, "back")
    fm2.set_adapter("back")
    torch.testing.assert_close(_out(fm2.eval()), _out(pm), rtol=1e-4, atol=1e-5)
    # bad input: one error line, exit 2
    assert main(["export", str(tmp_path / "ours"), "--base", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "base model directory not found" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "ours"), "--base", str(tmp_path / "base"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_engine_loads_a_peft_directory(tmp_path):
    """A PEFT-trained FRoD adapter directory given to Engine.load is imported on load (frod_rt
    basis) and generates PEFT's greedy tokens."""
    from frod_rt.engine import Engine
    from frod_rt.engine.toy import toy_llama
    base = toy_llama(vocab_size=97, hidden=32, intermediate=88, std=0.1, seed=1,
                     eos_token_id=None)
    pm = trained_peft(base, ["q_proj"], seed=5, lam_noise=2.0, s_scale=1.0)
    pm.eval().save_pretrained(tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "FROD"
    eng = Engine.load(copy.deepcopy(base), adapters={"p": tmp_path / "peft"},
                      cache_dir=tmp_path / "c")
    prompts = [[5, 9, 13, 2], [40, 41, 7], [88, 3, 60, 61, 12]]
    changed = 0
    for p in prompts:
        with torch.no_grad():
            want = pm.generate(input_ids=torch.tensor([p]), max_new_tokens=6, do_sample=False,
                               min_new_tokens=6)[0, len(p):].tolist()
            plain = base.generate(input_ids=torch.tensor([p]), max_new_tokens=6, do_sample=False,
                                  min_new_tokens=6)[0, len(p):].tolist()
        got = eng.generate(p, adapter="p", max_tokens=6, ignore_eos=True)[0].token_ids
        assert got == want
        changed += want != plain
    assert changed, "the adapter never changed the greedy tokens: the test would prove nothing"
    eng.close()


def test_cli_train_on_peft_basis_then_export(tmp_path, capsys):
    """``frod-rt train --basis peft`` then ``frod-rt export``: PEFT loads the adapter and its
    logits equal frod_rt's."""
    import re

    from frod_rt.engine.toy import save_toy_model, toy_llama, toy_tokenizer
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=2)
    base = save_toy_model(model, tok, tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in (
        "the quick brown fox jumps over the lazy dog", "once upon a time there was a fox",
        "a journey of a thousand miles begins with one step")) + "\n")
    assert main(["train", str(base), "--data", str(data), "--out", str(tmp_path / "ad"),
                 "--steps", "3", "--batch-size", "2", "--lr-s", "2e-2", "--lr-dl", "2e-2",
                 "--sparse-rate", "0.05", "--targets", "q_proj", "o_proj", "up_proj",
                 "--basis", "peft", "--cache-dir", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ad"), "--base", str(base), "--out",
                 str(tmp_path / "peft"), "--cache-dir", str(tmp_path / "c")]) == 0
    err = float(re.search(r"error of the update (\S+)", capsys.readouterr().out).group(1))
    assert err < 1e-6
    pm = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "peft").eval()
    fm = get_frod_model(copy.deepcopy(model), FrodConfig(["q_proj", "o_proj", "up_proj"],
                                                         progress=False,
                                                         cache_dir=tmp_path / "c"),
                        decomposition=decompose(model, ["q_proj", "o_proj", "up_proj"],
                                                basis="peft", cache_dir=tmp_path / "c",
                                                progress=False))
    fm.load_adapter(tmp_path / "ad", "trained")
    with fm.adapter_routing(["trained"] * IDS.shape[0]):
        ours = _out(fm.eval())
    assert float((ours - _out(model)).abs().max()) > 1e-3       # training changed the model
    torch.testing.assert_close(_out(pm), ours, rtol=1e-4, atol=1e-5)
