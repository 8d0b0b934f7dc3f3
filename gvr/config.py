"""Typed params: one dataclass per params.yaml section, strict loading, profiles and overrides.

`load_params(path, profile=None, overrides=())` reads params.yaml, applies the profile named by
`profile` (or the file's top-level `profile:` key), then each `section.key=value` override, and
validates the result: an unknown key, a wrong type or an out-of-range value raises ConfigError
naming the dotted key path. Ranges and choices live next to each field (`param(...)`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from gvr.errors import ConfigError


def param(default: Any = dataclasses.MISSING, *, ge=None, le=None, gt=None, lt=None, choices=None,
          default_factory: Any = dataclasses.MISSING):
    """A dataclass field with range/choice checks applied at load time."""
    meta = {k: v for k, v in dict(ge=ge, le=le, gt=gt, lt=lt, choices=choices).items() if v is not None}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class StorageParams:
    """Where stage artifacts live: a local directory or an s3:// prefix."""

    root: str = "data"
    s3_endpoint_url: str | None = None  # also read from AWS_ENDPOINT_URL; None = AWS default
    s3_connect_timeout_s: float = param(10.0, gt=0)
    s3_retries: int = param(3, ge=0, le=20)


@dataclass
class TrackingParams:
    """MLflow tracking and registry names."""

    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the workspace
    experiment: str = "gvr"
    registered_model: str = "gvr"
    champion_alias: str = "champion"


@dataclass
class OrchestrationParams:
    """Prefect flow and deployment names, task retries."""

    flow_name: str = "gvr"
    deployment: str = "full-pipeline"
    retries: int = param(2, ge=0, le=10)
    retry_delay_s: float = param(30.0, ge=0)
    use_dvc: bool = True  # False: run the stage commands directly (object-store roots)


@dataclass
class ComputeParams:
    """Devices, precision and data-parallel workers."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = param("bfloat16", choices=["float32", "bfloat16", "float16"])
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance
    workers: int = param(0, ge=0)  # parallel workers for data stages; 0 = one per CPU core
    use_ray: bool = True
    seed: int = param(0, ge=0)


@dataclass
class CurateParams:
    """Curation filters (paper §4.1.1): brightness, Laplacian variance, MUSIQ, length."""

    input: str = "data/raw"  # directory or s3:// prefix of raw videos
    extensions: list[str] = param([".mp4", ".mov", ".mkv", ".webm", ".avi"])
    sample_frames: int = param(10, ge=1, le=1000)
    min_frames: int = param(77, ge=1)
    min_brightness: float = param(20.0, ge=0, le=255)
    max_brightness: float = param(235.0, ge=0, le=255)
    min_laplacian_var: float = param(30.0, ge=0)
    min_musiq: float = param(40.0, ge=0, le=100)
    musiq: bool = True  # False: skip the MUSIQ filter (no IQA weights available)
    musiq_weights: str | None = None  # local path to MUSIQ weights; None = ~/.cache/gvr/iqa, pyiqa's cache
    musiq_gpu_share: float = param(0.25, gt=0, le=1)  # GPU per Ray worker when MUSIQ runs on CUDA

    def validate(self, path: str) -> None:
        """Brightness bounds ordered, extensions spelled with a dot."""
        where = f"{path}." if path else ""
        if self.min_brightness >= self.max_brightness:
            raise ConfigError(f"{where}min_brightness: {self.min_brightness} must be below "
                              f"max_brightness ({self.max_brightness})")
        bad = [e for e in self.extensions if not e.startswith(".")]
        if bad or not self.extensions:
            raise ConfigError(f"{where}extensions: expected entries like '.mp4', got {self.extensions!r}")


@dataclass
class PairSetParams:
    """One set of training pairs (one per training stage)."""

    frames: int = param(17, ge=1)
    clips_per_video: int = param(1, ge=1)
    methods: list[str] = param(["resize"], choices=["resize", "second_order", "flow", "model_guided"])
    split: str = param("train", choices=["train", "holdout"])  # holdout: videos kept out of training


def _check_intervals(obj: Any, path: str, names: typing.Iterable[str]) -> None:
    """Each named field is a `[low, high]` pair with low <= high."""
    where = f"{path}." if path else ""
    for name in names:
        value = getattr(obj, name)
        if len(value) != 2 or value[0] > value[1]:
            raise ConfigError(f"{where}{name}: expected [low, high] with low <= high, got {value!r}")


def _check_probs(obj: Any, path: str, name: str, n: int) -> None:
    """The named field holds `n` non-negative weights with a positive sum."""
    where = f"{path}." if path else ""
    value = getattr(obj, name)
    if len(value) != n or sum(value) <= 0:
        raise ConfigError(f"{where}{name}: expected {n} non-negative weights with a positive sum, got {value!r}")


@dataclass
class DegradeRoundParams:
    """One round of the second-order degradation: blur, resize, noise, JPEG (RealBasicVSR's first round)."""

    blur_prob: float = param(1.0, ge=0, le=1)
    kernel_sizes: list[int] = param([7, 9, 11, 13, 15, 17, 19, 21], ge=3, le=41)  # odd sizes
    # weights of iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso, sinc
    kernel_probs: list[float] = param([0.405, 0.225, 0.108, 0.027, 0.108, 0.027, 0.1], ge=0)
    blur_sigma: list[float] = param([0.2, 3.0], gt=0)  # per axis, in pixels
    beta_gaussian: list[float] = param([0.5, 4.0], gt=0)  # generalized Gaussian shape
    beta_plateau: list[float] = param([1.0, 2.0], gt=0)  # plateau shape
    resize_probs: list[float] = param([0.2, 0.7, 0.1], ge=0)  # weights of up, down, keep
    resize_scale: list[float] = param([0.15, 1.5], gt=0)  # relative to the size this round starts at
    noise_prob: float = param(1.0, ge=0, le=1)
    gaussian_noise_prob: float = param(0.5, ge=0, le=1)  # otherwise Poisson noise
    gaussian_sigma: list[float] = param([1.0, 30.0], ge=0)  # on the 0..255 scale
    poisson_scale: list[float] = param([0.05, 3.0], ge=0)
    gray_noise_prob: float = param(0.4, ge=0, le=1)  # same noise in all three channels
    jpeg_prob: float = param(1.0, ge=0, le=1)
    jpeg_quality: list[int] = param([30, 95], ge=1, le=100)
    video_prob: float = param(1.0, ge=0, le=1)  # video compression (second round: in the final shuffle)

    def validate(self, path: str) -> None:
        """Intervals ordered, weights well formed, kernel sizes odd."""
        _check_intervals(self, path, ("blur_sigma", "beta_gaussian", "beta_plateau", "resize_scale",
                                      "gaussian_sigma", "poisson_scale", "jpeg_quality"))
        _check_probs(self, path, "kernel_probs", 7)
        _check_probs(self, path, "resize_probs", 3)
        where = f"{path}." if path else ""
        if not self.kernel_sizes or any(k % 2 == 0 for k in self.kernel_sizes):
            raise ConfigError(f"{where}kernel_sizes: expected odd sizes, got {self.kernel_sizes!r}")
        if not self.resize_scale[0] <= 1 <= self.resize_scale[1]:
            raise ConfigError(f"{where}resize_scale: expected low <= 1 <= high, got {self.resize_scale!r}")


@dataclass
class SecondRoundParams(DegradeRoundParams):
    """RealBasicVSR's second round: milder blur (applied with probability 0.8), resize and noise."""

    blur_prob: float = param(0.8, ge=0, le=1)
    blur_sigma: list[float] = param([0.2, 1.5], gt=0)
    resize_probs: list[float] = param([0.3, 0.4, 0.3], ge=0)
    resize_scale: list[float] = param([0.3, 1.2], gt=0)
    gaussian_sigma: list[float] = param([1.0, 25.0], ge=0)
    poisson_scale: list[float] = param([0.05, 2.5], ge=0)


@dataclass
class SecondOrderParams:
    """RealBasicVSR-style second-order degradation (Chan et al. 2022b); defaults are RealBasicVSR's."""

    first: DegradeRoundParams = field(default_factory=DegradeRoundParams)
    second: SecondRoundParams = field(default_factory=SecondRoundParams)
    interpolations: list[str] = param(["bilinear", "area", "bicubic"],
                                      choices=["nearest", "bilinear", "area", "bicubic", "lanczos"])
    codecs: list[str] = param(["libx264", "h264", "mpeg4"],
                              choices=["libx264", "h264", "mpeg4", "libx265", "hevc", "mpeg2video"])
    # bits per frame per HR pixel; RealBasicVSR's 1e4..1e5 bit/frame on 256x256 crops
    video_bpp: list[float] = param([0.15, 1.5], gt=0)
    # x264/x265 speed preset; RealBasicVSR ran FFmpeg's default (medium), veryfast is 3x faster
    video_preset: str = param("veryfast", choices=["ultrafast", "superfast", "veryfast", "faster", "fast",
                                                   "medium", "slow"])
    final_sinc_prob: float = param(0.8, ge=0, le=1)
    final_sinc_omega: list[float] = param([1.0472, 3.1416], gt=0, le=3.1416)  # cutoff, rad/pixel
    shuffle_final: bool = True  # random order of {video compression, final resize + sinc}
    drift: float = param(1.0, ge=0)  # scale of RealBasicVSR's per-frame parameter walk; 0 = fixed per clip

    def validate(self, path: str) -> None:
        """Intervals ordered, lists non-empty."""
        _check_intervals(self, path, ("video_bpp", "final_sinc_omega"))
        where = f"{path}." if path else ""
        for name in ("interpolations", "codecs"):
            if not getattr(self, name):
                raise ConfigError(f"{where}{name}: expected at least one entry")


@dataclass
class FlowDegradeParams:
    """Flow-based degradation (paper §3.3.1): motion-guided colour blending and block-wise motion blur."""

    dis_preset: str = param("medium", choices=["ultrafast", "fast", "medium"])  # OpenCV DIS optical flow
    flow_max_side: int = param(640, ge=0)  # flow on frames shrunk to this longest side; 0 = full size
    motion_threshold: float = param(1.0, gt=0)  # px/frame (input scale) from which a pixel counts as moving
    blend_prob: float = param(1.0, ge=0, le=1)  # per clip: colour blending on
    ellipses: list[int] = param([2, 12], ge=0)  # ellipses per frame
    ellipse_axis: list[float] = param([0.03, 0.10], gt=0, le=1)  # semi-major axis / short side
    ellipse_aspect: list[float] = param([0.3, 1.0], gt=0, le=1)  # semi-minor / semi-major
    ellipse_jitter: float = param(0.5, ge=0)  # std (rad) of the ellipse angle around the motion direction
    sample_spread: float = param(0.5, gt=0)  # std of the hue sampling Gaussian / ellipse axes
    samples: int = param(32, ge=1)  # hue samples per ellipse
    compensation: list[float] = param([0.5, 1.0], ge=0, le=1)  # share of the flow followed into the previous frame
    blend_strength: list[float] = param([0.3, 0.7], ge=0, le=1)  # blend weight at the ellipse centre
    blur_prob: float = param(1.0, ge=0, le=1)  # per clip: motion blur on
    block_size: int = param(32, ge=4)  # px
    blur_scale: list[float] = param([0.5, 1.5], ge=0)  # kernel length / block's mean motion, per clip
    max_blur: float = param(0.04, gt=0, le=1)  # longest kernel / short side

    def validate(self, path: str) -> None:
        """Intervals ordered."""
        _check_intervals(self, path, ("ellipses", "ellipse_axis", "ellipse_aspect", "compensation",
                                      "blend_strength", "blur_scale"))


@dataclass
class DegradeParams:
    """HR/LR pair synthesis and one-off latent encoding."""

    hr_size: list[int] = param([1088, 1920])  # (H, W) of HR clips, multiples of 16
    lr_size: list[int] = param([384, 672])  # (H, W) of LR clips, multiples of 8
    holdout_fraction: float = param(0.1, ge=0, lt=1)  # accepted videos kept out of training for evaluate
    min_holdout: int = param(1, ge=0)
    sets: dict[str, PairSetParams] = param(default_factory=lambda: {
        "stage1": PairSetParams(frames=17, methods=["second_order"]),
        "stage2": PairSetParams(frames=17, methods=["flow", "model_guided"]),
        "stage3": PairSetParams(frames=77, methods=["second_order", "flow", "model_guided"]),
        "eval": PairSetParams(frames=77, methods=["second_order"], split="holdout"),
    })
    latent_dtype: str = param("bfloat16", choices=["float32", "bfloat16", "float16"])  # on-disk latents
    model_guided_steps: int = param(50, ge=1)  # schedule length; SDEdit runs the part below alpha
    captions: str = param("sidecar", choices=["sidecar", "none"])  # sidecar: <video>.txt next to each video
    model_guided_alpha: list[float] = param([0.3, 0.4])
    shard_size: int = param(64, ge=1)  # pairs per shard file
    second_order: SecondOrderParams = field(default_factory=SecondOrderParams)
    flow: FlowDegradeParams = field(default_factory=FlowDegradeParams)


@dataclass
class CodecParams:
    """The video latent codec (3D VAE) shared by every stage; see docs/codecs.md."""

    kind: str = param("wan", choices=["tiny", "wan", "cogvideox", "hunyuan"])
    path: str | None = None  # local directory of weights; None for kind=tiny (deterministic init)
    channels: int = param(16, ge=1)  # a checkpoint with another latent channel count is refused
    allow_download: bool = False  # True: `path` may be a hub id fetched through diffusers
    device: str | None = None  # null: compute.device
    dtype: str | None = param(None, choices=["float32", "bfloat16", "float16"])  # null: compute.dtype
    tiling: bool = True  # spatial tiling of encode/decode; bounds peak memory by tile_size
    tile_size: int = param(64, ge=2)  # tile side in latent pixels (x8 video pixels); bounds peak memory
    tile_overlap: int = param(8, ge=0)  # overlap of neighbouring tiles in latent pixels, blended

    def validate(self, path: str) -> None:
        """Tiles must overlap by less than their size."""
        if self.tile_overlap >= self.tile_size:
            where = f"{path}." if path else ""
            raise ConfigError(f"{where}tile_overlap: {self.tile_overlap} must be smaller than "
                              f"tile_size ({self.tile_size})")


@dataclass
class TextParams:
    """The text encoder (T5 family) for captions; embeddings are cached by prompt hash."""

    kind: str = param("t5", choices=["none", "t5"])  # none: every prompt is the null prompt
    path: str | None = None  # local directory with the T5/umT5 encoder and its tokenizer
    dim: int = param(4096, ge=1)  # umT5-XXL width; a checkpoint of another width is refused
    max_length: int = param(512, ge=1)  # tokens; prompts are truncated, embeddings zero-padded
    device: str | None = None  # null: compute.device
    dtype: str | None = param(None, choices=["float32", "bfloat16", "float16"])  # null: compute.dtype
    batch_size: int = param(16, ge=1)  # prompts per encoder forward
    cache_dir: str | None = None  # on-disk embedding cache (safetensors); null: in memory only
    memory_cache: int = param(1024, ge=0)  # prompts kept in the in-memory cache


@dataclass
class BaseModelParams:
    """The base T2V model (model-guided degradation, end-to-end comparison)."""

    kind: str = param("wan", choices=["wan"])
    path: str | None = None  # local diffusers directory of the base transformer


@dataclass
class ModelParams:
    """SimpleGVR architecture: a preset name plus optional overrides (null = the preset's value).

    Presets live in `gvr.models.presets.PRESETS`; `gvr.models.presets.resolve` applies the overrides.
    """

    preset: str = "gvr-1b"
    latent_channels: int | None = param(None, ge=1)  # null: the preset's (or codec.channels)
    dim: int | None = param(None, ge=8)
    depth: int | None = param(None, ge=1)
    heads: int | None = param(None, ge=1)
    ffn_dim: int | None = param(None, ge=1)
    text_dim: int | None = param(None, ge=1)  # null: the preset's (or text.dim)
    # LR latent injection (paper §3.2): ours, or an ablation variant.
    upsampler: str | None = param(None, choices=["upsampler", "interpolate", "resblock_interpolate",
                                                 "token_concat"])
    upsampler_channels: int | None = param(None, ge=1)
    # 3D attention kind, one for every block (str) or one per block (list of `depth` kinds), from
    # full | temporal_unit | window | sparse_local; temporal_unit and window shift on odd blocks.
    attention: str | list[str] | None = param(None, choices=["full", "temporal_unit", "window",
                                                             "sparse_local"])
    attention_unit: int | None = param(None, ge=1)  # latent frames per temporal unit
    attention_window: list[int] | None = param(None, ge=1)  # Swin window (t, h, w) in tokens
    sparse_window: list[int] | None = param(None, ge=1)  # sparse local unit (h, w) in tokens
    sparse_topk: int | None = param(None, ge=0)
    spatial_attention: bool | None = None
    checkpointing: bool | None = None  # activation checkpointing per block
    init: str | None = None  # pretrained weights to start stage 1 from (see init_kind)
    init_kind: str = param("wan", choices=["wan", "gvr"])  # wan: diffusers Wan transformer; gvr: ours

    def validate(self, path: str) -> None:
        """Preset name, per-block attention length and window arity."""
        from gvr.models.presets import PRESETS

        where = f"{path}." if path else ""
        if self.preset not in PRESETS:
            raise ConfigError(f"{where}preset: unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        depth = self.depth if self.depth is not None else PRESETS[self.preset].depth
        if isinstance(self.attention, list) and len(self.attention) != depth:
            raise ConfigError(f"{where}attention: {len(self.attention)} kinds for {depth} blocks "
                              "(give one kind, or one per block)")
        for name, n in (("attention_window", 3), ("sparse_window", 2)):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ConfigError(f"{where}{name}: expected {n} sizes, got {value!r}")
        dim = self.dim if self.dim is not None else PRESETS[self.preset].dim
        heads = self.heads if self.heads is not None else PRESETS[self.preset].heads
        if dim % heads or (dim // heads) % 2:
            raise ConfigError(f"{where}heads: dim {dim} must split into {heads} heads of an even size")


@dataclass
class StageParams:
    """One training stage."""

    iterations: int = param(1000, ge=1)
    frames: int = param(17, ge=1)
    pairs: list[str] = param(["stage1"])  # pair sets this stage trains on (those with `frames` frames)
    # override of the model's 3D attention kind for this stage
    attention: str | None = param(None, choices=["full", "temporal_unit", "window", "sparse_local"])
    sampler: str = param("detail_aware", choices=["uniform", "detail_aware"])  # training timesteps


@dataclass
class LauncherParams:
    """How `gvr train` spreads over GPUs: the deepspeed launcher for >1 GPU or >1 node."""

    num_nodes: int = param(2, ge=1)
    gpus_per_node: int = param(8, ge=0)  # 0: CPU (gloo)
    hostfile: str | None = "infra/deepspeed/hostfile"
    master_addr: str | None = None
    master_port: int = param(29500, ge=1, le=65535)
    no_ssh: bool = False  # Kubernetes style: each node runs `gvr train` itself with node_rank
    node_rank: int = param(0, ge=0)


@dataclass
class TrainParams:
    """DeepSpeed training shared by the three stages (paper §4.1.4)."""

    lr: float = param(5e-5, gt=0)
    weight_decay: float = param(0.0, ge=0)
    betas: list[float] = param([0.9, 0.999])
    global_batch: int = param(32, ge=1)
    micro_batch: int = param(1, ge=1)
    null_prompt_prob: float = param(0.1, ge=0, le=1)
    noise_aug: list[float] = param([0.3, 0.6])  # LR noise-augmentation level t_c ~ U[a, b]
    grad_clip: float = param(1.0, ge=0)
    zero_stage: int = param(2, ge=0, le=2)  # ZeRO-3 would need a gathered export; 1B fits with ZeRO-2
    warmup_steps: int = param(0, ge=0)
    log_every: int = param(10, ge=1)
    checkpoint_every: int = param(1000, ge=1)
    keep_checkpoints: int = param(2, ge=1)  # newest checkpoint tags kept per stage
    seed: int = param(0, ge=0)
    stages: dict[str, StageParams] = param(default_factory=lambda: {
        # Stage 1 is the uniform-trained model the detail-aware distribution is derived from.
        "stage1": StageParams(iterations=20000, frames=17, pairs=["stage1"], sampler="uniform"),
        "stage2": StageParams(iterations=10000, frames=17, pairs=["stage1", "stage2"]),
        "stage3": StageParams(iterations=5000, frames=77, pairs=["stage3"], attention="temporal_unit"),
    })
    launcher: LauncherParams = field(default_factory=lambda: LauncherParams())
    loader_workers: int = param(2, ge=0)


@dataclass
class SamplerParams:
    """Detail-aware timestep distribution derivation (paper §3.4)."""

    clips: int = param(200, ge=1)
    steps: int = param(50, ge=2)
    bins: int = param(1000, ge=2)
    high_freq_cutoff: float = param(0.5, gt=0, lt=1)
    noise_aug: float = param(0.3, ge=0, le=1)  # fixed LR noise level of the inference runs
    uniform_floor: float = param(0.05, ge=0, lt=1)  # probability mass kept uniform over t (see timesteps)


@dataclass
class EvaluateParams:
    """Held-out evaluation: sampling, metrics, baselines."""

    steps: int = param(50, ge=1)
    noise_aug: float = param(0.3, ge=0, le=1)  # fixed LR noise level at inference
    guidance: float = param(1.0, ge=0)  # classifier-free guidance scale; 1 = off
    max_clips: int = param(100, ge=1)
    # psnr, ssim (full reference), warp_error (temporal, Lai et al. 2018), and no-reference
    # musiq / niqe through pyiqa from local weights (`iqa_weights`, else curate.musiq_weights / cache)
    metrics: list[str] = param(["psnr", "ssim", "warp_error", "musiq"],
                               choices=["psnr", "ssim", "warp_error", "musiq", "niqe"])
    iqa_weights: dict[str, str] = param(default_factory=dict)
    iqa_frames: int = param(10, ge=1)  # frames per clip scored by no-reference metrics
    baselines: list[str] = param(["bilinear"], choices=["bilinear"])
    seed: int = param(0, ge=0)


@dataclass
class RegisterParams:
    """Model registry promotion rule: alias moves when `metric` beats the champion by `min_delta`.

    Generative super-resolution trades PSNR for detail, so the paper-scale rule ranks models by a
    no-reference perceptual metric (MUSIQ, as the paper reports) and asks them to beat the bilinear
    baseline on it; profiles without IQA weights rank by PSNR.
    """

    metric: str = "musiq"
    mode: str = param("max", choices=["max", "min"])
    min_delta: float = 0.0
    require_beats_baseline: bool = True


@dataclass
class UpscaleParams:
    """Batch upscaling defaults."""

    steps: int = param(50, ge=1)
    noise_aug: float = param(0.3, ge=0, le=1)
    guidance: float = param(1.0, ge=0)
    fps: float = param(16.0, gt=0)  # output frame rate for latent inputs (videos keep theirs)
    short_side: int = param(1088, ge=16)  # HR short side in pixels; the aspect ratio follows the input
    seed: int = param(0, ge=0)


@dataclass
class Params:
    """All of params.yaml."""

    profile: str | None = None
    storage: StorageParams = field(default_factory=StorageParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    orchestration: OrchestrationParams = field(default_factory=OrchestrationParams)
    compute: ComputeParams = field(default_factory=ComputeParams)
    curate: CurateParams = field(default_factory=CurateParams)
    degrade: DegradeParams = field(default_factory=DegradeParams)
    codec: CodecParams = field(default_factory=CodecParams)
    text: TextParams = field(default_factory=TextParams)
    base: BaseModelParams = field(default_factory=BaseModelParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    sampler: SamplerParams = field(default_factory=SamplerParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    upscale: UpscaleParams = field(default_factory=UpscaleParams)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for logging and for embedding in checkpoints)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp`, converting where lossless (int -> float, list -> dataclass)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN
                raise ConfigError(f"{path}: NaN is not allowed")
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def _check_range(value: Any, meta: typing.Mapping[str, Any], path: str) -> None:
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    for v in items:
        if "choices" in meta and v not in meta["choices"]:
            raise ConfigError(f"{path}: {v!r} is not one of {list(meta['choices'])}")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            if key in meta and not ok(v, meta[key]):
                raise ConfigError(f"{path}: {v!r} is out of range (must be {word} {meta[key]})")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'params'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{key_path}: unknown key (known keys here: {known})")
        kwargs[key] = _coerce(value, hints[key], key_path)
        _check_range(kwargs[key], fields[key].metadata, key_path)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value`; the value is parsed as YAML (numbers, lists, null, true/false)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or "." not in key and key != "profile":
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_dict(raw: dict[str, Any], profile: str | None = None,
                 overrides: typing.Iterable[str] = ()) -> dict[str, Any]:
    """Apply profile and overrides to raw params data; no validation."""
    data = copy.deepcopy(raw)
    parsed = [parse_override(o) for o in overrides]
    for key, value in parsed:  # a --set profile=... picks the profile too
        if key == "profile":
            profile = value
    profile = profile if profile is not None else data.get("profile")
    if profile:
        profiles = data.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"profile: unknown profile {profile!r} (defined: {', '.join(sorted(profiles)) or 'none'})")
        data = _deep_merge(data, profiles[profile] or {})
        data["profile"] = profile
    for key, value in parsed:
        if key != "profile":
            _set_dotted(data, key, value)
    return data


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def find_params_file() -> Path | None:
    """params.yaml in the working directory, else the one at the project root, else None."""
    for candidate in (Path.cwd() / "params.yaml", PROJECT_ROOT / "params.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_params(path: str | Path | None = None, profile: str | None = None,
                overrides: typing.Iterable[str] = ()) -> Params:
    """Load params.yaml, apply profile and overrides, validate.

    `path=None` looks for params.yaml in the working directory, then at the project root, and falls
    back to the dataclass defaults (paper scale, no profiles) when neither exists.
    """
    path = Path(path) if path is not None else find_params_file()
    raw = read_params_file(path) if path is not None else {}
    data = resolve_dict(raw, profile, overrides)
    return _build(Params, data, "")


def read_params_file(path: str | Path) -> dict[str, Any]:
    """Read a params YAML file into plain data, with one clear error if it is missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def resolved_dict(params: Params) -> dict[str, Any]:
    """Params as plain data with the profile already applied: no `profile`, no `profiles` to re-apply."""
    data = params.to_dict()
    data["profile"], data["profiles"] = None, {}
    return data


def params_to_json(params: Params) -> str:
    """Resolved params as JSON, loadable with `params_from_json`."""
    return json.dumps(resolved_dict(params))


def params_from_json(text: str) -> Params:
    """Rebuild Params from the JSON embedded in a checkpoint or model artifact."""
    return _build(Params, json.loads(text), "")
