"""``python -m bench ...``: see :mod:`bench.run`.

libgomp (one runtime, shared by torch and frod_rt._C) lets idle threads spin by default,
which starved other work on a shared machine. frod_rt is imported before torch so that its
default (a bounded spin, GOMP_SPINCOUNT=20000) applies unless the caller chose a policy;
the environment is recorded in every JSON.
"""
import sys

import frod_rt  # noqa: F401  (sets the OpenMP wait default before torch loads)

from .run import main  # noqa: E402

sys.exit(main())
