"""Serve the `full-pipeline` deployment of flow `gvr` from this process (local mode, no work pool).

    python -m flows.serve --workspace DIR          # keeps running; Ctrl-C stops it
    prefect deployment run gvr/full-pipeline --watch [--param profile=tiny]

Flow and deployment names come from the workspace's params (`orchestration.flow_name`,
`orchestration.deployment`). Flow runs execute in subprocesses of this one, with its environment
(PREFECT_API_URL, MLFLOW_TRACKING_URI, AWS_*). One run at a time: runs queue on the deployment's
concurrency limit, so DVC never runs twice in the workspace. For a cluster, deploy to a work pool
instead (prefect.yaml).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gvr.config import load_params
from gvr.errors import GVRError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default=".", help="folder with params.yaml and dvc.yaml (default: .)")
    args = parser.parse_args(argv)
    try:
        workspace = Path(args.workspace).resolve()
        orch = load_params(workspace / "params.yaml").orchestration
    except GVRError as e:
        print(f"flows.serve: error: {e}", file=sys.stderr)
        return 2
    from flows.pipeline import gvr_pipeline

    gvr_pipeline.with_options(name=orch.flow_name).serve(
        name=orch.deployment, parameters={"workspace": str(workspace)}, tags=["gvr"], global_limit=1,
        description=f"SimpleGVR pipeline of {workspace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
