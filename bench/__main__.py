"""``python -m bench ...``: see :mod:`bench.run`.

libgomp (one runtime, shared by torch and frod_rt._C) lets idle threads spin by default,
which starved other work on a shared machine (small GEMMs 5-100x slower once a frod_rt kernel
had run). Unless the caller chose a policy, the benchmarks run with
``OMP_WAIT_POLICY=PASSIVE``, set before torch loads; the value is recorded in every JSON.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .run import main  # noqa: E402

sys.exit(main())
