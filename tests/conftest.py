"""Shared fixtures: seeded tiny configs and helpers used across the test tree."""

import os

import numpy as np
import pytest
import torch

pytest_plugins = ["fixtures.s3", "fixtures.videos", "fixtures.iqa", "fixtures.services"]  # tests/fixtures/: moto S3 server, sample videos, IQA weights, Prefect + MLflow servers

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
