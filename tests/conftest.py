"""Shared fixtures: seeded tiny configs and helpers used across the test tree."""

import os

import numpy as np
import pytest
import torch

# tests/fixtures/: moto S3 server, videos, IQA weights, a tiny exported model, Prefect + MLflow servers
pytest_plugins = ["fixtures.s3", "fixtures.videos", "fixtures.iqa", "fixtures.models", "fixtures.services"]

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
