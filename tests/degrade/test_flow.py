"""Flow-based degradation: static areas untouched, moving areas blended and blurred along the motion."""

import cv2
import numpy as np
import pytest

from gvr.config import FlowDegradeParams, load_params
from gvr.degrade import flow
from gvr.errors import ConfigError, InputError

H, W, SQ, Y0, X0, SPEED = 96, 128, 24, 36, 20, 4


def texture(h, w, rng, sigma):
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    return cv2.normalize(t, None, 0, 255, cv2.NORM_MINMAX)


def moving_square_clip(t=9, speed=SPEED, seed=0):
    """A textured red square moving right by `speed` px/frame over a static textured background."""
    rng = np.random.default_rng(seed)
    bg = texture(H, W, rng, 1.5)
    square = 0.5 * texture(SQ, SQ, rng, 1.0) + np.array([120, 10, 10], np.float32)
    frames = []
    for i in range(t):
        f = bg.copy()
        f[Y0:Y0 + SQ, X0 + speed * i:X0 + speed * i + SQ] = square
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def near_motion(t=9, margin=16):
    """Pixels within `margin` of anywhere the square goes."""
    mask = np.zeros((H, W), bool)
    mask[Y0 - margin:Y0 + SQ + margin, X0 - margin:X0 + SPEED * (t - 1) + SQ + margin] = True
    return mask


def square_area(i, inset=3):
    x = X0 + SPEED * i
    return np.s_[Y0 + inset:Y0 + SQ - inset, x + inset:x + SQ - inset]


def test_shape_dtype_and_determinism():
    frames = moving_square_clip()
    a = flow.degrade_video(frames, np.random.default_rng(0))
    b = flow.degrade_video(frames, np.random.default_rng(0))
    c = flow.degrade_video(frames, np.random.default_rng(1))
    assert a.shape == frames.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_static_regions_stay_and_moving_regions_change():
    frames = moving_square_clip()
    out = flow.degrade_video(frames, np.random.default_rng(0))
    diff = np.abs(out.astype(int) - frames).max(-1)  # (T, H, W)
    assert diff[:, ~near_motion()].max() <= 2
    moved = [diff[i][square_area(i, inset=0)].mean() for i in range(1, len(frames))]
    assert np.mean(moved) > 3.0, moved


@pytest.mark.parametrize("shape", [(2, 2, 2), (3, 9, 17), (2, 64, 96)])
def test_tiny_clips_work(shape):
    frames = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
    assert flow.degrade_video(frames, np.random.default_rng(0)).shape == frames.shape


def test_clip_without_motion_is_unchanged():
    frames = np.repeat(moving_square_clip(t=1), 4, axis=0)
    np.testing.assert_array_equal(flow.degrade_video(frames, np.random.default_rng(0)), frames)


def gradients(img):
    """Mean absolute horizontal and vertical differences of the grey image."""
    g = img.astype(np.float32).mean(-1)
    return np.abs(np.diff(g, axis=1)).mean(), np.abs(np.diff(g, axis=0)).mean()


def test_motion_blur_follows_the_motion_direction():
    frames = moving_square_clip()
    cfg = FlowDegradeParams(blend_prob=0.0, blur_scale=[1.5, 1.5])
    out = flow.degrade_video(frames, np.random.default_rng(0), cfg)
    before = np.mean([gradients(frames[i][square_area(i)]) for i in range(1, 9)], 0)
    after = np.mean([gradients(out[i][square_area(i)]) for i in range(1, 9)], 0)
    gx, gy = after / before
    assert gx < 0.85 and gx < gy  # the horizontal motion smears horizontal detail most


@pytest.mark.parametrize("block", [8, 32])
def test_block_blur_kernel_takes_the_local_motion_angle(block):
    img = texture(H, W, np.random.default_rng(0), 1.0)
    weight = np.ones((H, W), np.float32)
    horizontal = flow.motion_blur(img, np.full((H, W, 2), [6.0, 0.0], np.float32), weight, 1.0, 10.0, block)
    vertical = flow.motion_blur(img, np.full((H, W, 2), [0.0, 6.0], np.float32), weight, 1.0, 10.0, block)
    (hx, hy), (vx, vy) = gradients(horizontal), gradients(vertical)
    assert hx < 0.7 * vx and vy < 0.7 * hy
    still = flow.motion_blur(img, np.zeros((H, W, 2), np.float32), weight, 1.0, 10.0, block)
    np.testing.assert_array_equal(still, img)


def test_colour_blending_pulls_in_previous_frame_hues():
    frames = moving_square_clip()
    cfg = FlowDegradeParams(blur_prob=0.0, ellipses=[12, 12], blend_strength=[0.7, 0.7])
    out = flow.degrade_video(frames, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out[0], frames[0])  # no previous frame
    diff = np.abs(out.astype(int) - frames).max(-1)
    assert diff[:, ~near_motion()].max() == 0
    assert diff[1:, near_motion()].max() > 10


def test_flow_points_to_the_previous_frame():
    frames = moving_square_clip()
    flows = flow.flows_to_previous(frames)
    assert flows.shape == (9, H, W, 2)
    dx = flows[4][square_area(4, inset=6)][..., 0]
    assert -SPEED - 1.5 < np.median(dx) < -SPEED / 2  # content came from the left
    assert np.abs(flows[4][:20, :20]).max() < 0.5  # static corner


def test_flow_on_shrunk_frames_is_in_input_pixels():
    small = moving_square_clip()
    frames = np.stack([cv2.resize(f, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC) for f in small])
    full = flow.flows_to_previous(frames, max_side=0)
    half = flow.flows_to_previous(frames, max_side=W)
    y, x = 2 * Y0 + 12, 2 * (X0 + 4 * SPEED) + 12
    area = np.s_[y:y + 2 * SQ - 24, x:x + 2 * SQ - 24]
    assert half.shape == full.shape == (9, 2 * H, 2 * W, 2)
    assert np.median(half[4][area][..., 0]) == pytest.approx(-2 * SPEED, abs=2.0)
    assert np.median(full[4][area][..., 0]) == pytest.approx(-2 * SPEED, abs=2.0)


@pytest.mark.parametrize("length, angle", [(5.0, 0.0), (7.5, np.pi / 4), (3.2, 1.0), (1.0, 0.3)])
def test_line_kernel_is_normalised_and_oriented(length, angle):
    k = flow.line_kernel(length, angle)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    ys, xs = np.mgrid[:k.shape[0], :k.shape[1]] - k.shape[0] // 2
    along = (xs * np.cos(angle) + ys * np.sin(angle)) ** 2
    across = (-xs * np.sin(angle) + ys * np.cos(angle)) ** 2
    assert (k * across).sum() <= (k * along).sum() + 0.25


@pytest.mark.parametrize("n, block", [(96, 32), (100, 32), (20, 32), (7, 4)])
def test_tent_weights_partition_unity(n, block):
    w = flow._tent_weights(n, block)
    assert w.shape == (-(-n // block), n)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    assert (w >= 0).all()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 32, 32, 3), np.uint8), "at least 2 frames"),
    (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((4, 32, 32, 4), np.uint8), "(T, H, W, 3)"),
])
def test_bad_input_raises_input_error(bad, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flow.degrade_video(bad, np.random.default_rng(0))


def test_params_section_loads_and_validates():
    params = load_params(None, overrides=["degrade.flow.block_size=16", "degrade.flow.dis_preset=fast"])
    assert params.degrade.flow.block_size == 16 and params.degrade.flow.dis_preset == "fast"
    with pytest.raises(ConfigError, match="degrade.flow.blend_strength"):
        load_params(None, overrides=["degrade.flow.blend_strength=[0.9, 0.1]"])
    with pytest.raises(ConfigError, match="degrade.flow.dis_preset"):
        load_params(None, overrides=["degrade.flow.dis_preset=slow"])
