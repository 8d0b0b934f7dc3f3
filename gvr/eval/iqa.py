"""No-reference image quality metrics (MUSIQ, NIQE) through pyiqa, loaded from local weights only.

pyiqa downloads weights from a model hub when a metric is built with its defaults, and unpickles
them with `weights_only=False`. Here the network is always built with `pretrained=False` (no
download is attempted) and the weights are read by us: safetensors, or `torch.load(...,
weights_only=True)`, which refuses anything but tensors and plain containers. NIQE's natural-scene
statistics are a MATLAB .mat file of two arrays, read with scipy (no code execution).

Weights come from `weights_path`, else from `~/.cache/gvr/iqa/<file>` ($GVR_CACHE_DIR/iqa), else
from pyiqa's own download cache (`$TORCH_HOME/hub/pyiqa/<file>`) where a machine with internet
access may have put them. Nothing is fetched.

Not supported: CLIP-IQA and MANIQA. pyiqa builds their backbones (OpenAI CLIP, a timm ViT-B/8) by
downloading pretrained weights inside the constructor, with no switch to turn that off, and
neither `clip` nor `timm` is a dependency here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvr.errors import InputError


@dataclass(frozen=True)
class IQASpec:
    """How to build one pyiqa metric without downloads, and the weight file it expects."""

    pyiqa_name: str
    weights_file: str  # file name in pyiqa's model zoo (and in our cache)
    kind: str  # "state_dict" (a torch network) or "niqe_mat" (NIQE's statistics)
    build_kwargs: dict[str, Any] = field(default_factory=dict)


SPECS: dict[str, IQASpec] = {
    # MUSIQ heads: koniq/spaq/paq2piq regress one MOS (~0..100); ava predicts a 10-bin distribution
    "musiq": IQASpec("musiq", "musiq_koniq_ckpt-e95806b9.pth", "state_dict", {"num_class": 1}),
    "musiq-spaq": IQASpec("musiq-spaq", "musiq_spaq_ckpt-358bb6af.pth", "state_dict", {"num_class": 1}),
    "musiq-paq2piq": IQASpec("musiq-paq2piq", "musiq_paq2piq_ckpt-364c0c84.pth", "state_dict", {"num_class": 1}),
    "musiq-ava": IQASpec("musiq-ava", "musiq_ava_ckpt-e8d3f067.pth", "state_dict", {"num_class": 10}),
    "niqe": IQASpec("niqe", "niqe_modelparameters.mat", "niqe_mat"),
}


def weight_search_paths(name: str) -> list[Path]:
    """Where `load_iqa(name)` looks for weights when no path is given, in order."""
    spec = _spec(name)
    ours = Path(os.environ.get("GVR_CACHE_DIR") or Path.home() / ".cache" / "gvr") / "iqa"
    torch_home = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch")
    stem = Path(spec.weights_file).stem
    return [ours / spec.weights_file, ours / f"{stem}.safetensors", torch_home / "hub" / "pyiqa" / spec.weights_file]


def _spec(name: str) -> IQASpec:
    if name not in SPECS:
        raise InputError(f"IQA metric {name!r} is not available offline (available: {', '.join(SPECS)})")
    return SPECS[name]


def resolve_weights(name: str, weights_path: str | os.PathLike | None = None) -> Path:
    """The local weight file for `name`: `weights_path` if given, else the first hit of weight_search_paths."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise InputError(f"{path}: {name} weights not found")
        return path
    candidates = weight_search_paths(name)
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(f"{name}: no local weights (looked in {', '.join(map(str, candidates))}); pass a path "
                     f"(e.g. curate.musiq_weights) to {_spec(name).weights_file} or a .safetensors state dict")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from .safetensors or a plain .pth/.pt (never unpickling objects)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusals, truncated files, safetensors header errors
        raise InputError(f"{path}: not a loadable tensor state dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # 1. unwrap the containers training scripts put around the weights
    for key in ("params", "params_ema", "state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: expected a mapping of parameter names to tensors")
    # 2. drop the prefix DataParallel/DDP adds
    return {k.removeprefix("module."): v for k, v in sd.items()}


class IQAMetric:
    """A loaded no-reference metric: call on (N, 3, H, W) floats in [0, 1], or `score_frames` on uint8 RGB."""

    def __init__(self, name: str, model, device: torch.device):
        self.name = name
        self.model = model  # pyiqa InferenceModel
        self.device = device
        self.lower_better = bool(model.lower_better)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of images (N, 3, H, W) in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"{self.name}: expected images (N, 3, H, W), got {tuple(images.shape)}")
        out = self.model(images.to(self.device, torch.float32).clamp(0, 1))
        return out.reshape(images.shape[0], -1)[:, 0].float().cpu()

    def score_frames(self, frames: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """Scores (N,) float64 of uint8 RGB frames (N, H, W, 3), `batch_size` frames per forward pass."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"{self.name}: expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        scores = []
        for i in range(0, len(frames), batch_size):
            x = torch.from_numpy(frames[i:i + batch_size]).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
            scores.append(self(x).double().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_iqa(name: str, weights_path: str | os.PathLike | None = None,
             device: str | torch.device = "cpu") -> IQAMetric:
    """Build pyiqa metric `name` (see SPECS) with local weights on `device`; never downloads.

    Args:
        name: "musiq" (KonIQ head, the paper's curation metric), "musiq-spaq", "musiq-paq2piq",
            "musiq-ava" or "niqe".
        weights_path: the weight file; None searches `weight_search_paths(name)`.
        device: "cpu", "cuda", "cuda:N" or "auto".
    """
    import pyiqa

    spec = _spec(name)
    path = resolve_weights(name, weights_path)
    dev = _device(device)
    if spec.kind == "niqe_mat":
        _check_niqe_mat(path)
        model = pyiqa.create_metric(spec.pyiqa_name, device=dev, pretrained_model_path=str(path))
    else:
        state = load_state_dict(path)
        # pretrained=False: pyiqa builds the bare network and fetches nothing
        model = pyiqa.create_metric(spec.pyiqa_name, device=dev, pretrained=False, **spec.build_kwargs)
        try:
            result = model.net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches raise even when not strict
            raise InputError(f"{path}: does not match the {name} network ({str(e).splitlines()[-1].strip()})") from None
        if result.missing_keys or result.unexpected_keys:
            raise InputError(f"{path}: does not match the {name} network ({len(result.missing_keys)} missing "
                             f"keys, e.g. {result.missing_keys[:2]}; {len(result.unexpected_keys)} unexpected, "
                             f"e.g. {result.unexpected_keys[:2]})")
    model.eval()
    return IQAMetric(name, model, dev)


def _check_niqe_mat(path: Path) -> None:
    import scipy.io

    try:
        params = scipy.io.loadmat(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("mu_prisparam", "cov_prisparam") if k not in params]
    if missing:
        raise InputError(f"{path}: NIQE parameters need {', '.join(missing)}")
