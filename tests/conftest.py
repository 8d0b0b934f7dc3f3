"""Shared fixtures: seeded tiny configs and helpers used across the test tree."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
