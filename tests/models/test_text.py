"""Text encoder: padding and masks, the null prompt, batching, the prompt-hash cache, loading errors."""

import pytest
import torch

from gvr.config import TextParams
from gvr.errors import InputError
from gvr.models.text import NULL_PROMPT, load_text_encoder, text_encoder_from_params

transformers = pytest.importorskip("transformers")

WORDS = "a cat dog runs on the beach under sky red blue car drives fast slow at night".split()


def save_tiny_t5(directory, model_type: str = "umt5", d_model: int = 16, tokenizer_dir=None) -> None:
    """A random T5-family encoder and a word-level tokenizer trained on nothing but `WORDS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(tokenizer_dir or directory)
    config_cls, model_cls = {"umt5": ("UMT5Config", "UMT5EncoderModel"), "t5": ("T5Config", "T5EncoderModel")}[model_type]
    config = getattr(transformers, config_cls)(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=32, num_layers=2,
                                               num_heads=2, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    getattr(transformers, model_cls)(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("umt5")
    save_tiny_t5(directory)
    return directory


def test_embeddings_are_zero_padded_with_token_masks(t5_dir):
    enc = load_text_encoder("t5", t5_dir, max_length=8)
    emb, mask = enc.encode(["a cat runs", "red car at night", NULL_PROMPT])
    assert emb.shape == (3, 8, 16) and mask.shape == (3, 8) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [4, 5, 1]  # words + end-of-sequence token
    assert (emb[~mask] == 0).all()
    assert (emb[mask].abs().sum(dim=-1) > 0).all()


def test_long_prompts_are_truncated_to_max_length(t5_dir):
    enc = load_text_encoder("t5", t5_dir, max_length=6)
    emb, mask = enc.encode([" ".join(WORDS)])
    assert emb.shape == (1, 6, 16) and mask.all()


def test_batched_encoding_matches_one_prompt_at_a_time(t5_dir):
    prompts = ["a cat runs on the beach", "dog", "blue sky at night", NULL_PROMPT]
    batched = load_text_encoder("t5", t5_dir, max_length=10, memory_cache=0, batch_size=4).encode(prompts)
    single = load_text_encoder("t5", t5_dir, max_length=10, memory_cache=0, batch_size=1).encode(prompts)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_null_is_the_fixed_empty_prompt_embedding(t5_dir):
    enc = load_text_encoder("t5", t5_dir, max_length=8)
    emb, mask = enc.null(3)
    assert mask.sum(dim=1).tolist() == [1, 1, 1]
    torch.testing.assert_close((emb, mask), enc.encode([NULL_PROMPT] * 3))
    torch.testing.assert_close(emb[0], emb[2])
    assert not torch.allclose(emb[0], enc.encode(["a cat"])[0][0])


def _counting(enc):
    """Wrap the model's forward to count how many prompts reach it."""
    calls = []
    forward = enc.model.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    enc.model.forward = counted
    return calls


def test_cache_serves_repeats_from_memory_and_disk(t5_dir, tmp_path):
    enc = load_text_encoder("t5", t5_dir, max_length=8, cache_dir=tmp_path)
    calls = _counting(enc)
    first = enc.encode(["a cat", "a dog", "a cat"])
    assert calls == [2]  # duplicates are encoded once
    torch.testing.assert_close(first[0][0], first[0][2])
    enc.encode(["a dog", "a cat"])
    assert calls == [2]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2

    fresh = load_text_encoder("t5", t5_dir, max_length=8, cache_dir=tmp_path)
    fresh_calls = _counting(fresh)
    torch.testing.assert_close(fresh.encode(["a cat", "a dog", "a cat"]), first)
    assert fresh_calls == []

    other = load_text_encoder("t5", t5_dir, max_length=4, cache_dir=tmp_path)  # another fingerprint
    other_calls = _counting(other)
    other.encode(["a cat"])
    assert other_calls == [1]


def test_a_torn_cache_file_is_recomputed(t5_dir, tmp_path):
    enc = load_text_encoder("t5", t5_dir, max_length=8, cache_dir=tmp_path)
    expected = enc.encode(["a red car"])
    (path,) = tmp_path.rglob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    fresh = load_text_encoder("t5", t5_dir, max_length=8, cache_dir=tmp_path)
    torch.testing.assert_close(fresh.encode(["a red car"]), expected)


@pytest.mark.parametrize("model_type", ["t5", "umt5"])
def test_loads_t5_family_from_a_pipeline_directory(tmp_path, model_type):
    save_tiny_t5(tmp_path / "text_encoder", model_type, tokenizer_dir=tmp_path / "tokenizer")
    enc = load_text_encoder("t5", tmp_path, max_length=8, dtype="bfloat16", dim=16)
    assert type(enc.model).__name__ == f"{model_type.upper()}EncoderModel"
    emb, mask = enc.encode(["a cat runs"])
    assert emb.dtype == torch.bfloat16 and mask.sum() == 4


def test_loading_errors_name_the_path_and_the_mismatch(t5_dir, tmp_path):
    with pytest.raises(InputError, match=r"nowhere.*does not exist"):
        load_text_encoder("t5", tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"width 16 but text.dim is 4096"):
        load_text_encoder("t5", t5_dir, dim=4096)
    with pytest.raises(InputError, match="no weights path"):
        load_text_encoder("t5", None)
    with pytest.raises(InputError, match="unknown text encoder kind"):
        load_text_encoder("clip")
    transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError, match=r"'bert' model"):
        load_text_encoder("t5", tmp_path / "bert")
    with pytest.raises(InputError, match="list of strings"):
        load_text_encoder("t5", t5_dir).encode("a cat")


def test_kind_none_maps_every_prompt_to_the_null_embedding():
    enc = load_text_encoder("none", dim=16, max_length=1, dtype="float64")
    emb, mask = enc.encode(["a cat", "a dog on the beach"])
    assert emb.shape == (2, 1, 16) and emb.dtype == torch.float64 and mask.all()
    torch.testing.assert_close((emb, mask), enc.null(2))
    wide = load_text_encoder("none", dim=8, max_length=4).null(1)
    assert wide[0].shape == (1, 4, 8) and wide[1].tolist() == [[True, False, False, False]]


def test_text_encoder_from_params_applies_every_field(t5_dir, tmp_path):
    enc = text_encoder_from_params(TextParams(kind="none", dim=8, max_length=2), device="cpu")
    assert (enc.dim, enc.max_length) == (8, 2)
    params = TextParams(kind="t5", path=str(t5_dir), dim=16, max_length=6, cache_dir=str(tmp_path), batch_size=2)
    enc = text_encoder_from_params(params, device="cpu")
    assert (enc.dim, enc.max_length, enc.batch_size, enc.cache_dir) == (16, 6, 2, tmp_path)
