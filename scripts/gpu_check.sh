#!/usr/bin/env bash
# Check a GPU node end to end: the GPU tests, then a short run of the three training stages and the
# detail-aware sampler through DeepSpeed (bf16, ZeRO-2, fused AdamW) and one cascaded inference,
# in a workspace whose pairs are already made (`gvr curate && gvr degrade`, on any machine).
#
#   scripts/gpu_check.sh WORKSPACE [LOGDIR]
#
# Run from the repository root. Logs go to LOGDIR (default: WORKSPACE/.gvr/gpu-check).
set -euo pipefail
ws=${1:?usage: scripts/gpu_check.sh WORKSPACE [LOGDIR]}
logs=${2:-$ws/.gvr/gpu-check}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/device.txt"
$py -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" \
    | tee -a "$logs/device.txt"

# 1. GPU tests (fast paths against references, bf16 model, codec on CUDA); SKIP_TESTS=1 skips them
if [ -z "${SKIP_TESTS:-}" ]; then
    $py -m pytest -m gpu -q -p no:cacheprovider tests/models 2>&1 | tee "$logs/gpu-tests.log" | tail -n 15
fi

# 2. the training stages, short, on this GPU
repo=$(pwd)
cd "$ws"
set_args=(--set compute.device=cuda --set compute.dtype=bfloat16 --set train.zero_stage=2
          --set train.launcher.num_nodes=1 --set train.launcher.gpus_per_node=1
          --set train.stages.stage1.iterations="${STAGE1_STEPS:-40}"
          --set train.stages.stage2.iterations="${STAGE2_STEPS:-20}"
          --set train.stages.stage3.iterations="${STAGE3_STEPS:-10}"
          --set sampler.clips=4 --set sampler.steps=20)
for cmd in "train --stage stage1" "derive-sampler" "train --stage stage2" "train --stage stage3"; do
    echo "== gvr $cmd"
    SECONDS=0
    # shellcheck disable=SC2086
    $py -m gvr.cli $cmd "${set_args[@]}" 2>&1 | grep -v "step/s\]" | grep -E "INFO|error|Error" || true
    echo "== gvr $cmd: ${SECONDS} s"
done 2>&1 | tee "$logs/stages.log"
test -f data/models/stage3/model.safetensors

# 3. one cascaded inference with the stage-3 model on the GPU: LR latent -> HR latent -> video
$py - <<'EOF' 2>&1 | tee "$logs/inference.log"
import json, time, torch
from gvr.data.shards import read_index, load_tensors
from gvr.config import StorageParams
from gvr.pipeline import GVRPipeline
pipe = GVRPipeline.from_pretrained("data/models/stage3", device="cuda", dtype=torch.bfloat16)
index = read_index("data/pairs/eval", StorageParams())
t = load_tensors("data/pairs/eval/" + index["shards"][0]["file"], StorageParams())
c0 = t["c0"][:1].float().cuda()
torch.cuda.synchronize(); start = time.perf_counter()
out = pipe(lr_latent=c0, hr_size=index["hr_size"], text_emb=t["text"][:1].float().cuda(),
           text_mask=t["text_mask"][:1].cuda(), steps=50, seed=0)
torch.cuda.synchronize()
print(json.dumps({"latent": list(out.latent.shape), "video": list(out.video.shape),
                  "finite": bool(torch.isfinite(out.video).all()), "seconds_50_steps": time.perf_counter() - start,
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30}))
EOF
cd "$repo"
