"""frod_rt benchmarks: multi-adapter throughput and scaling against the alternatives.

Run ``python -m bench <layer|engine|train|all> [--quick] [--device cpu|cuda] [--out DIR]``.
Every run writes ``<out>/<suite>-<device>-<stamp>.json`` plus PNG plots next to it.
"""
