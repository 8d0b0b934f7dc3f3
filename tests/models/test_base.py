"""Base T2V model: the Wan adapter's velocity convention, loading checks, and SDEdit degradation."""

import pytest
import torch

from gvr.errors import InputError
from gvr.models.base import BaseT2V, load_base_model, sdedit

diffusers = pytest.importorskip("diffusers")


def tiny_wan_transformer():
    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32).eval()


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wan")
    tiny_wan_transformer().save_pretrained(directory / "transformer")  # a *-Diffusers pipeline layout
    return directory


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 3, 4, 6, generator=g)
    text = torch.randn(batch, 5, 16, generator=g)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])[:batch]
    return x, text, mask


def test_wan_velocity_is_the_transformer_at_1000_t_with_zero_padded_text(wan_dir):
    model = load_base_model("wan", wan_dir, channels=4, text_dim=16)
    x, text, mask = inputs()
    t = torch.tensor([0.3, 0.8])
    v = model.velocity(x, t, text, mask)
    with torch.no_grad():
        expected = tiny_wan_transformer()(hidden_states=x, timestep=t * 1000,
                                          encoder_hidden_states=text * mask[..., None], return_dict=False)[0]
    torch.testing.assert_close(v, expected)
    noisy_padding = text.clone()
    noisy_padding[~mask] = 100.0  # masked tokens must not matter
    torch.testing.assert_close(model.velocity(x, t, noisy_padding, mask), v)


def test_wan_honours_dtype(wan_dir):
    model = load_base_model("wan", wan_dir, dtype="bfloat16")
    assert model.transformer.patch_embedding.weight.dtype == torch.bfloat16
    x, text, mask = inputs()
    v = model.velocity(x, torch.tensor([0.5, 0.5]), text, mask)
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()


def test_loading_checks_name_the_path_and_the_mismatch(wan_dir, tmp_path):
    with pytest.raises(InputError, match=r"has 4 latent channels, expected 16"):
        load_base_model("wan", wan_dir, channels=16)
    with pytest.raises(InputError, match=r"has 16 text width, expected 4096"):
        load_base_model("wan", wan_dir, text_dim=4096)
    with pytest.raises(InputError, match=r"gone.*does not exist"):
        load_base_model("wan", tmp_path / "gone")
    with pytest.raises(InputError, match="unknown base model kind"):
        load_base_model("sora", wan_dir)


def test_bad_inputs_fail_with_one_clear_message(wan_dir):
    model = load_base_model("wan", wan_dir)
    x, text, mask = inputs()
    t = torch.tensor([0.5, 0.5])
    with pytest.raises(InputError, match=r"x_t must be \(B, 4, T, H, W\)"):
        model.velocity(x[:, :3], t, text, mask)
    with pytest.raises(InputError, match=r"text_emb must be \(2, L, 16\)"):
        model.velocity(x, t, text[..., :8], mask)
    with pytest.raises(InputError, match="patch size"):
        model.velocity(x[..., :5], t, text, mask)
    with pytest.raises(InputError, match=r"t must be \(2,\)"):
        model.velocity(x, torch.tensor(0.5), text, mask)


class Oracle(BaseT2V):
    """Knows the clean latent: the exact rectified-flow velocity towards `target`, recording its times."""

    latent_channels, text_dim = 4, 16

    def __init__(self, target):
        super().__init__()
        self.target, self.times = target, []

    def velocity(self, x_t, t, text_emb, text_mask):
        self.times.append(t[0].item())
        return (x_t - self.target) / t.view(-1, 1, 1, 1, 1)  # eps - x0 on the line through x_t


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sdedit_runs_from_alpha_to_zero_on_the_flow_convention(shift):
    c0, text, mask = inputs()
    target = torch.randn_like(c0)
    oracle = Oracle(target)
    out = sdedit(oracle, c0, alpha=0.35, steps=5, text_emb=text, text_mask=mask,
                 generator=torch.Generator().manual_seed(0), shift=shift)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)  # straight paths: Euler is exact
    assert len(oracle.times) == 5 and oracle.times[0] == pytest.approx(0.35)
    assert all(a > b > 0 for a, b in zip(oracle.times, oracle.times[1:]))


def test_sdedit_with_wan_is_seeded_and_alpha_sets_the_departure(wan_dir):
    model = load_base_model("wan", wan_dir)
    c0, text, mask = inputs()

    def run(alpha, seed):
        return sdedit(model, c0, alpha, 3, text, mask, torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(0.3, 1), run(0.3, 1))
    assert not torch.allclose(run(0.3, 1), run(0.3, 2))
    assert (run(0.05, 1) - c0).norm() < (run(0.6, 1) - c0).norm()
    for alpha, steps in ((0.0, 3), (1.5, 3), (0.3, 0)):
        with pytest.raises(InputError, match="sdedit"):
            sdedit(model, c0, alpha, steps, text, mask)
