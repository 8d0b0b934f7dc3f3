"""parallel_map: order kept, failures recorded per item, the batch always finishes."""

import os
import threading

import pytest

from gvr.config import ComputeParams
from gvr.data.parallel import ItemResult, parallel_map


def square_or_fail(x: int) -> int:
    if x % 4 == 3:
        raise ValueError(f"bad item {x}")
    return x * x


def pid_and_gpus(x: int) -> tuple[int, str]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def die_on_two(x: int) -> int:
    if x == 2:
        os._exit(1)  # a crash that takes the worker process down
    return x


def check(results: list[ItemResult], items: list[int]) -> None:
    assert [r.item for r in results] == items
    for r in results:
        if r.item % 4 == 3:
            assert not r.ok and r.value is None and r.error == f"ValueError: bad item {r.item}"
        else:
            assert r.ok and r.value == r.item**2 and r.error is None


@pytest.mark.parametrize("workers", [1, 3])
def test_local_backends_keep_order_and_record_failures(workers):
    items = list(range(10))
    seen = []
    results = parallel_map(square_or_fail, items, compute=ComputeParams(use_ray=False, workers=workers),
                           desc="t", progress=False, on_result=lambda i, r: seen.append((i, r.ok)))
    check(results, items)
    assert sorted(seen) == [(i, i % 4 != 3) for i in items]


def test_threads_really_run_concurrently():
    barrier = threading.Barrier(3, timeout=10)  # deadlocks (BrokenBarrierError) unless 3 run at once
    results = parallel_map(lambda _: barrier.wait(), range(3), compute=ComputeParams(use_ray=False, workers=3),
                           desc="t", progress=False)
    assert all(r.ok for r in results)


def test_empty_input():
    assert parallel_map(square_or_fail, [], compute=ComputeParams(use_ray=False), desc="t") == []


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs and one (declared) GPU, shut down after the module."""
    ray = pytest.importorskip("ray")
    from gvr.data.parallel import ray_init

    if not ray.is_initialized():
        # Declare one GPU so the actor path can be scheduled on a CPU-only machine.
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__)])}})
    ray_init(ComputeParams())  # reuses the running instance
    yield ray
    ray.shutdown()


def test_ray_tasks_actors_and_dead_workers(ray_local):
    compute = ComputeParams(use_ray=True, workers=2)
    items = list(range(10))
    check(parallel_map(square_or_fail, items, compute=compute, desc="t", progress=False), items)

    # GPU work goes to actors that keep their process across items
    results = parallel_map(pid_and_gpus, list(range(6)), compute=compute, desc="t", progress=False, num_gpus=0.5)
    assert all(r.ok for r in results)
    pids = {r.value[0] for r in results}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(r.value[1] == "0" for r in results)  # each actor was given the (declared) GPU

    # a worker that dies fails only its own item
    results = parallel_map(die_on_two, [0, 1, 2, 3], compute=compute, desc="t", progress=False)
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error.startswith("worker failed")
    results = parallel_map(die_on_two, [0, 1, 2, 3], compute=compute, desc="t", progress=False, num_gpus=1)
    assert [r.value for r in results if r.ok] == [0, 1, 3] and "worker failed" in results[2].error
