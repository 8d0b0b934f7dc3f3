"""Where each stage's artifacts live under `storage.root` (a local directory or an s3:// prefix).

    {root}/manifest.csv                    curate
    {root}/pairs/{set}/index.json          degrade: one index per pair set ...
    {root}/pairs/{set}/shards/*.safetensors  ... and its latent shards (one per source video)
    {root}/pairs/eval/...                  degrade: held-out pairs (+ reference clips) for evaluate
    {root}/checkpoints/{stage}/            train: DeepSpeed checkpoints (resume)
    {root}/models/{stage}/                 train: exported model.safetensors + config.json
    {root}/sampler/                        derive-sampler: detail_aware.json + plot
    {root}/eval/metrics.json               evaluate: DVC metrics, plus plots and samples
    {root}/registry.json                   register: registered version and alias decision

dvc.yaml names the same paths for the default root `data`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gvr.config import Params
from gvr.io.storage import join

EVAL_SET = "eval"


@dataclass(frozen=True)
class Layout:
    """Artifact paths of one pipeline workspace."""

    root: str

    @classmethod
    def of(cls, params: Params) -> Layout:
        return cls(params.storage.root.rstrip("/"))

    @property
    def manifest(self) -> str:
        return join(self.root, "manifest.csv")

    def pairs(self, pair_set: str) -> str:
        return join(self.root, "pairs", pair_set)

    def checkpoints(self, stage: str) -> str:
        return join(self.root, "checkpoints", stage)

    def model(self, stage: str) -> str:
        return join(self.root, "models", stage)

    @property
    def sampler(self) -> str:
        return join(self.root, "sampler")

    @property
    def sampler_file(self) -> str:
        return join(self.sampler, "detail_aware.json")

    @property
    def eval(self) -> str:
        return join(self.root, "eval")

    @property
    def metrics(self) -> str:
        return join(self.eval, "metrics.json")

    @property
    def registry(self) -> str:
        return join(self.root, "registry.json")
