"""Latent pair shards: what `gvr degrade` writes once and every training stage reads.

A pair set lives in `{root}/pairs/{set}/`:

    index.json                 set name, frames, latent/text shapes, codec + text encoder, shard list, failures
    null_text.safetensors      the text encoder's null-prompt embedding (10% of training prompts)
    shards/<id>.safetensors    one file per source video: its clips stacked on dim 0

Shard tensors: `z0` (n, C, T, H, W) HR latent, `c0` (n, C, T, h, w) LR latent, `text` (n, L, D),
`text_mask` (n, L) bool; eval shards also hold `hr_video` / `lr_video` uint8 (n, T, H, W, 3) for
pixel metrics. Files are written atomically, so a shard is either complete or absent; one file per
video keeps failures isolated and makes the stage resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from gvr.config import StorageParams
from gvr.errors import InputError
from gvr.io.storage import join
from gvr.layout import Layout

INDEX = "index.json"
NULL_TEXT = "null_text.safetensors"
PAIR_KEYS = ("z0", "c0", "text", "text_mask")


def save_tensors(path: str, tensors: dict[str, torch.Tensor], storage: StorageParams,
                 metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (local or object store)."""
    from gvr.io.storage import atomic_local

    with atomic_local(path, storage) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def load_tensors(path: str, storage: StorageParams, keys: tuple[str, ...] | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read (some of) a safetensors file; remote files are cached locally first."""
    from gvr.io.storage import cached_local

    local = cached_local(path, storage)
    try:
        with safe_open(local, framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in (keys or tuple(f.keys()))}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise InputError(f"{path}: unreadable tensor file ({e})") from None


def read_index(set_dir: str, storage: StorageParams) -> dict[str, Any]:
    from gvr.io.storage import exists, read_json

    path = join(set_dir, INDEX)
    if not exists(path, storage):
        raise InputError(f"{path}: pair-set index not found; run `gvr degrade` first")
    return read_json(path, storage)


@dataclass(frozen=True)
class _Item:
    shard: str
    row: int


class LatentPairDataset(Dataset):
    """Map-style dataset over the pairs of one or more sets with the same frame count."""

    def __init__(self, indexes: list[tuple[str, dict[str, Any]]], storage: StorageParams):
        if not indexes:
            raise InputError("no pair sets to read")
        self.storage = storage
        self.indexes = indexes
        self.items: list[_Item] = []
        for set_dir, index in indexes:
            for shard in index["shards"]:
                path = join(set_dir, shard["file"])
                self.items.extend(_Item(path, r) for r in range(shard["count"]))
        first = indexes[0][1]
        self.text_dim = int(first["text_shape"][1])
        self._null_dir = indexes[0][0]

    @classmethod
    def from_sets(cls, layout: Layout, sets: list[str], *, frames: int,
                  storage: StorageParams) -> LatentPairDataset:
        """The sets among `sets` whose clips have `frames` frames (others are skipped with a note)."""
        chosen, seen = [], []
        for name in sets:
            index = read_index(layout.pairs(name), storage)
            seen.append(f"{name}({index['frames']})")
            if index["frames"] == frames:
                chosen.append((layout.pairs(name), index))
        if not chosen or not sum(s["count"] for _, i in chosen for s in i["shards"]):
            raise InputError(f"no {frames}-frame pairs in sets {', '.join(seen)}; check train.stages.*.pairs "
                             "and degrade.sets")
        shapes = {(tuple(i["z0_shape"]), tuple(i["c0_shape"]), tuple(i["text_shape"])) for _, i in chosen}
        if len(shapes) > 1:
            raise InputError(f"pair sets {sets} have different latent/text shapes {sorted(shapes)}")
        return cls(chosen, storage)

    @property
    def ids(self) -> list[str]:
        return [f"{s}:{i['frames']}:{len(i['shards'])}" for s, i in self.indexes] + \
               [sh["file"] for _, i in self.indexes for sh in i["shards"]]

    def describe(self) -> dict[str, Any]:
        return {"sets": [i["set"] for _, i in self.indexes], "pairs": len(self.items),
                "z0_shape": self.indexes[0][1]["z0_shape"], "c0_shape": self.indexes[0][1]["c0_shape"]}

    def null_text(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The null prompt as a batch of one: (1, L, D) embedding and (1, L) mask."""
        t = load_tensors(join(self._null_dir, NULL_TEXT), self.storage)
        return t["text"].float()[None].to(device), t["text_mask"].bool()[None].to(device)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.items[i]
        from gvr.io.storage import cached_local

        with safe_open(cached_local(item.shard, self.storage), framework="pt") as f:
            out = {k: f.get_slice(k)[item.row:item.row + 1][0] for k in PAIR_KEYS}
        out = {k: (v.bool() if k == "text_mask" else v.float()) for k, v in out.items()}
        for k in ("z0", "c0"):
            if not torch.isfinite(out[k]).all():
                raise InputError(f"{item.shard}[{item.row}]: {k} has NaN/inf values")
        return out


def iter_pairs(set_dir: str, storage: StorageParams, *, keys: tuple[str, ...] | None = None,
               limit: int | None = None):
    """(clip id, {name: tensor}) for the pairs of a set in index order, one shard in memory at a time."""
    index = read_index(set_dir, storage)
    n = 0
    for shard in index["shards"]:
        t = load_tensors(join(set_dir, shard["file"]), storage, keys=keys)
        for row in range(shard["count"]):
            if limit is not None and n >= limit:
                return
            yield f"{shard['source'].rsplit('/', 1)[-1]}#{row}", {k: v[row] for k, v in t.items()}
            n += 1


def count_pairs(set_dir: str, storage: StorageParams) -> int:
    return sum(s["count"] for s in read_index(set_dir, storage)["shards"])


def write_null_text(set_dir: str, emb: torch.Tensor, mask: torch.Tensor, storage: StorageParams) -> None:
    save_tensors(join(set_dir, NULL_TEXT), {"text": emb, "text_mask": mask}, storage)


def write_index(set_dir: str, index: dict[str, Any], storage: StorageParams) -> None:
    from gvr.io.storage import write_json

    write_json(join(set_dir, INDEX), index, storage)


def shard_summary(index: dict[str, Any]) -> dict[str, int]:
    return {"shards": len(index["shards"]), "pairs": sum(s["count"] for s in index["shards"]),
            "failed": len(index.get("failed", []))}
