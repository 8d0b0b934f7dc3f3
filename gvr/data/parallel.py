"""Data-parallel map for batch stages (curate, degrade/encode, upscale): Ray when asked, threads otherwise.

`parallel_map(fn, items, compute=..., desc=...)` calls `fn(item)` for every item and returns one
`ItemResult` per item, in item order. An item whose call raises is recorded with its error message
and the batch goes on; so is an item whose Ray worker died.

Backends (from `ComputeParams`):
- `use_ray=True`: Ray tasks (one CPU each), or with `num_gpus > 0` a pool of Ray actors that each
  hold that share of a GPU, so a model loaded once per actor serves many items. The cluster is
  `compute.ray_address`, else `$RAY_ADDRESS`, else a local instance with `workers` CPUs (0 = all
  cores), dashboard off and worker logs kept out of the console. One Ray instance per process is
  started lazily and reused by every later call.
- `use_ray=False`: a thread pool of `workers` threads (0 = all cores; 1 = plain sequential calls in
  this thread). No start-up cost; the heavy work of the stages (PyAV decoding, OpenCV, torch)
  releases the GIL, so threads still overlap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gvr.config import ComputeParams
from gvr.errors import GVRError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


@dataclass
class ItemResult(Generic[R]):
    """The outcome of one item: `ok` with its `value`, or not ok with an `error` message."""

    item: Any
    ok: bool
    value: R | None = None
    error: str | None = None


def error_message(e: BaseException) -> str:
    """One line for a failed item: a GVRError's own message, else the exception type and message."""
    if isinstance(e, GVRError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _call(fn: Callable[[T], R], item: T) -> ItemResult[R]:
    try:
        return ItemResult(item, True, fn(item))
    except Exception as e:  # a failing item must never stop the batch
        return ItemResult(item, False, error=error_message(e))


def resolve_workers(compute: ComputeParams) -> int:
    """Worker count: `compute.workers`, or one per CPU core when it is 0."""
    return compute.workers or os.cpu_count() or 1


def parallel_map(fn: Callable[[T], R], items: Sequence[T], *, compute: ComputeParams, desc: str,
                 num_gpus: float = 0, progress: bool = True,
                 on_result: Callable[[int, ItemResult[R]], None] | None = None) -> list[ItemResult[R]]:
    """Apply `fn` to every item in parallel; failures are recorded per item, never raised.

    Args:
        fn: a picklable function (module level) of one item; with Ray it runs in worker processes.
        items: the work list; results come back in the same order.
        compute: backend choice, worker count and Ray address.
        desc: progress bar label.
        num_gpus: GPU share per Ray worker (e.g. 0.5 packs two actors per GPU); Ray only.
        progress: show a tqdm progress bar.
        on_result: called in this process as `on_result(index, result)` when each item finishes
            (in completion order), e.g. to checkpoint finished work while the batch runs.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not items:
        return []
    results: list[ItemResult[R] | None] = [None] * len(items)
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress, dynamic_ncols=True) as bar:

        def done(i: int, result: ItemResult[R]) -> None:
            results[i] = result
            bar.update(1)
            if on_result is not None:
                on_result(i, result)

        if compute.use_ray:
            _map_ray(fn, items, compute, num_gpus, done)
        else:
            _map_threads(fn, items, resolve_workers(compute), done)
    return results


def _map_threads(fn, items: list, workers: int, done) -> None:
    if workers <= 1 or len(items) == 1:
        for i, item in enumerate(items):
            done(i, _call(fn, item))
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="gvr-map") as pool:
        futures = {pool.submit(_call, fn, item): i for i, item in enumerate(items)}
        for f in as_completed(futures):
            done(futures[f], f.result())


# ------------------------------------------------------------------------------------ Ray


def ray_init(compute: ComputeParams) -> None:
    """Connect to the configured Ray cluster or start a quiet local instance (once per process)."""
    import ray

    if ray.is_initialized():
        return
    address = compute.ray_address or os.environ.get("RAY_ADDRESS") or None
    common = dict(logging_level=logging.WARNING, log_to_driver=False, ignore_reinit_error=True,
                  configure_logging=True)
    if address:
        ray.init(address=address, **common)
        return
    # Workers of a local instance run in other processes: give them this process's import path
    # so functions from scripts and test modules unpickle there too.
    path = os.pathsep.join(p for p in [os.getcwd(), *__import__("sys").path] if p)
    ray.init(num_cpus=resolve_workers(compute), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **common)


def _map_ray(fn, items: list, compute: ComputeParams, num_gpus: float, done) -> None:
    import ray

    ray_init(compute)
    fn_ref = ray.put(fn)  # shipped once, not once per task
    if num_gpus > 0:
        _map_ray_actors(fn_ref, items, num_gpus, done)
        return
    task = ray.remote(num_cpus=1, max_retries=0)(_call)
    window = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))  # bounded in-flight tasks
    pending: dict[Any, int] = {}
    next_i = 0
    while next_i < len(items) or pending:
        while next_i < len(items) and len(pending) < window:
            pending[task.remote(fn_ref, items[next_i])] = next_i
            next_i += 1
        finished, _ = ray.wait(list(pending), num_returns=1)
        for ref in finished:
            i = pending.pop(ref)
            done(i, _ray_get(ref, items[i])[0])


def _ray_get(ref, item) -> tuple[ItemResult, bool]:
    """The task's result, and whether its worker died (OOM, a segfault in a codec, a lost node)."""
    import ray

    try:
        return ray.get(ref), False
    except ray.exceptions.RayError as e:
        return ItemResult(item, False, error=f"worker failed: {error_message(e)}"), True


class _Worker:
    """A Ray actor that keeps its process (and whatever `fn` caches in it, e.g. a model) across items."""

    def run(self, fn, item):
        return _call(fn, item)


def _map_ray_actors(fn_ref, items: list, num_gpus: float, done) -> None:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < num_gpus:
        raise GVRError(f"Ray cluster has {gpus:g} GPUs; each worker needs {num_gpus:g}")
    n_actors = max(1, min(len(items), int(gpus // num_gpus)))
    actor_cls = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=0)(_Worker)
    free = [actor_cls.remote() for _ in range(n_actors)]
    started = list(free)
    pending: dict[Any, tuple[int, Any]] = {}
    next_i = 0
    try:
        while next_i < len(items) or pending:
            while free and next_i < len(items):
                actor = free.pop()
                pending[actor.run.remote(fn_ref, items[next_i])] = (next_i, actor)
                next_i += 1
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                i, actor = pending.pop(ref)
                result, died = _ray_get(ref, items[i])
                if not died:
                    free.append(actor)
                else:  # the actor died with the item: replace it
                    free.append(actor_cls.remote())
                    started.append(free[-1])
                done(i, result)
    finally:
        for actor in started:
            ray.kill(actor)
