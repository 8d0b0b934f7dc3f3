"""Pipeline workspaces: a directory with params.yaml, dvc.yaml, raw videos and DVC initialised.

The project checkout is itself a workspace (`dvc repro` at its root). `create_workspace` makes a
fresh one elsewhere (for `gvr demo`, tests, or a team's experiment): it copies the project's
params.yaml with a profile and overrides written in, and dvc.yaml with the code dependencies
(`gvr/...`) pointed at this installation, so DVC still reruns stages whose code changed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from gvr.config import PROJECT_ROOT, load_params, parse_override, read_params_file
from gvr.errors import ConfigError, GVRError

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


def project_file(name: str) -> Path:
    path = PROJECT_ROOT / name
    if not path.is_file():
        raise ConfigError(f"{name} not found next to the gvr package ({PROJECT_ROOT}); workspaces are "
                          "created from a project checkout")
    return path


def workspace_params(profile: str | None, overrides: Iterable[str] = ()) -> dict:
    """The project's params.yaml with `profile` and `section.key=value` overrides written in."""
    data = read_params_file(project_file("params.yaml"))
    data["profile"] = profile
    # Overrides go into the profile's section so that they win over it, as --set does.
    target = data.setdefault("profiles", {}).setdefault(profile, {}) if profile else data
    for item in overrides:
        key, value = parse_override(item)
        node = target
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return data


def workspace_dvc_yaml() -> dict:
    """dvc.yaml with `gvr/...` code dependencies made absolute (this installation's package)."""
    data = yaml.safe_load(project_file("dvc.yaml").read_text())
    for stage in data["stages"].values():
        stage["deps"] = [str(PACKAGE_DIR.parent / d) if isinstance(d, str) and d.startswith("gvr/") else d
                         for d in stage.get("deps", [])]
    return data


def tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this interpreter's bin directory first on PATH.

    Stage commands (`gvr ...`) and `dvc` then resolve to this installation even when its virtual
    environment is not activated (e.g. `.venv/bin/gvr demo`).
    """
    env = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != bindir:
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    return env


def run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env=tool_env())
    except FileNotFoundError:
        raise GVRError(f"`{cmd[0]}` not found; install it (git) or gvr's pipeline extras (dvc)") from None
    except subprocess.CalledProcessError as e:
        raise GVRError(f"`{' '.join(cmd)}` failed in {cwd}: {(e.stderr or e.stdout).strip()[-500:]}") from None


def create_workspace(dest: str | Path, *, profile: str | None = "tiny", overrides: Iterable[str] = (),
                     force: bool = False) -> Path:
    """Make `dest` a workspace: params.yaml, dvc.yaml, .gitignore, git + DVC initialised, data/raw/."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise GVRError(f"{dest} exists and is not empty (use --force to recreate it)")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    params = workspace_params(profile, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_params(dest / "params.yaml")  # fail now, not in the middle of the DAG
    (dest / "dvc.yaml").write_text(yaml.safe_dump(workspace_dvc_yaml(), sort_keys=False))
    (dest / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.gvr/\n")
    (dest / "data" / "raw").mkdir(parents=True)
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    return dest


def add_videos(dest: str | Path, *, synthetic: int = 0, samples: bool = False, seed: int = 0,
               size: tuple[int, int] = (96, 128), frames: int = 48) -> list[Path]:
    """Fill `dest/data/raw` with synthetic clips (all variants) and, optionally, real sample videos."""
    raw = Path(dest) / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if synthetic:
        from gvr.data.synthetic import write_synthetic_dataset

        paths += [Path(p) for p in write_synthetic_dataset(raw, count=synthetic, frames=frames, size=size,
                                                           seed=seed)]
    if samples:
        from gvr.data.samples import fetch_sample_videos

        for src in fetch_sample_videos():
            target = raw / Path(src).name
            shutil.copy(src, target)
            paths.append(target)
    return paths
