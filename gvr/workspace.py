"""Pipeline workspaces: a directory with params.yaml, dvc.yaml, raw videos and DVC initialised.

The project checkout is itself a workspace (`dvc repro` at its root). `create_workspace` makes a
fresh one elsewhere (for `gvr demo`, tests, or a team's experiment): it copies the project's
params.yaml with a profile and overrides written in, and dvc.yaml with the code dependencies
(`gvr/...`) pointed at this installation, so DVC still reruns stages whose code changed.

It also holds what an orchestrator needs from a workspace: its stages (dvc.yaml is the single
source of truth for their order and commands), writing a profile and overrides into params.yaml
so that DVC sees them, a lock so two runs never drive DVC in one workspace, and running commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gvr.config import PROJECT_ROOT, Params, load_params, parse_override, read_params_file
from gvr.errors import ConfigError, GVRError

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


def project_file(name: str) -> Path:
    path = PROJECT_ROOT / name
    if not path.is_file():
        raise ConfigError(f"{name} not found next to the gvr package ({PROJECT_ROOT}); workspaces are "
                          "created from a project checkout")
    return path


def code_deps(dep: str) -> list[str]:
    """Absolute paths of the Python sources a `gvr/...` dependency names (a file, or a package dir).

    Directories are expanded to their `.py` files: a directory dependency would also hash the
    `__pycache__` files Python writes on import, and DVC would rerun stages whose code never changed.
    """
    path = PACKAGE_DIR.parent / dep
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return [str(path)]


def workspace_dvc_yaml() -> dict:
    """dvc.yaml with `gvr/...` code dependencies pointed at this installation's source files."""
    data = yaml.safe_load(project_file("dvc.yaml").read_text())
    for stage in data["stages"].values():
        deps = []
        for d in stage.get("deps", []):
            deps += code_deps(d) if isinstance(d, str) and d.startswith("gvr/") else [d]
        stage["deps"] = deps
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
        if not ((dest / "params.yaml").is_file() and (dest / "dvc.yaml").is_file()):
            raise GVRError(f"{dest} is not a gvr workspace (no params.yaml + dvc.yaml); not deleting it")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(project_file("params.yaml"), dest / "params.yaml")
    apply_params(dest, profile, list(overrides))  # fails now, not in the middle of the DAG
    (dest / "dvc.yaml").write_text(yaml.safe_dump(workspace_dvc_yaml(), sort_keys=False))
    (dest / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.gvr/\n")
    (dest / "data" / "raw").mkdir(parents=True)
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    return dest


def add_videos(dest: str | Path, *, good: int = 0, bad: bool = False, samples: bool = False, seed: int = 0,
               size: tuple[int, int] = (96, 128), frames: int = 48, raw: str | None = None) -> list[str]:
    """Fill the raw-video folder (`dest/data/raw`, or `raw`: any local dir or s3:// prefix).

    `good` seeded synthetic clips that pass curation (pans, moving objects, static scenes), with
    `bad` one each of the dark, bright and blurry variants and a too-short clip that curation must
    reject, and with `samples` the real sample videos (Debian packages; see gvr.data.samples).
    """
    from gvr.data.synthetic import ACCEPTABLE_KINDS, write_synthetic_dataset
    from gvr.io.storage import join

    raw = raw or str(Path(dest) / "data" / "raw")
    paths: list[str] = []
    if good:
        paths += write_synthetic_dataset(raw, count=good, frames=frames, size=size, seed=seed, kinds=ACCEPTABLE_KINDS)
    if bad:
        paths += write_synthetic_dataset(join(raw, "rejects"), count=3, frames=frames, size=size, seed=seed,
                                         kinds=("dark", "bright", "blurry"))
        paths += write_synthetic_dataset(join(raw, "short"), count=1, frames=8, size=size, seed=seed,
                                         kinds=("pan",))
    if samples:
        from gvr.data.samples import fetch_sample_videos
        from gvr.io.storage import write_bytes

        for src in fetch_sample_videos():
            target = join(raw, Path(src).name)
            write_bytes(target, Path(src).read_bytes())
            paths.append(target)
    return paths


@dataclass(frozen=True)
class Stage:
    """One dvc.yaml stage: its name, shell commands and working directory (relative to the workspace)."""

    name: str
    cmds: tuple[str, ...]
    wdir: str = "."


def read_stages(workspace: str | os.PathLike) -> list[Stage]:
    """The stages of `workspace/dvc.yaml`, in file order."""
    path = Path(workspace) / "dvc.yaml"
    if not path.is_file():
        raise GVRError(f"{path}: not found (the workspace needs a dvc.yaml listing the stages)")
    try:
        stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError as e:
        raise GVRError(f"{path}: not valid YAML ({e})") from None
    out = []
    for name, spec in stages.items():
        if "foreach" in spec or "matrix" in spec:
            raise GVRError(f"{path}: stage {name!r} uses foreach/matrix, which the flow does not expand; "
                           "write one stage per item")
        cmd = spec.get("cmd")
        if not cmd:
            raise GVRError(f"{path}: stage {name!r} has no cmd")
        out.append(Stage(str(name), tuple([cmd] if isinstance(cmd, str) else cmd), str(spec.get("wdir", "."))))
    return out


def select_stages(stages: Sequence[Stage], names: Sequence[str] | None) -> list[Stage]:
    """The named stages, in dvc.yaml order (all of them for None)."""
    if names is None:
        return list(stages)
    known = {s.name for s in stages}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GVRError(f"stages: {', '.join(unknown)} not in dvc.yaml (have: {', '.join(s.name for s in stages)})")
    return [s for s in stages if s.name in set(names)]


def apply_params(workspace: str | os.PathLike, profile: str | None = None,
                 overrides: Sequence[str] = ()) -> Params:
    """Validate the workspace's params with `profile`/`overrides`, write those into params.yaml, return them.

    They go into the file, not onto the stage command lines, so DVC sees the change (and reruns
    what depends on it) and every stage reads the same values, as `dvc exp run --set-param` does.
    The top-level `profile:` key selects the profile; an override lands in the active profile's
    section when there is one (profiles apply on top of the top-level values).
    """
    path = Path(workspace) / "params.yaml"
    params = load_params(path, profile, overrides)  # fails here, before any stage, on a bad value
    if profile is None and not overrides:
        return params
    edits = [parse_override(o) for o in overrides]
    profile = next((v for k, v in reversed(edits) if k == "profile"), profile)
    doc, dump = _round_trip(path)
    if profile is not None:
        doc["profile"] = profile
    active = doc.get("profile")
    for key, value in edits:
        if key == "profile":
            continue
        node = doc["profiles"][active] if active else doc
        *sections, leaf = key.split(".")
        for s in sections:
            if node.get(s) is None:
                node[s] = {}
            node = node[s]
        node[leaf] = value
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump(doc))
    os.replace(tmp, path)
    written = load_params(path)
    if _resolved(written) != _resolved(params):  # a safety net: the file must now say what was asked
        raise ConfigError(f"{path}: could not write profile/overrides so that they take effect")
    return written


def _resolved(params: Params) -> dict:
    data = params.to_dict()
    data.pop("profiles")
    return data


def _round_trip(path: Path):
    """The params document and a dumper, keeping comments and order when ruamel.yaml is installed."""
    try:
        from ruamel.yaml import YAML
    except ImportError:
        return read_params_file(path), lambda d: yaml.safe_dump(d, sort_keys=False)
    import io

    ry = YAML()
    doc = ry.load(path.read_text()) or {}

    def dump(d) -> str:
        buf = io.StringIO()
        ry.dump(d, buf)
        return buf.getvalue()

    return doc, dump


@contextlib.contextmanager
def workspace_lock(workspace: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the workspace so two pipeline runs never run DVC in it at once."""
    import fcntl

    path = Path(workspace) / ".gvr" / "flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks until the other run finishes
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class CommandResult:
    """Exit status, wall time and the last lines of a command's output."""

    returncode: int
    seconds: float
    tail: tuple[str, ...]
    output: str


def run_command(cmd: str | Sequence[str], cwd: str | os.PathLike, env: dict[str, str],
                echo: Callable[[str], None], keep: int = 40) -> CommandResult:
    """Run `cmd` (a shell string, as DVC runs stage commands, or an argv list), streaming its output to `echo`."""
    t0 = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=cwd, env=env, text=True, bufsize=1,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            echo(line)
    return CommandResult(proc.returncode, time.monotonic() - t0, tuple(deque(lines, maxlen=keep)), "\n".join(lines))


def dvc_status(output: str) -> str:
    """What `dvc repro --single-item` did, from its log: ran, skipped (unchanged) or restored (run cache)."""
    if "Running stage" in output:
        return "ran"
    if "is cached - skipping run" in output:
        return "restored"
    return "skipped"
