"""Video codecs: the frame rule, the tiny codec's reconstruction, tiling, diffusers loaders, errors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gvr.config import CodecParams, load_params
from gvr.errors import ConfigError, InputError
from gvr.models.vae import (
    DiffusersCodec,
    Tiling,
    TinyCodec,
    VideoCodec,
    codec_from_params,
    load_codec,
    tile_spans,
)


def natural_video(frames: int, height: int, width: int, seed: int = 0, speed: int = 1) -> torch.Tensor:
    """A (1, 3, T, H, W) clip in [-1, 1]: a smooth (1/f^1.5 amplitude) colour texture panning `speed` px per frame."""
    rng = np.random.default_rng(seed)
    big_h, big_w = height + speed * frames, width + speed * frames
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(big_h), np.fft.fftfreq(big_w), indexing="ij"))
    f[0, 0] = 1.0
    img = np.stack([np.fft.ifft2(np.fft.fft2(rng.standard_normal((big_h, big_w))) / f**1.5).real for _ in range(3)], -1)
    img = 0.7 * img.mean(-1, keepdims=True) + 0.3 * img  # colours correlate, as in real footage
    img = 0.5 * (img - img.mean()) / img.std()
    clip = np.stack([img[t * speed:t * speed + height, t * speed:t * speed + width] for t in range(frames)])
    return torch.from_numpy(np.clip(clip, -1, 1)).float().permute(3, 0, 1, 2)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())  # peak-to-peak 2 in [-1, 1]


def block_pool(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Each (frames, 8, 8) block replaced by its mean."""
    return F.interpolate(F.avg_pool3d(x, (frames, 8, 8)), scale_factor=(frames, 8, 8), mode="nearest")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# --------------------------------------------------------------------------------------------
# The tiny codec and the frame rule
# --------------------------------------------------------------------------------------------


def test_tiny_shapes_follow_the_latent_layout():
    codec = load_codec("tiny")
    video = natural_video(9, 32, 48).repeat(2, 1, 1, 1, 1)
    latent = codec.encode(video)
    assert latent.shape == (2, 16, 3, 4, 6)
    assert codec.latent_shape(9, 32, 48) == tuple(latent.shape[1:])
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (16, 8, 4)
    assert codec.decode(latent).shape == video.shape


def test_frames_not_4k_plus_1_pad_with_the_last_frame_and_trim_back():
    codec = load_codec("tiny")
    video = natural_video(6, 16, 16)
    padded = torch.cat([video, video[:, :, -1:].repeat(1, 1, 3, 1, 1)], dim=2)  # 6 -> 9 frames
    latent = codec.encode(video)
    assert latent.shape[2] == 3 == codec.latent_shape(6, 16, 16)[1]
    torch.testing.assert_close(latent, codec.encode(padded))
    assert codec.decode(latent).shape[2] == 9
    trimmed = codec.decode(latent, frames=6)
    torch.testing.assert_close(trimmed, codec.decode(latent)[:, :, :6])
    for frames in (5, 10):  # 3 latent frames come from clips of 6..9 frames only
        with pytest.raises(InputError, match="frames"):
            codec.decode(latent, frames=frames)


def test_tiny_codec_reconstructs_natural_video():
    video = natural_video(17, 64, 96)
    recon = {c: load_codec("tiny", channels=c).decode(load_codec("tiny", channels=c).encode(video)) for c in (4, 16)}
    # baseline: each 8x8 block's colour mean over its frames (latent frame 0 alone, then groups of 4)
    block_mean = torch.cat([block_pool(video[:, :, :1], 1), block_pool(video[:, :, 1:], 4)], dim=2)
    assert psnr(recon[16], video) > psnr(block_mean, video) + 2.0
    assert psnr(recon[16], video) > psnr(recon[4], video) + 1.0  # more atoms, more detail
    # the same content held still has no motion to lose, so it comes back sharper
    static = video[:, :, :1].repeat(1, 1, 17, 1, 1)
    codec = load_codec("tiny")
    assert psnr(codec.decode(codec.encode(static)), static) > psnr(recon[16], video) + 0.5


def test_tiny_latents_have_roughly_unit_variance():
    latent = load_codec("tiny").encode(natural_video(17, 64, 96, seed=1))
    std = latent.std(dim=(0, 2, 3, 4))
    # raw coefficients would range from ~14 (the DC of a 768-pixel block) to ~0.01 (high frequencies)
    assert 0.25 < std.median() < 4.0 and std.max() < 4.0 and std.min() > 0.02, std
    assert latent.mean().abs() < 0.5


def test_tiny_codec_is_causal():
    codec = load_codec("tiny")
    video = natural_video(9, 16, 16)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]  # only pixel frames of latent frame 2
    a, b = codec.encode(video), codec.encode(changed)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_tiny_codec_is_deterministic_and_round_trips_through_a_file(tmp_path):
    a, b = TinyCodec(8), TinyCodec(8)
    torch.testing.assert_close(a.atoms, b.atoms)
    a.save(tmp_path / "codec.safetensors")
    loaded = load_codec("tiny", tmp_path, channels=8)
    video = natural_video(5, 16, 24)
    torch.testing.assert_close(loaded.encode(video), a.encode(video))
    with pytest.raises(InputError, match=r"codec\.safetensors.*8 latent channels.*16"):
        load_codec("tiny", tmp_path / "codec.safetensors", channels=16)
    with pytest.raises(InputError, match="does not exist"):
        load_codec("tiny", tmp_path / "missing.safetensors")


def test_output_follows_the_input_device_and_dtype():
    codec = load_codec("tiny", dtype="float64")
    assert codec.dtype == torch.float64
    video = natural_video(5, 16, 16)
    latent = codec.encode(video)
    assert latent.dtype == torch.float32
    assert codec.decode(latent.half()).dtype == torch.float16


@pytest.mark.parametrize("video, message", [
    (torch.zeros(3, 5, 16, 16), r"\(B, 3, T, H, W\)"),
    (torch.zeros(1, 4, 5, 16, 16), r"\(B, 3, T, H, W\)"),
    (torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8), "floating point"),
    (torch.full((1, 3, 5, 16, 16), float("nan")), "NaN"),
    (torch.zeros(1, 3, 5, 20, 16), "multiples of 8"),
    (torch.full((1, 3, 5, 16, 16), 200.0), "0-255"),
    (torch.zeros(1, 3, 0, 16, 16), "empty"),
])
def test_bad_videos_fail_with_one_clear_message(video, message):
    with pytest.raises(InputError, match=message):
        load_codec("tiny").encode(video)


@pytest.mark.parametrize("latent, message", [
    (torch.zeros(1, 8, 2, 2, 2), r"\(B, 16, t, h, w\)"),
    (torch.zeros(1, 16, 2, 2, 2, dtype=torch.int64), "floating point"),
    (torch.full((1, 16, 2, 2, 2), float("inf")), "NaN or Inf"),
])
def test_bad_latents_fail_with_one_clear_message(latent, message):
    with pytest.raises(InputError, match=message):
        load_codec("tiny").decode(latent)


# --------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------


class LocalConvCodec(VideoCodec):
    """Random convolutional codec whose outputs see one latent pixel around them: tiling must be exact."""

    kind = "local"

    def __init__(self, channels: int = 4):
        super().__init__(channels, torch.zeros(channels), torch.ones(channels), Tiling(False))
        self.down = nn.Conv3d(3, channels, (1, 8, 8), stride=(1, 8, 8))
        self.enc = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))
        self.dec = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))
        self.up = nn.ConvTranspose3d(channels, 3, (1, 8, 8), stride=(1, 8, 8))

    def encode_raw(self, video):
        return self.enc(torch.tanh(self.down(video[:, :, ::4])))

    def decode_raw(self, latent):
        video = self.up(torch.tanh(self.dec(latent)))  # (B, 3, t, H, W)
        return torch.cat([video[:, :, :1], video[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)


def test_tile_spans_cover_the_extent_with_few_equal_tiles():
    assert tile_spans(5, 8, 2) == [(0, 5)]
    assert tile_spans(136, 64, 8) == [(0, 51), (42, 51), (85, 51)]
    for length, size, overlap in ((13, 6, 4), (136, 32, 8), (240, 64, 8), (17, 5, 1), (9, 8, 0)):
        spans = tile_spans(length, size, overlap)
        assert spans[0][0] == 0 and sum(spans[-1]) == length
        assert all(extent <= size for _, extent in spans)
        assert all(a + n - b >= overlap for (a, n), (b, _) in zip(spans, spans[1:]))
        fewest = math.ceil((length - overlap) / (size - overlap))
        assert len(spans) == fewest


@pytest.mark.parametrize("size, overlap", [(6, 4), (9, 4), (5, 4)])
def test_tiling_is_exact_for_a_local_codec(size, overlap):
    """Blending discards each tile's outer quarter-overlap, where a convolution sees zero padding."""
    codec = LocalConvCodec()
    video = natural_video(5, 13 * 8, 17 * 8)  # 13 x 17 latent pixels: edge tiles are flush, not regular
    latent, recon = codec.encode(video), codec.decode(codec.encode(video))
    codec.tiling = Tiling(True, size, overlap)
    torch.testing.assert_close(codec.encode(video), latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codec.decode(latent), recon, atol=1e-5, rtol=1e-5)


def test_tiling_never_changes_the_tiny_codec():
    video = natural_video(5, 96, 136)
    whole = load_codec("tiny", tiling=False)
    tiled = load_codec("tiny", tile_size=4, tile_overlap=2)
    latent = whole.encode(video)
    torch.testing.assert_close(tiled.encode(video), latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.decode(latent), whole.decode(latent), atol=1e-5, rtol=1e-5)


def test_tiling_the_wan_vae_stays_close_and_overlap_removes_seams():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    codec = DiffusersCodec("wan", vae, Tiling(False))
    video = natural_video(1, 64, 96)
    latent, recon = codec.encode(video), codec.decode(codec.encode(video))
    errors = {}
    for overlap in (0, 6):
        codec.tiling = Tiling(True, 8, overlap)
        errors[overlap] = rel(codec.encode(video), latent), rel(codec.decode(latent), recon)
    # random weights see far past a tile (trained VAEs are far more local), yet blending keeps it close
    assert max(errors[6]) < 0.08, errors
    assert errors[6][0] < errors[0][0] and errors[6][1] < 0.5 * errors[0][1], errors


# --------------------------------------------------------------------------------------------
# diffusers VAEs from local directories
# --------------------------------------------------------------------------------------------


def _save_wan(directory, **config):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    cfg = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
               latents_mean=[0.5, -0.2, 0.1, 0.0], latents_std=[2.0, 0.5, 1.0, 4.0])
    vae = AutoencoderKLWan(**{**cfg, **config}).eval()
    vae.save_pretrained(directory)
    return vae


def test_wan_loads_from_a_pipeline_directory_and_normalises_per_channel(tmp_path):
    pytest.importorskip("diffusers")
    vae = _save_wan(tmp_path / "vae")  # the layout of a Wan2.1-*-Diffusers checkout
    codec = load_codec("wan", tmp_path, channels=4, tiling=False)
    assert (codec.kind, codec.latent_channels) == ("wan", 4)
    video = natural_video(5, 16, 24)
    latent = codec.encode(video)
    mean, std = torch.tensor([0.5, -0.2, 0.1, 0.0]).view(1, 4, 1, 1, 1), torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        raw = vae.encode(video).latent_dist.mode()
        torch.testing.assert_close(latent, (raw - mean) / std, atol=1e-5, rtol=1e-4)
        expected = vae.decode(latent * std + mean).sample
    torch.testing.assert_close(codec.decode(latent), expected, atol=1e-5, rtol=1e-4)


def test_wan_honours_dtype(tmp_path):
    pytest.importorskip("diffusers")
    _save_wan(tmp_path)
    codec = load_codec("wan", tmp_path, dtype="bfloat16")
    assert codec.dtype == torch.bfloat16
    video = natural_video(1, 16, 16)
    latent = codec.encode(video)
    assert latent.dtype == torch.float32 and latent.shape == (1, 4, 1, 2, 2)
    assert rel(latent, load_codec("wan", tmp_path).encode(video)) < 0.05


def test_wan_checkpoint_mismatches_fail_naming_path_and_mismatch(tmp_path):
    pytest.importorskip("diffusers")
    _save_wan(tmp_path / "ok")
    with pytest.raises(InputError, match=r"ok has 4 latent channels but codec.channels is 16"):
        load_codec("wan", tmp_path / "ok", channels=16)
    _save_wan(tmp_path / "coarse", scale_factor_spatial=16)
    with pytest.raises(InputError, match=r"coarse compresses 16x spatially"):
        load_codec("wan", tmp_path / "coarse")
    with pytest.raises(InputError, match=r"missing.*does not exist"):
        load_codec("wan", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty has no config.json"):
        load_codec("wan", tmp_path / "empty")
    with pytest.raises(InputError, match="allow_download"):
        load_codec("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    with pytest.raises(InputError, match="unknown codec kind"):
        load_codec("sd")


@pytest.mark.parametrize("kind", ["cogvideox", "hunyuan"])
def test_scaling_factor_codecs_load_and_keep_the_frame_rule(tmp_path, kind):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    common = dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4)
    if kind == "cogvideox":
        vae = diffusers.AutoencoderKLCogVideoX(**common, scaling_factor=0.7)
    else:
        blocks = dict(down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4)
        vae = diffusers.AutoencoderKLHunyuanVideo(**common, **blocks, scaling_factor=0.5)
    vae.save_pretrained(tmp_path)
    codec = load_codec(kind, tmp_path, channels=4)
    video = natural_video(5, 16, 16)
    latent = codec.encode(video)
    with torch.no_grad():
        raw = vae.eval().encode(video).latent_dist.mode()
    torch.testing.assert_close(latent, raw * vae.config.scaling_factor, atol=1e-5, rtol=1e-4)
    assert codec.decode(latent).shape == (1, 3, 5, 16, 16)  # 2 latent frames -> 4 * 1 + 1 frames


def test_codec_from_params_applies_every_field():
    codec = codec_from_params(CodecParams(kind="tiny", channels=8, tile_size=6, tile_overlap=2), device="cpu")
    assert isinstance(codec, TinyCodec) and codec.latent_channels == 8
    assert codec.tiling == Tiling(True, 6, 2)
    assert codec.device == torch.device("cpu")
    with pytest.raises(ConfigError, match="codec.tile_overlap"):
        load_params(overrides=["codec.tile_size=8", "codec.tile_overlap=8"])


@pytest.mark.gpu
def test_tiny_codec_on_gpu_matches_cpu():
    video = natural_video(9, 64, 96)
    cpu = load_codec("tiny").encode(video)
    gpu = load_codec("tiny", device="cuda").encode(video.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
