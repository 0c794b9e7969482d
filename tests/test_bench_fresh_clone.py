"""bench/ runs as documented from a fresh clone: the README's command, and ``frod-rt bench``
from a subdirectory, with frod_rt installed and the checkout's ``python/`` holding no
compiled core (issue 18: the documented ``PYTHONPATH=python`` hid the installed package)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("matplotlib")


def _installed_frod_rt_works(env) -> bool:
    proc = subprocess.run([sys.executable, "-c", "import frod_rt._core"], cwd="/", env=env,
                          capture_output=True)
    return proc.returncode == 0


@pytest.fixture()
def fresh_clone(tmp_path):
    """A copy of the checkout's files as a clone has them: no compiled core, no results."""
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    clone = tmp_path / "clone"
    for rel in tracked:
        if not rel or not (rel.startswith(("bench/", "python/")) or rel == "README.md"):
            continue
        if rel.startswith("bench/results/") or not (ROOT / rel).is_file():
            continue
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel)
    assert not list((clone / "python" / "frod_rt").glob("_C*.so"))
    (clone / "docs").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if not _installed_frod_rt_works(env):
        pytest.skip("frod_rt is not installed in this interpreter (pip install .)")
    bindir = Path(sys.executable).parent      # `python` = this interpreter, as in an active venv
    if not (bindir / "python").exists():
        pytest.skip(f"no `python` next to {sys.executable}")
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return clone, env


def _documented_layer_command() -> str:
    text = (ROOT / "bench" / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    for line in block.splitlines():
        cmd = line.split("#")[0].strip()
        if re.search(r"python -m bench layer\b", cmd):
            return cmd
    raise AssertionError("bench/README.md documents no `python -m bench layer` command")


@pytest.mark.slow
def test_readme_bench_command_runs_from_a_fresh_clone(fresh_clone, tmp_path):
    clone, env = fresh_clone
    cmd = _documented_layer_command().replace("--quick", "--tiny")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "-c", f"{cmd} --out {out}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"`{cmd}` failed:\n{proc.stderr[-3000:]}"
    assert len(list(out.glob("layer-cpu-*.json"))) == 1


@pytest.mark.slow
def test_frod_rt_bench_runs_from_a_subdirectory_of_a_fresh_clone(fresh_clone, tmp_path,
                                                                 monkeypatch, capfd):
    from frod_rt.cli import main
    clone, env = fresh_clone
    monkeypatch.chdir(clone / "docs")
    for k in list(os.environ):
        if k not in env:
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    rc = main(["bench", "layer", "--tiny", "--out", str(out)])
    err = capfd.readouterr().err
    assert rc == 0, err[-3000:]
    assert len(list(out.glob("layer-cpu-*.json"))) == 1


def test_bench_finds_the_checkout_above_the_current_directory(tmp_path):
    from frod_rt.cli.bench import find_checkout
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__main__.py").write_text("")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_checkout(tmp_path / "a" / "b") == tmp_path.resolve()
