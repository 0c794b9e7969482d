"""Gradient checkpointing that keeps each forward call's adapter routing.

Hugging Face models checkpoint a layer through ``module._gradient_checkpointing_func(fn,
*args)`` (``torch.utils.checkpoint.checkpoint`` with the user's kwargs). The recomputation
runs during backward, after ``FrodModel.forward`` has left its ``adapter_routing`` block,
so the recomputed layer would see no routing (or another call's): with ``use_reentrant=True``
the adapters silently get the gradients of a different computation, with ``False`` torch
raises a ``CheckpointError``. :func:`wrap_checkpoint_functions` wraps every such function so
that the routing state of the forward call (active adapter, disabled flag, per-row routing)
is captured when the layer runs and restored around the recomputation (with the sharing of
``X V`` between the roles of one input, ``FrodState.xv``, so the recomputation saves the
same tensors as the forward).
"""
from __future__ import annotations

import contextlib

from torch import nn


def _snapshot(state) -> tuple:
    return state.active, state.disabled, state.routing, state.share_xv


@contextlib.contextmanager
def _restored(state, snap: tuple):
    prev = _snapshot(state)
    state.active, state.disabled, state.routing, state.share_xv = snap
    state.clear_xv()
    try:
        yield
    finally:
        state.clear_xv()
        state.active, state.disabled, state.routing, state.share_xv = prev


class RoutedCheckpoint:
    """``checkpoint_fn(function, *args, **kw)`` with the routing of the call restored whenever
    ``function`` runs (first in forward, again in the recomputation)."""

    def __init__(self, checkpoint_fn, state):
        self.checkpoint_fn = checkpoint_fn
        self.state = state

    def __call__(self, function, *args, **kwargs):
        snap = _snapshot(self.state)

        def run(*a, **kw):
            with _restored(self.state, snap):
                return function(*a, **kw)

        return self.checkpoint_fn(run, *args, **kwargs)


def wrap_checkpoint_functions(model: nn.Module, state) -> None:
    """Wrap (once) every ``_gradient_checkpointing_func`` set on a submodule of ``model``."""
    for m in model.modules():
        fn = m.__dict__.get("_gradient_checkpointing_func")
        if fn is not None and not isinstance(fn, RoutedCheckpoint):
            m._gradient_checkpointing_func = RoutedCheckpoint(fn, state)
