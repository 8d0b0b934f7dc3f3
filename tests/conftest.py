"""Shared fixtures: seeded tiny configs and helpers used across the test tree."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# tests/fixtures/: moto S3 server, videos, IQA weights, a tiny exported model, Prefect + MLflow servers
pytest_plugins = ["fixtures.s3", "fixtures.videos", "fixtures.iqa", "fixtures.models", "fixtures.services"]

os.environ.setdefault("MPLBACKEND", "Agg")
# Without a GPU, Triton kernels (gvr.models.attention_triton) run under Triton's interpreter; it is
# chosen when triton is first imported, so it is set here, before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests run as `.venv/bin/python -m pytest` without an activated venv: put this interpreter's
# console scripts (gvr, dvc, prefect, mlflow, moto_server) first on PATH for every child process.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = os.pathsep.join([_BIN, os.environ.get("PATH", "")])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny ops run fastest single-threaded (thread start-up dominates, worse on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
