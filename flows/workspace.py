"""What the flow needs from a pipeline workspace: its stages (from dvc.yaml), its params, a lock.

A workspace is a folder with `params.yaml` and `dvc.yaml` (usually a git + DVC repository).
dvc.yaml is the single source of truth for the stages, their order and their commands.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gvr.config import Params, load_params, parse_override, read_params_file
from gvr.errors import ConfigError, GVRError


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
