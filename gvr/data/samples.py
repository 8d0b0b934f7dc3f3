"""Real sample videos from Debian packages (opencv-doc, python3-imageio), fetched once and cached.

`scripts/fetch_sample_videos.sh` does the fetching (`apt-get download` + `dpkg -x`, no root
needed when the package lists exist); this wraps it with a cache under `~/.cache/gvr/samples`
($GVR_CACHE_DIR/samples) that is filled atomically, so concurrent or interrupted runs never leave
a half-filled cache behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gvr.config import PROJECT_ROOT
from gvr.errors import GVRError

SCRIPT = PROJECT_ROOT / "scripts" / "fetch_sample_videos.sh"
_DONE = ".complete"  # lists the fetched files; written last


def sample_cache() -> Path:
    """Where fetched sample videos are kept."""
    from gvr.io.storage import cache_dir

    return cache_dir() / "samples"


def fetch_sample_videos(dest: str | os.PathLike | None = None, *, refresh: bool = False) -> list[str]:
    """Paths of the real sample videos (fetched on first use); copied into `dest` when given."""
    cache = sample_cache()
    if refresh or not (cache / _DONE).is_file():
        _fill(cache)
    names = (cache / _DONE).read_text().split()
    paths = [cache / n for n in names]
    if dest is None:
        return [str(p) for p in paths]
    Path(dest).mkdir(parents=True, exist_ok=True)
    return [shutil.copy2(p, Path(dest) / p.name) for p in paths]


def _fill(cache: Path) -> None:
    if not SCRIPT.is_file():
        raise GVRError(f"{SCRIPT}: fetch script not found (it ships with the source tree, not the wheel)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".samples-", dir=cache.parent))
    try:
        run = subprocess.run(["bash", str(SCRIPT), str(tmp)], capture_output=True, text=True)
        if run.returncode != 0:
            raise GVRError(f"fetching sample videos failed: {run.stderr.strip().splitlines()[-1:] or run.returncode}")
        names = sorted(Path(line).name for line in run.stdout.split())
        (tmp / _DONE).write_text("\n".join(names) + "\n")
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
