"""Text encoder: T5-family prompt embeddings with a fixed null prompt and a prompt-hash cache.

`encode(prompts)` returns `(emb (B, max_length, dim), mask (B, max_length) bool)`: prompts are
tokenised with the end-of-sequence token, truncated to `max_length`, and the embeddings of padded
positions are zero, as the Wan pipeline feeds its transformer (it takes no text mask). The null
prompt is the empty string encoded by the same model (one EOS token), the choice of Wan's own
pipelines for an unconditional branch; training swaps it in for 10% of captions.

Embeddings are cached by the SHA-256 of the prompt under a fingerprint of the encoder (class,
config, tokenizer, `max_length`, dtype, and sums of a few weight tensors), in an LRU in memory and,
with `cache_dir`, as one safetensors file per prompt, so re-running a stage encodes nothing twice.

Kind `none` runs no model: every prompt maps to the null embedding, one valid all-zero token of a
small width, which is all the tiny profile's conditioning needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from gvr.errors import InputError
from gvr.models.vae import import_optional, pretrained_location, resolve_device, resolve_dtype

NULL_PROMPT = ""
TEXT_KINDS = ("none", "t5")
_ENCODER_CLASSES = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel", "mt5": "MT5EncoderModel"}


class TextEncoder(nn.Module):
    """Prompts -> zero-padded embeddings and validity masks; subclasses embed the uncached prompts."""

    def __init__(self, dim: int, max_length: int, *, cache_dir: str | Path | None = None,
                 memory_cache: int = 1024, batch_size: int = 16):
        super().__init__()
        if max_length < 1:
            raise InputError(f"text encoder: max_length must be >= 1; got {max_length}")
        self.dim, self.max_length, self.batch_size = dim, max_length, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory_cache = memory_cache
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # key -> (n_valid, dim) on the CPU

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def fingerprint(self) -> str:
        """Identifies everything besides the prompt that shapes an embedding."""
        raise NotImplementedError

    def embed(self, prompts: list[str]) -> list[torch.Tensor]:
        """Embeddings of the valid tokens of each prompt, each (n_i, dim) with 1 <= n_i <= max_length."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (emb (B, max_length, dim), mask (B, max_length) bool) on this encoder's device."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InputError("text encoder: prompts must be a list of strings")
        keys = [self._key(p) for p in prompts]
        found = {k: v for k in dict.fromkeys(keys) if (v := self._lookup(k)) is not None}
        missing = list(dict.fromkeys(p for p, k in zip(prompts, keys) if k not in found))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            for prompt, emb in zip(chunk, self.embed(chunk)):
                key = self._key(prompt)
                found[key] = emb.detach().to("cpu")
                self._store(key, found[key], prompt)
        return self._pad([found[k] for k in keys])

    def null(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed null-prompt embedding, repeated `batch` times."""
        return self.encode([NULL_PROMPT] * batch)

    def _pad(self, embs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(embs), self.max_length, self.dim, dtype=self.dtype)
        mask = torch.zeros(len(embs), self.max_length, dtype=torch.bool)
        for i, e in enumerate(embs):
            emb[i, :len(e)], mask[i, :len(e)] = e, True
        return emb.to(self.device), mask.to(self.device)

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / self.fingerprint[:16] / key[:2] / f"{key}.safetensors"

    def _lookup(self, key: str) -> torch.Tensor | None:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self.cache_dir is None or not self._path(key).is_file():
            return None
        from safetensors.torch import load_file

        try:
            emb = load_file(str(self._path(key)))["emb"]
        except Exception:  # a torn or foreign file: recompute and overwrite it
            return None
        if emb.ndim != 2 or emb.shape[1] != self.dim or not 1 <= emb.shape[0] <= self.max_length:
            return None
        self._remember(key, emb)
        return emb

    def _store(self, key: str, emb: torch.Tensor, prompt: str) -> None:
        self._remember(key, emb)
        if self.cache_dir is None:
            return
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"emb": emb.contiguous()}, str(tmp), metadata={"prompt": prompt[:2000]})
        os.replace(tmp, path)  # atomic: concurrent workers never read a torn file

    def _remember(self, key: str, emb: torch.Tensor) -> None:
        if self.memory_cache <= 0:
            return
        self._cache[key] = emb
        self._cache.move_to_end(key)
        while len(self._cache) > self.memory_cache:
            self._cache.popitem(last=False)


class NullTextEncoder(TextEncoder):
    """No model: every prompt is the null prompt, one valid all-zero token of width `dim`."""

    def __init__(self, dim: int = 16, max_length: int = 1, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        super().__init__(dim, max_length, memory_cache=0)
        self._device, self._dtype = device, dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def fingerprint(self) -> str:
        return f"none-{self.dim}-{self.max_length}"

    def embed(self, prompts: list[str]) -> list[torch.Tensor]:
        return [torch.zeros(1, self.dim, dtype=self.dtype) for _ in prompts]


class T5TextEncoder(TextEncoder):
    """A transformers T5/mT5/umT5 encoder and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int, **cache_kwargs):
        super().__init__(int(model.config.d_model), max_length, **cache_kwargs)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(type(self.model).__name__.encode())
            h.update(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
            h.update(f"{type(self.tokenizer).__name__}|{len(self.tokenizer)}|{self.max_length}|{self.dtype}".encode())
            params = list(self.model.parameters())
            for p in params[:2] + params[-2:]:  # catches swapped weights under the same config
                flat = p.detach().reshape(-1)
                sample = flat[::max(1, flat.numel() // 4096)]  # a strided view: no copy of a 4 GB embedding
                h.update(f"{sample.double().sum().item():.10e}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def embed(self, prompts: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, dim)
        lengths = mask.sum(dim=1).clamp(min=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths)]


def load_text_encoder(kind: str, path: str | Path | None = None, *, device: str | torch.device = "cpu",
                      dtype: str | torch.dtype = torch.float32, max_length: int = 512,
                      cache_dir: str | Path | None = None, dim: int | None = None,
                      batch_size: int = 16, memory_cache: int = 1024) -> TextEncoder:
    """Build the text encoder of `kind` (`none` or `t5`).

    Args:
        kind: `none` (no model, every prompt is the null prompt) or `t5` (T5/mT5/umT5 encoder).
        path: for `t5`, a local directory holding the encoder (config.json + weights) and its
            tokenizer, or a pipeline directory with `text_encoder/` and `tokenizer/` subfolders.
        device, dtype: where and in which precision the encoder runs and embeddings are returned.
        max_length: tokens per prompt (truncated beyond, zero-padded below).
        cache_dir: optional on-disk embedding cache.
        dim: embedding width; for `none` its width (default 16), for `t5` a check on the checkpoint.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    cache = dict(cache_dir=cache_dir, memory_cache=memory_cache, batch_size=batch_size)
    if kind == "none":
        return NullTextEncoder(dim or 16, max_length, device=device, dtype=dtype)
    if kind != "t5":
        raise InputError(f"unknown text encoder kind {kind!r} (choose from {', '.join(TEXT_KINDS)})")
    transformers = import_optional("transformers")
    root, sub = pretrained_location(path, "t5 text encoder", subfolder="text_encoder")
    model_dir = Path(root) / sub if sub else Path(root)
    tok_dir = Path(root) / "tokenizer" if sub and (Path(root) / "tokenizer").is_dir() else model_dir
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        cls_name = _ENCODER_CLASSES.get(config.model_type)
        if cls_name is None:
            raise InputError(f"t5 text encoder: {model_dir} holds a {config.model_type!r} model, not one of "
                             f"{', '.join(_ENCODER_CLASSES)}")
        if dim is not None and config.d_model != dim:
            raise InputError(f"t5 text encoder: {model_dir} has width {config.d_model} but text.dim is {dim}")
        model = getattr(transformers, cls_name).from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        text = str(e).strip().splitlines()
        raise InputError(f"t5 text encoder: cannot load from {path}: {text[0] if text else type(e).__name__}") from None
    return T5TextEncoder(model.to(device), tokenizer, max_length, **cache)


def text_encoder_from_params(params, device: str | torch.device | None = None,
                             dtype: str | torch.dtype | None = None) -> TextEncoder:
    """Build the encoder described by a `TextParams`; its own device/dtype win over the ones passed here."""
    return load_text_encoder(
        params.kind, params.path, device=params.device or device or "auto",
        dtype=params.dtype or dtype or torch.float32, max_length=params.max_length,
        cache_dir=params.cache_dir, dim=params.dim, batch_size=params.batch_size,
        memory_cache=params.memory_cache)
