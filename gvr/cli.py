"""`gvr` command line: one thin subcommand per pipeline stage.

Every subcommand takes `--params FILE` (default: ./params.yaml), `--profile NAME` and repeated
`--set section.key=value`, loads the typed params, and calls one library function. Errors caused
by input or configuration print one line (`gvr: error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from gvr.errors import GVRError

log = logging.getLogger("gvr")

STAGES = ("stage1", "stage2", "stage3")


def _params(args: argparse.Namespace):
    from gvr.config import load_params

    return load_params(args.params, profile=args.profile, overrides=args.set or ())


# ---- subcommands: each reads params, calls the library, reports ------------------------------


def cmd_curate(args):
    from gvr.stages import curate

    curate(_params(args))


def cmd_degrade(args):
    from gvr.stages import degrade

    degrade(_params(args), sets=args.sets)


def cmd_train(args):
    from gvr.train.launch import train

    train(_params(args), args.stage, resume=not args.no_resume)


def cmd_derive_sampler(args):
    from gvr.stages import derive_sampler

    derive_sampler(_params(args))


def cmd_evaluate(args):
    from gvr.stages import evaluate

    evaluate(_params(args), model_dir=args.model)


def cmd_register(args):
    from gvr.stages import register

    register(_params(args), model_dir=args.model)


def cmd_upscale(args):
    from gvr.upscale import upscale

    upscale(_params(args), model=args.model, input=args.input, output=args.output,
            prompt=args.prompt, save_latents=args.save_latents)


def cmd_demo(args):
    from gvr.demo import run_demo

    run_demo(args.workspace, runner=args.runner, params_overrides=args.set or (), force=args.force)


def cmd_synth(args):
    from gvr.data.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(args.output, count=args.count, frames=args.frames,
                                    size=(args.height, args.width), seed=args.seed)
    print(f"wrote {len(paths)} synthetic clips to {args.output}")


# ---- parser ------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("params")
    g.add_argument("--params", metavar="FILE", default=None,
                   help="params YAML (default: ./params.yaml, else the project's params.yaml)")
    g.add_argument("--profile", metavar="NAME", default=None,
                   help="profile to apply on top of the defaults: tiny (CPU, minutes), small (one GPU)")
    g.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override one param, e.g. --set train.lr=1e-4 (repeatable; values are YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvr",
        description="SimpleGVR pipeline: curate -> degrade -> train stage1/2/3 -> evaluate -> register, "
                    "and batch upscaling with a registered model.",
        epilog="Each stage reads params.yaml; see README.md for the DAG and `dvc repro` / Prefect usage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        _common(p)
        p.set_defaults(func=fn)
        return p

    add("curate", cmd_curate, "filter raw videos into a manifest",
        "Decode each raw video (curate.input: local dir or s3://), measure brightness, Laplacian variance "
        "and MUSIQ on uniformly sampled frames, check the length, and write manifest.csv with a reason "
        "for every rejected video. Resumes where it stopped.")
    p = add("degrade", cmd_degrade, "make HR/LR training pairs and encode them to latent shards",
            "Cut clips from accepted videos, synthesise LR versions (second-order, flow-based, "
            "model-guided degradations, per degrade.sets), encode HR and LR once with the video codec "
            "and the captions with the text encoder, and write latent shards with an index.")
    p.add_argument("--sets", nargs="*", default=None, metavar="SET",
                   help="only these pair sets (default: all in degrade.sets, plus the held-out eval set)")
    p = add("train", cmd_train, "train one stage with DeepSpeed",
            "Train SimpleGVR for one stage (stage1: 17 frames from a pretrained init; stage2: + new "
            "degradations with the detail-aware sampler; stage3: 77 frames with temporal units) and "
            "export model.safetensors + config.json. Multi-GPU/multi-node runs go through the deepspeed "
            "launcher (see README).")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints of this stage")
    add("derive-sampler", cmd_derive_sampler, "derive the detail-aware timestep distribution",
        "Run 50-step inference of the uniform-trained stage-1 model on LR clips, measure the change of "
        "high-frequency DCT energy of the predicted x0 between steps, and save the normalised curve "
        "(JSON + plot) as the training timestep distribution.")
    p = add("evaluate", cmd_evaluate, "evaluate a trained model on held-out pairs",
            "Sample HR latents for held-out clips, decode, and compute metrics against the reference "
            "and baselines; writes metrics.json, plots and sample videos.")
    p.add_argument("--model", default=None, help="model directory (default: the stage-3 export)")
    p = add("register", cmd_register, "register the model in MLflow and apply the promotion rule",
            "Create a registered-model version with the evaluation metrics; move the champion alias "
            "when register.* says the new version wins.")
    p.add_argument("--model", default=None, help="model directory (default: the stage-3 export)")
    p = add("upscale", cmd_upscale, "batch-upscale LR latents or videos with a model",
            "Turn LR latents (.safetensors) or LR videos into HR videos (mp4). --model takes "
            "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a model directory.")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="file or directory (local or s3://)")
    p.add_argument("--output", required=True, help="output directory (local or s3://)")
    p.add_argument("--prompt", default="", help="caption used when an input has no sidecar .txt")
    p.add_argument("--save-latents", action="store_true", help="also write HR latents (.safetensors)")
    p = sub.add_parser("demo", help="run the tiny pipeline end to end in a fresh workspace",
                       description="Create a workspace (params with the tiny profile, dvc.yaml, synthetic and "
                                   "real sample videos), then run the whole DAG through Prefect (default) or "
                                   "DVC, with a local SQLite MLflow store.")
    p.add_argument("--workspace", default="runs/demo")
    p.add_argument("--runner", choices=["prefect", "dvc"], default="prefect")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[])
    p.add_argument("--force", action="store_true", help="recreate the workspace if it exists")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("synth", help="write synthetic test clips",
                       description="Write seeded synthetic clips (textures, pans, dark/bright/blurry variants).")
    p.add_argument("output")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except GVRError as e:
        print(f"gvr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gvr: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: keep the traceback when asked for
        if args.verbose or os.environ.get("GVR_TRACEBACK"):
            raise
        print(f"gvr: internal error: {type(e).__name__}: {e} (rerun with -v for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
