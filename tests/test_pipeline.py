"""GVRPipeline with the real tiny codec and the null text encoder: shapes, sizes, seeds, long videos."""

import dataclasses

import numpy as np
import pytest
import torch

from gvr.config import CodecParams, TextParams
from gvr.errors import InputError
from gvr.models.presets import PRESETS, build_model
from gvr.models.text import load_text_encoder
from gvr.models.vae import load_codec
from gvr.pipeline import GVRPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = PRESETS["gvr-tiny"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():  # a fresh model predicts 0; give it some signal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return GVRPipeline(model, load_codec("tiny", channels=16), load_text_encoder("none", dim=TINY.text_dim))


def lr_latent(b=1, t=2, h=4, w=6, seed=0):
    return torch.randn(b, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


def test_latent_in_video_out_with_any_aspect_ratio(pipe):
    out = pipe(lr_latent(b=2), prompt=["a cat", "a dog"], hr_size=(72, 40), steps=3)
    assert out.latent.shape == (2, 16, 2, 10, 6)  # 72x40 px rounded up to 80x48 -> 10x6 latent
    assert out.video.shape == (2, 3, 5, 72, 40)  # cropped back; 2 latent frames -> 5 frames
    assert out.video.abs().max() <= 1.0 and torch.isfinite(out.latent).all()


def test_video_in_and_sizes_from_scale_or_latent(pipe):
    frames = np.random.default_rng(0).integers(0, 256, size=(9, 32, 48, 3), dtype=np.uint8)
    out = pipe(lr_video=frames, steps=2, scale=1.5)
    assert out.latent.shape == (1, 16, 3, 6, 10) and out.video.shape == (1, 3, 9, 48, 80)
    out = pipe(lr_latent(), steps=2, hr_latent_size=(6, 8), decode=False)
    assert out.latent.shape == (1, 16, 2, 6, 8) and out.video is None


def test_seeded_and_independent_of_the_batch(pipe):
    a = pipe(lr_latent(b=2), steps=3, seed=5, decode=False).latent
    b = pipe(lr_latent(b=2), steps=3, seed=5, decode=False).latent
    c = pipe(lr_latent(b=2), steps=3, seed=6, decode=False).latent
    assert torch.equal(a, b) and not torch.allclose(a, c)
    second = pipe(lr_latent(b=2)[1:], steps=3, seed=6, decode=False).latent  # clip 1 of seed 5 = seed 6
    assert torch.equal(second[0], a[1])


def test_output_follows_the_lr_input_and_guidance(pipe):
    base = pipe(lr_latent(seed=0), steps=3, decode=False).latent
    other = pipe(lr_latent(seed=1), steps=3, decode=False).latent
    lower_aug = pipe(lr_latent(seed=0), steps=3, noise_aug=0.0, decode=False).latent
    guided = pipe(lr_latent(seed=0), steps=3, guidance=3.0, decode=False).latent
    assert not torch.allclose(base, other) and not torch.allclose(base, lower_aug)
    assert torch.isfinite(guided).all()


def test_long_videos_use_temporal_units_for_the_call(pipe):
    seen = []
    hook = pipe.model.blocks[1].attn3d.register_forward_pre_hook(
        lambda mod, args: seen.append(pipe.model.blocks[1].attn_opts.get("shift")))
    try:
        pipe(lr_latent(t=TINY.train_latent_frames + 3), steps=1, decode=False)
        assert seen == [True]  # shifted temporal units on the odd block
        pipe(lr_latent(t=2), steps=1, decode=False)
        assert seen[-1] is None  # short clips keep full attention
    finally:
        hook.remove()
    assert pipe.model.cfg.attention == TINY.attention


def test_from_pretrained_builds_codec_and_text_encoder(tmp_path, pipe):
    codec = dataclasses.asdict(CodecParams(kind="tiny", channels=16, device="cpu", dtype="float32"))
    text = dataclasses.asdict(TextParams(kind="none", dim=TINY.text_dim, max_length=1, device="cpu",
                                         dtype="float32"))
    pipe.model.save_pretrained(tmp_path, extra={"codec": codec, "text": text})
    loaded = GVRPipeline.from_pretrained(tmp_path)
    a = loaded(lr_latent(), steps=2, seed=1)
    b = pipe(lr_latent(), steps=2, seed=1)
    assert torch.allclose(a.latent, b.latent, atol=1e-6) and torch.allclose(a.video, b.video, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one"),
    (dict(lr_latent=torch.randn(1, 16, 2, 4, 6), lr_video=torch.zeros(1, 3, 5, 32, 48)), "exactly one"),
    (dict(lr_latent=torch.randn(1, 8, 2, 4, 6)), "lr_latent"),
    (dict(lr_latent=torch.randn(1, 16, 2, 4, 6), hr_latent_size=(7, 8)), "hr_latent_size"),
    (dict(lr_latent=torch.randn(2, 16, 2, 4, 6), prompt=["one"]), "prompts"),
    (dict(lr_video=np.zeros((5, 30, 48, 3), dtype=np.uint8)), "multiples of 8"),
])
def test_bad_calls_raise_one_clear_error(pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        pipe(steps=1, **kwargs)


def test_without_codec_only_latents(pipe):
    bare = GVRPipeline(pipe.model, None, pipe.text_encoder)
    assert bare(lr_latent(), steps=1, decode=False).latent.shape == (1, 16, 2, 8, 12)
    with pytest.raises(InputError, match="codec"):
        bare(lr_latent(), steps=1)
