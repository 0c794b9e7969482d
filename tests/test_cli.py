"""The ``frod-rt`` command line: every command's --help, bad input (exit 2, one line, no
traceback), decompose / inspect / generate against the library, and a train -> serve round
trip through the real ``frod-rt serve`` process."""
from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest
from serve_process import child_env, serve_process

from frod_rt.cli import main
from frod_rt.engine import Engine
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer
from frod_rt.method import read_adapter

COMMANDS = ["decompose", "train", "inspect", "generate", "serve", "import", "export"]


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_toy")
    tok = toy_tokenizer()
    model = toy_llama(vocab_size=len(tok), hidden=32, intermediate=48, std=0.1, seed=5)
    base = save_toy_model(model, tok, root / "base")
    cache = root / "cache"
    adapter = root / "rand"
    random_adapter(model, adapter, ["q_proj", "v_proj"], seed=3, cache_dir=cache)
    data = root / "data.jsonl"
    rows = [{"prompt": "the quick brown fox", "completion": " jumps over the lazy dog ."},
            {"prompt": "to be or not", "completion": " to be , that is the question ."},
            {"text": "once upon a time there was a small model ."}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"root": root, "base": base, "cache": cache, "adapter": adapter, "data": data}


def _bad(capsys, argv, *words):
    """``argv`` exits with 2 and one line naming the problem (after any progress bars)."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"frod-rt {argv[0]}: error: "), err
    assert sum("error:" in ln for ln in err.splitlines()) == 1
    for w in words:
        assert w in last, (w, err)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as ei:
        main([cmd, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: frod-rt {cmd}")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "decompose" in capsys.readouterr().err


def test_bad_input_exit_2(toy, capsys, tmp_path):
    base, cache = str(toy["base"]), str(toy["cache"])
    _bad(capsys, ["inspect", str(tmp_path / "nope")], "not found")
    _bad(capsys, ["inspect", str(toy["base"])], "frod_adapter.json")
    _bad(capsys, ["decompose", str(tmp_path / "nope"), "--targets", "q_proj"], "not found")
    _bad(capsys, ["decompose", base, "--targets", "nothing_like_this", "--cache-dir", cache],
         "nothing_like_this")
    _bad(capsys, ["train", base, "--data", str(tmp_path / "none.jsonl"),
                  "--out", str(tmp_path / "o")], "--data")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    _bad(capsys, ["train", base, "--data", str(bad), "--out", str(tmp_path / "o")],
         "bad.jsonl:2")
    bad.write_text('{"text": "a b"\n')
    _bad(capsys, ["train", base, "--data", str(bad), "--out", str(tmp_path / "o")],
         "bad.jsonl:1", "JSON")
    _bad(capsys, ["train", base, "--data", str(toy["data"]), "--out", str(tmp_path / "o"),
                  "--steps", "0"], "--steps")
    _bad(capsys, ["train", base, "--data", str(toy["data"]), "--out", str(tmp_path / "o"),
                  "--sparse-rate", "2"], "--sparse-rate")
    _bad(capsys, ["generate", base, "hi", "--adapter", f"x={tmp_path / 'missing'}"],
         "missing")
    _bad(capsys, ["generate", base, "hi", "--temperature", "-1", "--cache-dir", cache],
         "temperature")
    _bad(capsys, ["serve", "--base", str(tmp_path / "nope")], "not found")
    _bad(capsys, ["serve", "--base", base, "--port", "0"], "--port")
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        _bad(capsys, ["serve", "--base", base, "--port", str(busy.getsockname()[1])],
             "cannot listen")
    _bad(capsys, ["serve", "--base", base, "--adapter", f"a={toy['adapter']}",
                  "--adapter", f"a={toy['adapter']}"], "twice")
    assert not (tmp_path / "o").exists()


def test_console_entry_point_bad_input(tmp_path):
    """The real process: exit code 2, one line on stderr, no traceback."""
    p = subprocess.run([sys.executable, "-m", "frod_rt.cli", "inspect", str(tmp_path / "x")],
                       capture_output=True, text=True, env=child_env(), timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"frod-rt inspect: error: adapter directory not found: {tmp_path / 'x'}"]


def test_decompose_json(toy, capsys):
    rc = main(["decompose", str(toy["base"]), "--targets", "q_proj", "v_proj",
               "--cache-dir", str(toy["cache"]), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["fingerprint"]) == 64 and out["decomposition_fingerprint"] == out["fingerprint"]
    assert len(out["base_fingerprint"]) == 64 and out["base_fingerprint"] != out["fingerprint"]
    assert out["basis"] == "frod_rt" and out["seconds"] >= 0
    assert out["layers"] == 4 and len(out["categories"]) == 2
    for c in out["categories"]:
        assert c["max_rel_error"] < 1e-5          # float32 storage of an exact factorisation


def test_inspect_matches_file(toy, capsys):
    assert main(["inspect", str(toy["adapter"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    a = read_adapter(toy["adapter"])
    assert d["base_fingerprint"] == a.config.base_fingerprint
    assert d["layers"] == len(a.layers) == 4
    assert d["trainable_values"] == sum(x.dl.numel() + x.s.numel() for x in a.layers.values())
    assert main(["inspect", str(toy["adapter"])]) == 0
    text = capsys.readouterr().out
    assert a.config.base_fingerprint in text and "values" in text


def test_generate_matches_engine(toy, capsys):
    prompt = "the quick brown fox"
    rc = main(["generate", str(toy["base"]), prompt, "--adapter", f"r={toy['adapter']}",
               "--max-tokens", "6", "--ignore-eos", "--cache-dir", str(toy["cache"])])
    assert rc == 0
    out = capsys.readouterr().out
    eng = Engine.load(toy["base"], adapters={"r": toy["adapter"]}, cache_dir=toy["cache"])
    ref = eng.generate(prompt, adapter="r", max_tokens=6, ignore_eos=True)[0].text
    base = eng.generate(prompt, max_tokens=6, ignore_eos=True)[0].text
    assert out == ref + "\n"
    assert ref != base


def test_bench_delegates_or_explains(tmp_path, monkeypatch, capsys):
    from frod_rt.cli import bench
    monkeypatch.setattr(bench, "find_checkout", lambda: None)
    assert main(["bench", "--quick"]) == 2
    assert "no bench package" in capsys.readouterr().err
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__main__.py").write_text(
        "import sys, pathlib\npathlib.Path('args.json').write_text(repr(sys.argv[1:]))\n"
        "sys.exit(3)\n")
    monkeypatch.setattr(bench, "find_checkout", lambda: tmp_path)
    assert main(["bench", "--quick", "-n", "2"]) == 3
    assert (tmp_path / "args.json").read_text() == "['--quick', '-n', '2']"


def test_train_then_serve_round_trip(toy, capsys, tmp_path):
    """An adapter trained by ``frod-rt train`` is served by ``frod-rt serve`` and changes
    the outputs relative to the base."""
    out = tmp_path / "tuned"
    rc = main(["train", str(toy["base"]), "--data", str(toy["data"]), "--out", str(out),
               "--steps", "6", "--batch-size", "3", "--lr-s", "2e-2", "--lr-dl", "2e-2",
               "--sparse-rate", "0.05", "--targets", "q_proj", "v_proj", "up_proj",
               "--cache-dir", str(toy["cache"])])
    assert rc == 0, capsys.readouterr().err
    log = json.loads((out / "training.json").read_text())
    assert len(log["loss"]) == 6 and log["loss"][-1] < log["loss"][0]
    a = read_adapter(out)
    assert a.name == "tuned" and len(a.layers) == 6
    # retraining into the same directory needs --overwrite
    _bad(capsys, ["train", str(toy["base"]), "--data", str(toy["data"]), "--out", str(out)],
         "--overwrite")

    args = ["--base", str(toy["base"]), "--adapter", f"tuned={out}",
            "--cache-dir", str(toy["cache"]), "--log-level", "warning"]
    with serve_process(args) as (proc, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "tuned"]
        texts = {}
        for model in ("base", "tuned"):
            r = client.completions.create(model=model, prompt="the quick brown fox",
                                          max_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
            texts[model] = r.choices[0].text
        assert texts["tuned"] != texts["base"]
        eng = Engine.load(toy["base"], adapters={"tuned": out}, cache_dir=toy["cache"])
        ref = eng.generate("the quick brown fox", adapter="tuned", max_tokens=8,
                           ignore_eos=True)[0]
        assert texts["tuned"] == ref.text
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-2000:]                  # SIGTERM = graceful shutdown, exit 0
    assert "Traceback" not in err
    assert "frod-rt serve: stopped" in proc.stdout.read()


def test_train_defaults_are_the_papers_for_causal_lms():
    """``frod-rt train`` (causal LMs only) defaults to the paper's LLaMA settings: LR 1e-5 for
    s, 1e-4 for dl, sparse rate 0.02."""
    from frod_rt.cli import build_parser
    args = build_parser().parse_args(["train", "base", "--data", "d.jsonl", "--out", "o"])
    assert (args.lr_s, args.lr_dl, args.sparse_rate) == (1e-5, 1e-4, 0.02)
