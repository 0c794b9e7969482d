"""``frod-rt serve --replicas N`` (N > 1): the same API from N engine replicas on Ray Serve.

Options of ``serve`` that only matter here: ``--replicas``, ``--ray-address`` (join a running
cluster; default: start a local Ray), ``--replica-cpus``, ``--replica-gpus``,
``--replica-threads``, ``--adapters-per-replica``. See docs/scale-out.md.
"""
from __future__ import annotations

import signal
import threading

from .common import CLIError, adapter_specs, engine_limits, existing_dir, torch_dtype

INSTALL_HINT = "pip install 'frod-rt[ray]'"


def add_options(p) -> None:
    g = p.add_argument_group("scale-out on Ray Serve (docs/scale-out.md)")
    g.add_argument("--replicas", type=int, default=1,
                   help="engine replicas; > 1 serves through Ray Serve (needs "
                        f"{INSTALL_HINT}); default 1: one engine in this process")
    g.add_argument("--ray-address", default=None,
                   help="address of a running Ray cluster (default: start a local Ray)")
    g.add_argument("--replica-cpus", type=float, default=1.0,
                   help="CPUs Ray reserves per replica (default 1)")
    g.add_argument("--replica-gpus", type=float, default=None,
                   help="GPUs per replica (default: 1 with --device cuda, else 0)")
    g.add_argument("--replica-threads", type=int, default=None,
                   help="torch threads per replica (default: --replica-cpus rounded, >= 1)")
    g.add_argument("--adapters-per-replica", type=int, default=16,
                   help="adapters each replica holds at most (LRU; default 16)")


def ray_serve_available() -> bool:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return True


def check_options(args) -> None:
    """CLIError for bad scale-out options, and for N > 1 without Ray installed."""
    if args.replicas < 1:
        raise CLIError(f"--replicas must be >= 1, got {args.replicas}")
    if args.replicas > 1 and not ray_serve_available():
        raise CLIError(f"--replicas {args.replicas} needs Ray Serve, which is not "
                       f"installed: {INSTALL_HINT}")
    if args.adapters_per_replica < 1:
        raise CLIError(f"--adapters-per-replica must be >= 1, got {args.adapters_per_replica}")
    if args.replica_cpus < 0 or (args.replica_gpus is not None and args.replica_gpus < 0):
        raise CLIError("--replica-cpus / --replica-gpus must be >= 0")


def check_local_resources(replicas: int, cpus: float, gpus: float) -> None:
    """CLIError when a local Ray could not place every replica (Serve would wait forever)."""
    import os
    have = os.cpu_count() or 1
    if replicas * cpus > have:
        raise CLIError(f"--replicas {replicas} x --replica-cpus {cpus:g} needs "
                       f"{replicas * cpus:g} CPUs; this machine has {have} (lower "
                       "--replica-cpus, e.g. 0.5, or join a cluster with --ray-address)")
    if gpus:
        import torch
        ngpu = torch.cuda.device_count()
        if replicas * gpus > ngpu:
            raise CLIError(f"--replicas {replicas} x --replica-gpus {gpus:g} needs "
                           f"{replicas * gpus:g} GPUs; this machine has {ngpu}")


def run(args, config) -> int:
    """Validate the adapters (files only: each replica checks them against the base when it
    first loads one), start Ray + Serve, deploy, serve until SIGINT/SIGTERM. ``config``: the
    ``ServerConfig`` built from the security options, as in single-process mode."""
    from ..method.adapter_io import read_adapter
    base = existing_dir(args.base, "base model directory")
    adapters = adapter_specs(args.adapter)
    for name, path in adapters.items():
        read_adapter(path, name)
    dtype = torch_dtype(args.dtype)
    opts = engine_limits(args)
    opts.update(device=args.device, max_waiting=args.max_queue, progress=False)
    if dtype is not None:
        opts["dtype"] = str(dtype).removeprefix("torch.")
    gpus = args.replica_gpus
    if gpus is None:
        gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
    if not args.ray_address:
        check_local_resources(args.replicas, args.replica_cpus, gpus)
    threads = args.replica_threads or max(1, int(round(args.replica_cpus)))

    import ray
    from ray import serve

    from ..server.ray_app import build_app, run_app, shutdown_app
    app = build_app(base, {n: str(p) for n, p in adapters.items()}, args.replicas,
                    served_name=args.served_name, default_max_tokens=args.default_max_tokens,
                    engine_options=opts, threads_per_replica=threads,
                    replica_cpus=args.replica_cpus, replica_gpus=gpus,
                    adapters_per_replica=args.adapters_per_replica, config=config)
    stop = threading.Event()

    def on_signals():       # after ray.init, which installs a handler that aborts
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    try:
        run_app(app, host=args.host, port=args.port, ray_address=args.ray_address,
                after_init=on_signals)
        name = args.served_name or base.name
        print(f"serving {name} + {len(adapters)} adapter(s) on http://{args.host}:{args.port}"
              f"/v1 with {args.replicas} replicas (Ray Serve)", flush=True)
        while not stop.wait(0.5):
            pass
        print("frod-rt serve: stopped", flush=True)
    finally:
        try:
            shutdown_app()           # the app and its detached adapter catalog
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
