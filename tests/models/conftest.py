"""Fixtures of the model tests."""

import importlib
import os

import pytest
import torch


@pytest.fixture(scope="module")
def TK():
    """gvr.models.attention_triton; without a GPU its kernels run under Triton's interpreter (tests/conftest.py)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter was not enabled before triton was imported")
    return importlib.import_module("gvr.models.attention_triton")
