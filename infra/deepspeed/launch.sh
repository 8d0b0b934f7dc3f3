#!/usr/bin/env bash
# Multi-node SimpleGVR training (default: 2 nodes x 8 GPUs) through the deepspeed launcher.
#
#   infra/deepspeed/launch.sh ssh    STAGE [gvr args...]   on node 0 only: deepspeed starts every node
#                                                          of the hostfile over passwordless ssh (pdsh)
#   infra/deepspeed/launch.sh no-ssh STAGE [gvr args...]   on every node (Kubernetes, no sshd): each node
#                                                          starts its own 8 ranks with its node rank
#
# STAGE is stage1 | stage2 | stage3. Both modes run `gvr train`, which re-launches itself through
# `deepspeed --module gvr.cli` with the train.launcher.* values set here. Environment:
#   NUM_NODES (2), GPUS_PER_NODE (8), MASTER_PORT (29500), HOSTFILE (infra/deepspeed/hostfile);
#   ssh mode: MASTER_ADDR (optional: deepspeed asks node 0 over ssh);
#   no-ssh mode: MASTER_ADDR (node 0's address, required), NODE_RANK (or the Indexed Job's
#   JOB_COMPLETION_INDEX). The workspace and storage.root must be shared by every node.
set -euo pipefail

usage() { sed -n '2,17p' "$0" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
mode=$1 stage=$2
shift 2

args=(train --stage "$stage"
      --set "train.launcher.num_nodes=${NUM_NODES:-2}"
      --set "train.launcher.gpus_per_node=${GPUS_PER_NODE:-8}"
      --set "train.launcher.master_port=${MASTER_PORT:-29500}"
      --set "train.launcher.hostfile=${HOSTFILE:-infra/deepspeed/hostfile}")

case $mode in
  ssh)
    args+=(--set train.launcher.no_ssh=false)
    if [[ -n ${MASTER_ADDR:-} ]]; then
      args+=(--set "train.launcher.master_addr=$MASTER_ADDR")
    fi
    ;;
  no-ssh)
    node_rank=${NODE_RANK:-${JOB_COMPLETION_INDEX:-}}
    [[ -n $node_rank ]] || { echo "launch.sh: set NODE_RANK (or run as an Indexed Job)" >&2; exit 2; }
    [[ -n ${MASTER_ADDR:-} ]] || { echo "launch.sh: set MASTER_ADDR to node 0's address" >&2; exit 2; }
    args+=(--set train.launcher.no_ssh=true
           --set "train.launcher.node_rank=$node_rank"
           --set "train.launcher.master_addr=$MASTER_ADDR")
    ;;
  *) usage ;;
esac

exec gvr "${args[@]}" "$@"
