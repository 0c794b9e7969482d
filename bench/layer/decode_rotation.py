"""Decode-shaped rotation microbench (issues 12, 13): per-call time of the rotation for 64
decode rows, n = 1024, 32 adapters, sparse rate 1%, this tree against another checkout's build.

Scenarios (every adapter slot present in the batch; 64 one-row segments, two per slot, except
``two_rows``):
  * ``shared``      all slots share one pattern (frod_rt's own adapters);
  * ``per_adapter`` every slot its own pattern, same k (imported adapters);
  * ``one_denser``  31 slots share a pattern of k, one slot has 2k entries. Main's engine
                    pads every slot to the largest k with a per-adapter (A, kcap) pattern,
                    which turns mixed tiles off for the whole batch ("padding cliff").
  * ``two_rows``    as ``shared``, but 32 segments of 2 rows (one per slot): the engine's
                    decode batch of 64 requests over 32 adapters.

Contenders:
  * ``main_rotate_segments``: main's build (``--main PATH``, default /work/main), run in a
    child process with ``PYTHONPATH=PATH/python``: rotate_segments with the (k,) or (A, k)
    pattern (one_denser: padded (A, 2k)), i.e. per-call planning of the pattern.
  * ``rotate_segments``: this tree's rotate_segments on the same arguments (plans looked up).
  * ``rotate_slots``: this tree's rotate_slots with a SlotPatterns table (one_denser: two
    plans, no padding).

Writes ``<out>/decode_rotation-cpu-<stamp>.json`` (bench/results.py schema) and prints one
line per scenario. Usage::

    PYTHONPATH=python python -m bench.layer.decode_rotation [--threads 1] [--rounds 3] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

T_SEG, N, A, RATE = 64, 1024, 32, 0.01
SCENARIOS = ("shared", "per_adapter", "one_denser", "two_rows")


def _pattern(n: int, k: int, g: torch.Generator):
    flat = torch.randperm(n * (n - 1), generator=g)[:k]
    r, c = flat // (n - 1), flat % (n - 1)
    c = c + (c >= r).long()
    order = torch.argsort(r * n + c)  # frod_rt's own patterns come sorted by row
    return r[order].to(torch.int32), c[order].to(torch.int32)


def problem(scenario: str, seed: int = 0) -> dict:
    """CPU tensors of one scenario: z, seg_indptr, seg_adapter, dl, s_padded, rows, cols
    (the old API's arguments) and per-slot (rows, cols, k) for the planned API."""
    g = torch.Generator().manual_seed(seed)
    k = round(N * N * RATE)
    if scenario == "two_rows":
        lengths, adapters = [2] * (T_SEG // 2), list(range(T_SEG // 2))
    else:
        lengths, adapters = [1] * T_SEG, [i % A for i in range(T_SEG)]
    indptr = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    seg = torch.tensor(adapters, dtype=torch.int32)
    z = torch.randn(T_SEG, N, generator=g)
    dl = torch.randn(A, N, generator=g) * 0.01
    shared = _pattern(N, k, g)
    one_pattern = scenario in ("shared", "two_rows")
    if one_pattern:
        slots = [shared] * A
    elif scenario == "per_adapter":
        slots = [_pattern(N, k, g) for _ in range(A)]
    else:
        slots = [shared] * (A - 1) + [_pattern(N, 2 * k, g)]
    kcap = max(p[0].shape[0] for p in slots)
    s = torch.zeros(A, kcap)
    for a, (r, _) in enumerate(slots):
        s[a, : r.shape[0]] = torch.randn(r.shape[0], generator=g) * 0.01
    if one_pattern:
        rows, cols = shared
    else:  # (A, kcap): pad short slots with extra distinct entries whose s is 0
        rows = torch.empty(A, kcap, dtype=torch.int32)
        cols = torch.empty(A, kcap, dtype=torch.int32)
        for a, (r, c) in enumerate(slots):
            if r.shape[0] < kcap:
                taken = set((r.long() * N + c.long()).tolist())
                pr, pc = _pattern(N, 3 * kcap, g)
                extra = [(x, y) for x, y in zip(pr.tolist(), pc.tolist()) if x * N + y not in taken]
                extra = torch.tensor(extra[: kcap - r.shape[0]], dtype=torch.int32)
                r = torch.cat([r, extra[:, 0]])
                c = torch.cat([c, extra[:, 1]])
            rows[a], cols[a] = r, c
    return dict(z=z, seg_indptr=indptr, seg_adapter=seg, dl=dl, s=s, rows=rows, cols=cols,
                slots=slots)


def _time(fns: dict, repeats: int) -> dict:
    """{name: summarize(...) + inner}, the callables sampled round-robin."""
    from bench.timing import auto_inner, measure_interleaved
    inners = {k: auto_inner(f, target_s=0.05, cap=2000) for k, f in fns.items()}
    st = measure_interleaved(fns, inners, warmup=3, repeats=repeats)
    for k in st:
        st[k]["inner"] = inners[k]
    return st


def run_old_api(repeats: int) -> dict:
    """Times rotate_segments of whichever frod_rt is importable (main's build in the child)."""
    from frod_rt.ops import rotate_segments
    out = {}
    for sc in SCENARIOS:
        p = problem(sc)
        args = (p["z"], p["seg_indptr"], p["seg_adapter"], p["dl"], p["s"], p["rows"], p["cols"])
        h = rotate_segments(*args)
        out[sc] = {"stats": _time({"old": lambda: rotate_segments(*args)}, repeats)["old"],
                   "checksum": float(h.double().abs().sum())}
    return out


def run_new_api(repeats: int) -> dict:
    from frod_rt.ops import (SlotPatterns, register_pattern, rotate_segments, rotate_slots,
                             rotate_slots_reference)
    out = {}
    for sc in SCENARIOS:
        p = problem(sc)
        args = (p["z"], p["seg_indptr"], p["seg_adapter"], p["dl"], p["s"], p["rows"], p["cols"])
        table = SlotPatterns(N, A)
        for a, (r, c) in enumerate(p["slots"]):
            table.set(a, register_pattern(r, c, N))
        sargs = (p["z"], p["seg_indptr"], p["seg_adapter"], p["dl"], p["s"], table)
        h_slots = rotate_slots(*sargs)
        ref = rotate_slots_reference(*(t.double() if t.is_floating_point() else t
                                       for t in sargs[:5]), table)
        err = float((h_slots.double() - ref).abs().max() / ref.abs().max())
        h_seg = rotate_segments(*args)
        st = _time({"rotate_segments": lambda: rotate_segments(*args),
                    "rotate_slots": lambda: rotate_slots(*sargs)}, repeats)
        out[sc] = {
            "rotate_segments": {"stats": st["rotate_segments"],
                                "checksum": float(h_seg.double().abs().sum())},
            "rotate_slots": {"stats": st["rotate_slots"], "rel_err_vs_reference": err,
                             "checksum": float(h_slots.double().abs().sum())},
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="samples per round and contender")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternations of main's child process and this tree (load drifts)")
    ap.add_argument("--main", default="/work/main", help="checkout with main's build")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.child:
        print(json.dumps(run_old_api(a.repeats)))
        return 0
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{Path(a.main) / 'python'}{os.pathsep}{root}")
    from bench.timing import summarize
    olds, news = [], []
    for _ in range(a.rounds):  # alternate, so drifting load from other processes hits both
        child = subprocess.run([sys.executable, "-m", "bench.layer.decode_rotation", "--child",
                                "--threads", str(a.threads), "--repeats", str(a.repeats)],
                               env=env, cwd=root, capture_output=True, text=True, check=True)
        olds.append(json.loads(child.stdout.strip().splitlines()[-1]))
        news.append(run_new_api(a.repeats))

    def pooled(entries):
        st = summarize([x for e in entries for x in e["stats"]["repeats"]])
        st["inner"] = entries[0]["stats"]["inner"]
        return {**entries[-1], "stats": st}

    old = {sc: pooled([o[sc] for o in olds]) for sc in SCENARIOS}
    new = {sc: {name: pooled([nw[sc][name] for nw in news])
                for name in ("rotate_segments", "rotate_slots")} for sc in SCENARIOS}

    from bench.machine import machine_info
    from bench.results import Results
    res = Results("decode_rotation", "cpu", False, machine_info("cpu"),
                  {"rows": T_SEG, "rows_per_segment": "1 (two_rows: 2)", "n": N, "adapters": A,
                   "sparse_rate": RATE, "dtype": "float32", "threads": a.threads,
                   "rounds": a.rounds, "repeats_per_round": a.repeats,
                   "main_checkout": str(a.main)})
    for sc in SCENARIOS:
        params = {"scenario": sc}
        res.add("decode", "main_rotate_segments", params, old[sc]["stats"], metric="time",
                unit="s", inner=old[sc]["stats"]["inner"])
        for name in ("rotate_segments", "rotate_slots"):
            m = new[sc][name]
            extra = {k: v for k, v in m.items() if k not in ("stats", "checksum")}
            res.add("decode", name, params, m["stats"], metric="time", unit="s",
                    inner=m["stats"]["inner"], **extra)
        before = old[sc]["stats"]["median"]
        after = new[sc]["rotate_slots"]["stats"]["median"]
        res.doc["headline"][f"{sc}_speedup_rotate_slots_vs_main"] = before / after
        line = (f"{sc:12s} main rotate_segments {before * 1e6:8.1f} us | rotate_segments "
                f"{new[sc]['rotate_segments']['stats']['median'] * 1e6:8.1f} us | rotate_slots "
                f"{after * 1e6:8.1f} us | x{before / after:.2f}")
        print(line)
        res.doc["notes"].append(line)
        # same numbers as main (the kernels' arithmetic did not change)
        if abs(old[sc]["checksum"] - new[sc]["rotate_slots"]["checksum"]) > 1e-3 * old[sc]["checksum"]:
            res.doc["notes"].append(f"{sc}: checksum differs from main's output")
    path = res.save(a.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
