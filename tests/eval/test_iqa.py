"""IQA loading: local weights only, safe formats, clear errors, and no network access at all."""

import socket

import numpy as np
import pytest
import torch

from gvr.errors import InputError
from gvr.eval.iqa import SPECS, load_iqa, load_state_dict, weight_search_paths

pyiqa = pytest.importorskip("pyiqa")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (a download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("IQA loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)


def test_musiq_from_pth_and_safetensors_scores_alike(tmp_path, musiq_weights, frames, no_network):
    from safetensors.torch import save_file

    metric = load_iqa("musiq", musiq_weights)
    scores = metric.score_frames(frames, batch_size=2)
    assert scores.shape == (2,) and np.isfinite(scores).all() and not metric.lower_better
    assert scores[0] != scores[1]  # the score depends on the image

    state = torch.load(musiq_weights, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    alone = load_iqa("musiq", tmp_path / "m.safetensors").score_frames(frames[1:])  # same weights, unbatched
    np.testing.assert_allclose(alone, scores[1:], rtol=1e-4)


def test_default_search_finds_cached_weights(tmp_path, monkeypatch, musiq_weights, no_network):
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path))
    target = weight_search_paths("musiq")[0]
    assert target.parent == tmp_path / "iqa"
    target.parent.mkdir()
    state = {f"module.{k}": v for k, v in torch.load(musiq_weights, weights_only=True).items()}
    torch.save({"params": state}, target)  # wrapped and DataParallel-prefixed, as training scripts save
    assert load_iqa("musiq").name == "musiq"


def test_niqe_from_local_statistics(niqe_params, no_network):
    metric = load_iqa("niqe", niqe_params)
    gray = np.random.default_rng(1).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    score = metric.score_frames(gray)
    assert metric.lower_better and score.shape == (1,) and np.isfinite(score).all()


def test_errors_are_clear(tmp_path, monkeypatch, musiq_weights):
    monkeypatch.setenv("GVR_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    with pytest.raises(InputError, match="no local weights"):
        load_iqa("musiq")
    with pytest.raises(InputError, match="not found"):
        load_iqa("musiq", tmp_path / "nope.pth")
    with pytest.raises(InputError, match="not available offline"):
        load_iqa("maniqa")
    assert "clipiqa" not in SPECS

    class Payload:  # unpickling this would run code: weights_only refuses it
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="not a loadable tensor state dict"):
        load_state_dict(tmp_path / "evil.pth")

    state = torch.load(musiq_weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("head")}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="does not match the musiq network"):
        load_iqa("musiq", tmp_path / "partial.pth")
    torch.save({**state, "head.weight": torch.zeros(3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(InputError, match="does not match the musiq network"):
        load_iqa("musiq", tmp_path / "shape.pth")

    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(InputError, match="not a readable .mat"):
        load_iqa("niqe", tmp_path / "bad.mat")
    metric = load_iqa("musiq", musiq_weights)
    with pytest.raises(InputError, match="uint8"):
        metric.score_frames(np.zeros((1, 8, 8, 3), np.float32))
