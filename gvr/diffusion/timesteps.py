"""Training timestep distributions (paper §3.4) and the uniform inference schedule.

`UniformSampler` draws t ~ U[0, 1). `DetailAwareSampler` draws t from a piecewise-constant density
over `bins` equal bins of [0, 1], derived by `derive_detail_aware` as the paper does: run 50-step
inference of a uniform-trained model over N LR clips, predict x0 at every step, take the
high-frequency DCT coefficients of each prediction, and sum the change between successive steps into
a curve over t (Fig. 6); normalised, that curve is the distribution. Inference stays uniform
(1000, 980, ..., 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from gvr.errors import InputError


def inference_schedule(steps: int) -> list[float]:
    """Uniform times 1 -> 0 in `steps` steps: [1.0, 0.98, ..., 0.0] for 50."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [1.0 - i / steps for i in range(steps + 1)]


class UniformSampler:
    """t ~ U[0, 1)."""

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.rand(n, generator=generator, device=gen_device).to(device)


@dataclass
class DetailAwareSampler:
    """t drawn from a histogram density: bin i = [i/K, (i+1)/K) has probability `probs[i]`."""

    probs: list[float]
    meta: dict | None = None

    def __post_init__(self):
        p = torch.tensor(self.probs, dtype=torch.float64)
        if p.ndim != 1 or len(p) < 2 or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise InputError("detail-aware distribution: probabilities must be >= 2 finite, non-negative "
                             "values with a positive sum")
        self._cdf = torch.cumsum(p / p.sum(), 0).float()

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        u = torch.rand(2, n, generator=generator, device=gen_device)  # bin choice, position in bin
        cdf = self._cdf.to(gen_device)
        idx = torch.searchsorted(cdf, u[0].contiguous(), right=True).clamp(max=len(cdf) - 1)
        return ((idx + u[1]) / len(cdf)).to(device)

    def density(self) -> torch.Tensor:
        """Probability density over [0, 1] per bin (integrates to 1)."""
        p = torch.tensor(self.probs, dtype=torch.float64)
        return p / p.sum() * len(p)

    def save(self, path: str | Path) -> None:
        """JSON: {"kind": "detail_aware", "bins": K, "probs": [...], "meta": {...}}."""
        data = {"kind": "detail_aware", "bins": len(self.probs), "probs": list(map(float, self.probs)),
                "meta": self.meta or {}}
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> DetailAwareSampler:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(probs=[float(p) for p in data["probs"]], meta=data.get("meta"))
        except FileNotFoundError:
            raise InputError(f"{path}: timestep distribution not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: not a timestep distribution file ({e})") from None


# --------------------------------------------------------------------------------------------
# Deriving the detail-aware distribution
# --------------------------------------------------------------------------------------------


def dct_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): X = D @ x."""
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def high_frequency(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """High-frequency 2D DCT coefficients of every frame of x (..., H, W), flattened per leading index.

    A coefficient (u, v) is high-frequency when sqrt((u/H)^2 + (v/W)^2) > cutoff (1 = highest per axis).
    """
    h, w = x.shape[-2:]
    dh, dw = dct_matrix(h, x.device), dct_matrix(w, x.device)
    coeffs = dh @ x.float() @ dw.T  # (..., H, W)
    u = torch.arange(h, device=x.device)[:, None] / h
    v = torch.arange(w, device=x.device)[None, :] / w
    return coeffs[..., (u**2 + v**2).sqrt() > cutoff]


@dataclass
class DetailCurve:
    """Result of `derive_detail_aware`: the per-step curve and the training distribution."""

    step_t: list[float]  # the start time of each Euler step (1.0, 0.98, ...)
    variation: list[float]  # summed high-frequency change of predicted x0 across that step
    sampler: DetailAwareSampler
    clips: int


def curve_to_bins(step_t: list[float], variation: list[float], steps: int, bins: int) -> list[float]:
    """Spread the variation of step i (covering [t_i+1, t_i)) evenly over the bins in that interval."""
    probs = [0.0] * bins
    for t_start, val in zip(step_t, variation):
        lo, hi = t_start - 1.0 / steps, t_start
        first, last = math.floor(lo * bins + 1e-9), math.ceil(hi * bins - 1e-9)
        width = max(last - first, 1)
        for i in range(max(first, 0), min(last, bins)):
            probs[i] += val / width
    return probs


def derive_detail_aware(model, clips: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], *,
                        hr_size: tuple[int, int] | Callable[[torch.Tensor], tuple[int, int]],
                        steps: int = 50, noise_aug: float = 0.3, cutoff: float = 0.5, bins: int = 1000,
                        seed: int = 0, uniform_floor: float = 0.05, json_path: str | Path | None = None,
                        plot_path: str | Path | None = None, progress: bool = False) -> DetailCurve:
    """Build the detail-aware timestep distribution from a uniform-trained model (paper §3.4, Fig. 6).

    Args:
        model: the velocity model, called as `model(z_t, t, c_t, t_c, text, text_mask)`.
        clips: (c0 (1, C, T, h, w), text (1, L, Dt), text_mask (1, L) or None) per LR clip.
        hr_size: HR latent (H, W), or a function of c0 giving it.
        steps: inference steps (uniform schedule).
        noise_aug: fixed LR noise level during the inference runs.
        cutoff: normalised DCT radius above which a coefficient counts as high-frequency.
        bins: bins of the resulting distribution over [0, 1].
        seed: seeds the noise of clip i with seed + i.
        uniform_floor: share of probability spread uniformly over [0, 1]. The last Euler step lands
            exactly on its own x0 prediction, so the curve is 0 there by construction; without a floor
            the low-noise end would never be trained again and would drift from stage 1.
        json_path, plot_path: where to save the distribution (JSON) and the curve plot (PNG).
        progress: show a progress bar over clips.
    Returns:
        The curve and the sampler (also written to `json_path` / `plot_path` when given).
    """
    from gvr.diffusion.flow_matching import euler_sample, predict_x0

    variation = torch.zeros(steps, dtype=torch.float64)
    n = 0
    if progress:
        from tqdm.auto import tqdm

        clips = tqdm(clips, desc="derive-sampler", unit="clip")
    for c0, text, mask in clips:
        size = hr_size(c0) if callable(hr_size) else hr_size
        prev: list[torch.Tensor | None] = [None]

        def track(i: int, t: float, z: torch.Tensor, v: torch.Tensor, prev=prev) -> None:
            hf = high_frequency(predict_x0(z, t, v), cutoff)
            if prev[0] is not None:  # change made by step i-1, which started at schedule[i-1]
                variation[i - 1] += (hf - prev[0]).norm().item()
            prev[0] = hf

        gen = torch.Generator(device="cpu").manual_seed(seed + n)
        z0 = euler_sample(model, c0, text, mask, steps=steps, noise_aug=noise_aug, generator=gen,
                          hr_shape=(c0.shape[0], c0.shape[1], c0.shape[2], *size), on_step=track)
        variation[steps - 1] += (high_frequency(z0, cutoff) - prev[0]).norm().item()  # last step to t=0
        n += 1
    if n == 0:
        raise InputError("derive-sampler: no LR clips given")
    if variation.sum() <= 0:
        raise InputError("derive-sampler: the model's predictions never changed; is it trained?")
    step_t = inference_schedule(steps)[:-1]
    curve = (variation / n).tolist()
    meta = {"steps": steps, "clips": n, "noise_aug": noise_aug, "cutoff": cutoff,
            "step_t": step_t, "variation": curve}
    probs = torch.tensor(curve_to_bins(step_t, curve, steps, bins), dtype=torch.float64)
    probs = (1 - uniform_floor) * probs / probs.sum() + uniform_floor / bins
    meta["uniform_floor"] = uniform_floor
    sampler = DetailAwareSampler(probs.tolist(), meta=meta)
    result = DetailCurve(step_t=step_t, variation=curve, sampler=sampler, clips=n)
    if json_path is not None:
        sampler.save(json_path)
    if plot_path is not None:
        plot_detail_curve(result, plot_path)
    return result


def plot_detail_curve(curve: DetailCurve, path: str | Path) -> None:
    """PNG like the paper's Fig. 6: high-frequency variation per step over the timestep, with the density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ts = [1000 * t for t in curve.step_t]
    ax.plot(ts, curve.variation, marker="o", ms=3, label="high-frequency variation")
    ax.set_xlabel("timestep")
    ax.set_ylabel("DCT high-frequency change")
    ax.invert_xaxis()  # denoising runs 1000 -> 0, as in the paper
    ax2 = ax.twinx()
    dens = curve.sampler.density()
    centers = [1000 * (i + 0.5) / len(dens) for i in range(len(dens))]
    ax2.plot(centers, dens.tolist(), color="tab:orange", alpha=0.7, label="training density")
    ax2.set_ylabel("density")
    ax.set_title(f"Detail-aware timestep distribution ({curve.clips} clips)")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
