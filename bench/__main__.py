"""``python -m bench ...``: see :mod:`bench.run`.

frod_rt's compiled module uses the system libgomp while torch ships its own copy: two OpenMP
thread pools whose idle threads spin and starve each other (measured here: small GEMMs 5-100x
slower once a frod_rt kernel has run). Unless the caller chose a policy, the benchmarks run
with ``OMP_WAIT_POLICY=PASSIVE``, set before torch loads; the value is recorded in every JSON.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .run import main  # noqa: E402

sys.exit(main())
