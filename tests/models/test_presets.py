"""Presets, params overrides, init loading, and the Wan2.1 importer (against a tiny diffusers Wan)."""

import dataclasses
import json

import pytest
import torch

from gvr.config import ModelParams, load_params
from gvr.errors import ConfigError, InputError
from gvr.models.dit import SimpleGVR
from gvr.models.presets import PRESETS, DiTConfig, build_model, load_init, resolve
from gvr.models.wan_import import load_wan, read_wan_state, to_diffusers_names, wan_to_gvr

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(cfg: DiTConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SimpleGVR(cfg).parameters())


def test_preset_sizes():
    assert n_params(PRESETS["gvr-tiny"]) < 1e6
    assert 0.95e9 < n_params(PRESETS["gvr-1b"]) < 1.1e9
    wan = PRESETS["wan2.1-t2v-1.3b"]
    assert (wan.dim, wan.heads, wan.depth, wan.ffn_dim, wan.text_dim, wan.freq_dim, wan.patch,
            wan.latent_channels) == (1536, 12, 30, 8960, 4096, 256, (1, 2, 2), 16)


def test_resolve_applies_overrides_and_attention_forms():
    cfg = resolve(ModelParams(preset="gvr-tiny", dim=32, heads=2, attention="temporal_unit",
                              attention_window=[1, 2, 2]), text_dim=8)
    assert (cfg.dim, cfg.heads, cfg.text_dim, cfg.attention_window) == (32, 2, 8, (1, 2, 2))
    assert cfg.attention == ("temporal_unit",) * cfg.depth
    cfg = resolve(ModelParams(preset="gvr-tiny", depth=3, attention=["full", "window", "full"], text_dim=5),
                  text_dim=8)
    assert cfg.attention == ("full", "window", "full") and cfg.text_dim == 5  # explicit model.* wins
    assert resolve(ModelParams(preset="gvr-small")) == PRESETS["gvr-small"]


def _params_file(tmp_path, model: dict):
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"model": model}))
    return path


@pytest.mark.parametrize("model, message", [
    ({"preset": "gvr-huge"}, "model.preset"),
    ({"preset": "gvr-tiny", "attention": ["full"]}, "model.attention"),
    ({"preset": "gvr-tiny", "attention": "dense"}, "model.attention"),
    ({"preset": "gvr-tiny", "sparse_window": [9, 12, 3]}, "model.sparse_window"),
    ({"preset": "gvr-tiny", "heads": 3}, "model.heads"),
    ({"preset": "gvr-tiny", "upsampler": "pixelshuffle"}, "model.upsampler"),
])
def test_bad_model_params_fail_at_load_with_the_key_path(tmp_path, model, message):
    with pytest.raises(ConfigError, match=message):
        load_params(_params_file(tmp_path, model))


def test_model_params_load_both_attention_forms(tmp_path):
    p = load_params(_params_file(tmp_path, {"preset": "gvr-tiny", "attention": ["full", "sparse_local"]}))
    assert resolve(p.model).attention == ("full", "sparse_local")
    p = load_params(_params_file(tmp_path, {"preset": "gvr-tiny"}), overrides=["model.attention=window"])
    assert resolve(p.model).attention == ("window", "window")


def test_config_dict_round_trip_and_unknown_keys():
    cfg = PRESETS["gvr-tiny"]
    assert DiTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="unknown keys"):
        DiTConfig.from_dict({**cfg.to_dict(), "mystery": 1})


def test_load_init_from_a_gvr_artifact(tmp_path):
    src = build_model(PRESETS["gvr-tiny"])
    src.save_pretrained(tmp_path / "m")
    params = ModelParams(preset="gvr-tiny", init=str(tmp_path / "m"), init_kind="gvr", attention="temporal_unit")
    model = load_init(params)
    assert model.cfg.attention == ("temporal_unit",) * 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    with pytest.raises(InputError, match="another architecture"):
        load_init(dataclasses.replace(params, dim=32, heads=2))


# --------------------------------------------------------------------------------------------
# Wan importer
# --------------------------------------------------------------------------------------------

TINY = PRESETS["gvr-tiny"]


def tiny_wan(cfg: DiTConfig = TINY):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.latent_channels, out_channels=cfg.latent_channels, text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.depth, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=cfg.eps).eval()


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "transformer"
    wan = tiny_wan()
    wan.save_pretrained(path)
    return path, wan


def wan_inputs(b=2, t=3, hw=(8, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 16, t, *hw, generator=g), torch.rand(b, generator=g),
            torch.randn(b, 16, t, hw[0] // 2, hw[1] // 2, generator=g), torch.rand(b, generator=g),
            torch.randn(b, 7, TINY.text_dim, generator=g))


@torch.no_grad()
def test_imported_model_equals_wan_at_step_zero(wan_dir):
    path, wan = wan_dir
    model = load_wan(path.parent, TINY)  # the pipeline folder holding transformer/
    z_t, t, c_t, t_c, text = wan_inputs()
    expected = wan(z_t, t * 1000, text, return_dict=False)[0]
    got = model(z_t, t, c_t, t_c, text)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()
    # the LR latent, its noise level and the 2D attention are all silent at step 0 ...
    assert torch.allclose(model(z_t, t, c_t * 3 + 1, 1 - t_c, text), expected, atol=2e-5, rtol=1e-4)
    # ... and they train: each new part gets a gradient
    model.train()
    with torch.enable_grad():
        model(z_t, t, c_t, t_c, text).square().mean().backward()
    for name in ("patch_embed.weight", "blocks.0.modulation", "time_proj.weight", "noise_level_embed.fc2.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@torch.no_grad()
def test_importer_reads_the_original_wan_layout(wan_dir, tmp_path):
    from safetensors.torch import save_file

    path, wan = wan_dir
    renames = [("condition_embedder.time_embedder.linear_", "time_embedding.L"),
               ("condition_embedder.text_embedder.linear_", "text_embedding.L"),
               ("condition_embedder.time_proj", "time_projection.1"), ("proj_out", "head.head"),
               ("attn1.to_out.0", "self_attn.o"), ("attn2.to_out.0", "cross_attn.o"),
               ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."), ("attn1.", "self_attn."),
               ("attn2.", "cross_attn."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("norm2", "norm3")]
    original = {}
    for key, value in wan.state_dict().items():
        for a, b in renames:
            key = key.replace(a, b)
        key = key.replace("embedding.L1", "embedding.0").replace("embedding.L2", "embedding.2")
        key = "head.modulation" if key == "scale_shift_table" else key.replace("scale_shift_table", "modulation")
        original[key] = value.contiguous()
    assert to_diffusers_names(original).keys() == wan.state_dict().keys()
    save_file(original, str(tmp_path / "wan_original.safetensors"))
    model = load_wan(tmp_path / "wan_original.safetensors", TINY)
    z_t, t, c_t, t_c, text = wan_inputs(seed=1)
    assert torch.allclose(model(z_t, t, c_t, t_c, text), wan(z_t, t * 1000, text, return_dict=False)[0],
                          atol=2e-5, rtol=1e-4)


def test_wan_preset_matches_the_public_1_3b_transformer():
    """Every weight of a Wan2.1-T2V-1.3B-sized diffusers model has a same-shaped place in the preset."""
    diffusers = pytest.importorskip("diffusers")
    cfg = PRESETS["wan2.1-t2v-1.3b"]
    with torch.device("meta"):
        wan = diffusers.WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                              num_layers=30, text_dim=4096, freq_dim=256)
        ours = SimpleGVR(cfg)
    mapped = wan_to_gvr(wan.state_dict(), cfg, ours.state_dict())
    assert mapped.keys() == ours.state_dict().keys()
    assert all(mapped[k].shape == v.shape for k, v in ours.state_dict().items())


def test_importer_rejects_a_wan_of_another_size(wan_dir, tmp_path):
    path, _ = wan_dir
    with pytest.raises(InputError, match="num_layers"):
        load_wan(path, dataclasses.replace(TINY, depth=3, attention=("full",) * 3))
    with pytest.raises(InputError, match="no .safetensors"):
        load_wan(tmp_path, TINY)
    state, config = read_wan_state(path)
    assert config["num_layers"] == TINY.depth and "patch_embedding.weight" in state


def test_load_init_through_params(wan_dir):
    path, _ = wan_dir
    model = load_init(ModelParams(preset="gvr-tiny", init=str(path), init_kind="wan"))
    assert isinstance(model, SimpleGVR) and next(model.parameters()).dtype == torch.float32
