"""Shared test fixtures: GPU marker handling, seeded generators, random FRoD problems."""
from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A seeded torch.Generator so every test is reproducible."""
    g = torch.Generator().manual_seed(1234)
    return g
