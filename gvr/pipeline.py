"""Cascaded inference (paper Fig. 3): LR latent (or LR video, encoded first) -> HR latent -> video.

The LR latent of a T2V model is noised once at a fixed level, brought to the HR latent size by the
model's upsampler, and an HR latent is integrated from pure noise with the Euler sampler; the codec
decodes it on request. Any aspect ratio works: the HR latent covers the requested pixel size rounded up
to the codec x patch grid (16 px) and the decoded video is cropped back. Videos longer than the training
clips switch the model's full 3D attention to interleaving temporal units for the call (paper §3.4),
samples run one at a time, and sample i of a call is seeded with `seed + i`, so the result of a clip
does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gvr.diffusion.flow_matching import euler_sample
from gvr.errors import InputError
from gvr.models.dit import SimpleGVR, read_config

SPATIAL_FACTOR = 8  # codec pixels per latent pixel, when no codec is attached


@dataclass
class GVROutput:
    """HR latent (B, C, T, H, W) and, when decoded, the video (B, 3, frames, H_px, W_px) in [-1, 1]."""

    latent: torch.Tensor
    video: torch.Tensor | None = None


class GVRPipeline:
    """SimpleGVR + codec + text encoder: `pipe(lr_latent=..., prompt=..., hr_size=(1080, 1920))`."""

    def __init__(self, model: SimpleGVR, codec=None, text_encoder=None):
        self.model, self.codec, self.text_encoder = model.eval(), codec, text_encoder

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, codec=None, text_encoder=None) -> GVRPipeline:
        """Model from `directory`; codec and text encoder from its config.json unless passed.

        The "codec" / "text" sections hold `CodecParams` / `TextParams` fields, built through
        `gvr.models.vae.codec_from_params` and `gvr.models.text.text_encoder_from_params`.
        """
        config = read_config(directory)
        model = SimpleGVR.from_pretrained(directory, device=device, dtype=dtype)
        if codec is None and config.get("codec"):
            from gvr.config import CodecParams
            from gvr.models.vae import codec_from_params

            codec = codec_from_params(_section(CodecParams, config["codec"], directory, "codec"), device=device)
        if text_encoder is None and config.get("text"):
            from gvr.config import TextParams
            from gvr.models.text import text_encoder_from_params

            text_encoder = text_encoder_from_params(_section(TextParams, config["text"], directory, "text"),
                                                    device=device)
        return cls(model, codec, text_encoder)

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    # ---- inputs ----------------------------------------------------------------------------------

    def _lr_latent(self, lr_latent, lr_video) -> tuple[torch.Tensor, int]:
        """The LR latent (B, C, T, h, w) on the model's device and the pixel frame count to decode to."""
        tf = getattr(self.codec, "temporal_factor", self.model.cfg.temporal_factor)
        if (lr_latent is None) == (lr_video is None):
            raise InputError("pass exactly one of lr_latent or lr_video")
        if lr_latent is not None:
            lr_latent = torch.as_tensor(lr_latent)
            lr_latent = lr_latent[None] if lr_latent.ndim == 4 else lr_latent
            c = self.model.cfg.latent_channels
            if lr_latent.ndim != 5 or lr_latent.shape[1] != c or not lr_latent.is_floating_point():
                raise InputError(f"lr_latent: expected a float (B, {c}, T, h, w) tensor, got "
                                 f"{lr_latent.dtype} {tuple(lr_latent.shape)}")
            if not torch.isfinite(lr_latent).all():
                raise InputError("lr_latent contains NaN or Inf values")
            return lr_latent.to(self.device, torch.float32), (lr_latent.shape[2] - 1) * tf + 1
        if self.codec is None:
            raise InputError("lr_video needs a codec to encode it; pass codec= or use lr_latent")
        video = _video_tensor(lr_video)
        latent = self.codec.encode(video.to(self.codec.device, self.codec.dtype))
        return latent.to(self.device, torch.float32), video.shape[2]

    def _hr_grid(self, lr: torch.Tensor, hr_size, hr_latent_size, scale: float) -> tuple[tuple[int, int], tuple | None]:
        """HR latent (H, W) and the pixel size to crop the decoded video to (None: no crop)."""
        sf = getattr(self.codec, "spatial_factor", SPATIAL_FACTOR)
        p = self.model.cfg.patch[1:]
        if hr_latent_size is not None:
            size = tuple(int(s) for s in hr_latent_size)
            if len(size) != 2 or any(s <= 0 or s % q for s, q in zip(size, p)):
                raise InputError(f"hr_latent_size {hr_latent_size}: expected (H, W), positive multiples of {p}")
            return size, None
        if hr_size is not None:
            px = tuple(int(s) for s in hr_size)
            if len(px) != 2 or min(px) <= 0:
                raise InputError(f"hr_size {hr_size}: expected (height, width) in pixels")
            return tuple(-(-s // (sf * q)) * q for s, q in zip(px, p)), px
        return tuple(max(q, int(s * scale / q + 0.5) * q) for s, q in zip(lr.shape[-2:], p)), None  # half up

    def _text(self, prompt, batch: int, text_emb, text_mask, need_null: bool):
        """(emb, mask) for the prompts and, when guiding, for the null prompt."""
        if text_emb is not None:
            emb = torch.as_tensor(text_emb).to(self.device)
            mask = torch.ones(emb.shape[:2], dtype=torch.bool) if text_mask is None else torch.as_tensor(text_mask)
            if emb.ndim != 3 or emb.shape[0] != batch:
                raise InputError(f"text_emb: expected ({batch}, L, D), got {tuple(emb.shape)}")
        else:
            if self.text_encoder is None:
                raise InputError("no text encoder: pass text_encoder= to the pipeline or text_emb= to the call")
            prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
            if len(prompts) != batch:
                raise InputError(f"{len(prompts)} prompts for {batch} clips")
            emb, mask = self.text_encoder.encode(prompts)
        null = None
        if need_null:
            if self.text_encoder is None:
                raise InputError("guidance != 1 needs the null prompt: pass text_encoder= to the pipeline")
            null = tuple(x.to(self.device) for x in self.text_encoder.null(1))
        return emb.to(self.device), mask.to(self.device).bool(), null

    # ---- call -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, lr_latent=None, lr_video=None, prompt: str | list[str] = "", hr_size=None, *,
                 hr_latent_size=None, scale: float = 2.0, steps: int = 50, noise_aug: float = 0.3,
                 guidance: float = 1.0, seed: int = 0, decode: bool = True, temporal_units: bool | None = None,
                 text_emb: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                 progress: bool = False) -> GVROutput:
        """Upscale LR latents (or videos) to HR latents and, with `decode`, videos.

        Args:
            lr_latent: (B, C, T, h, w) or (C, T, h, w) latent of the T2V model, as the codec normalises.
            lr_video: instead of a latent: (B, 3, T, H, W) float in [-1, 1] or (T, H, W, 3) uint8 frames.
            prompt: one prompt for every clip, or one per clip.
            hr_size: output (height, width) in pixels; the latent covers it rounded up to 16 px.
            hr_latent_size: output (H, W) in latent pixels instead (no crop).
            scale: with neither size given, the HR latent is the LR latent times this.
            steps: Euler steps on the uniform schedule.
            noise_aug: fixed LR noise level (training range 0.3-0.6; lower is more faithful to the input).
            guidance: classifier-free guidance scale (1 = off).
            seed: clip i of the batch is seeded with seed + i.
            decode: also decode the HR latent to video with the codec.
            temporal_units: interleaving temporal units for the 3D attention; None = when the clip is
                longer than the training clips and the model uses full attention.
            text_emb, text_mask: precomputed prompt embeddings (B, L, D) and mask instead of `prompt`.
            progress: show a progress bar over clips.
        """
        lr, frames = self._lr_latent(lr_latent, lr_video)
        b, c, t = lr.shape[:3]
        size, crop = self._hr_grid(lr, hr_size, hr_latent_size, scale)
        emb, mask, null = self._text(prompt, b, text_emb, text_mask, guidance != 1.0)
        if decode and self.codec is None:
            raise InputError("decode=True needs a codec; pass codec= or decode=False")
        saved = self.model.cfg
        if temporal_units if temporal_units is not None else self._needs_units(t):
            self.model.set_attention(["temporal_unit" if k == "full" else k for k in saved.attention])
        try:
            latents = []
            clips = range(b)
            if progress:
                from tqdm.auto import tqdm

                clips = tqdm(clips, desc="upscale", unit="clip")
            for i in clips:
                gen = torch.Generator(device="cpu").manual_seed(seed + i)
                latents.append(euler_sample(
                    self.model, lr[i:i + 1], emb[i:i + 1], mask[i:i + 1], steps=steps, noise_aug=noise_aug,
                    guidance=guidance, null_text=null[0] if null else None, null_mask=null[1] if null else None,
                    generator=gen, hr_shape=(1, c, t, *size)))
        finally:
            self.model.set_attention(saved.attention, unit=saved.attention_unit)
        latent = torch.cat(latents)
        if not decode:
            return GVROutput(latent)
        video = self.codec.decode(latent.to(self.codec.device, self.codec.dtype), frames=frames).float()
        if crop is not None:
            video = video[..., : crop[0], : crop[1]]
        return GVROutput(latent, video)

    def _needs_units(self, latent_frames: int) -> bool:
        cfg = self.model.cfg
        return latent_frames > cfg.train_latent_frames and "full" in cfg.attention


def load_pipeline(model_dir: str | Path, device: str = "auto", dtype: str = "bfloat16") -> GVRPipeline:
    """The pipeline of an exported model folder, on the params-style device spec and dtype name."""
    from gvr.runtime import pick_device, torch_dtype

    dev = pick_device(device)
    return GVRPipeline.from_pretrained(model_dir, device=dev, dtype=torch_dtype(dtype, dev))


def _video_tensor(video) -> torch.Tensor:
    """(B, 3, T, H, W) float in [-1, 1] from a tensor of that layout or (T, H, W, 3) uint8 frames."""
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise InputError(f"lr_video: numpy frames must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
        from gvr.io.video import to_tensor

        video = to_tensor(video)
    if not isinstance(video, torch.Tensor):
        raise InputError(f"lr_video: expected a tensor or numpy frames, got {type(video).__name__}")
    return video


def _section(cls, data: dict, directory, name: str):
    """A params dataclass from an artifact's config section, with one clear error."""
    try:
        return cls(**data)
    except TypeError as e:
        raise InputError(f"{directory}/config.json: bad {name} section ({e})") from None
