"""The warp-specialised Gluon forward (`gvr.models.attention_gluon`) against the Triton kernel, and its launch sizes.

Sparse local attention's inference forward at 20x68x120 tokens (77 frames at 1080p), 24 heads of 64, bf16, top-1, 3
and 7, on one Hopper GPU: the Triton kernel (`attention_triton._forward` without the log-sum-exp) and the Gluon
kernel with its defaults and with other sizes of its ring (QB query tiles, NS key blocks), register split and
gather step, in the same process. Every output is compared with the Triton kernel's (they are bit-identical).
Each kernel is timed `--repeats` times in turn (a median of CUDA-event timings each); `_ms` is the median of
those, `_ms_min` / `_ms_max` their spread, a few percent on the H200, whose power cap moves its SM clock. While each
timing runs, a thread reads the GPU's SM clock, power and NVML's reasons for a clock below the maximum every
few milliseconds (where `pynvml` is importable): `_mhz` is the median of the timings' mean clocks, `_mhz_min` /
`_mhz_max` their spread, `_mcycles` the median of ms x MHz (millions of SM cycles a call takes), and `_rounds`
lists each timing with its clock, power and reasons, so that a slow round can be told from a lower clock.
`_tflops` counts the work on the keys each query attends, as `attention.py` does.

do_bench flushes the L2 cache before every call, and its flush (a 256 MB write) draws power too. With
`--sustained CALLS` the Triton kernel and the `--sustained-variants` are also run CALLS times back to back (no
flush, no gap: a steady stream of calls), in turn, three rounds: `_sustained_ms` a call, `_sustained_mj`
the energy a call (NVML's energy counter), `_sustained_watts` the mean power, `_sustained_tflops`. While the card
is held at its power cap, a call's time is its energy over the cap, so `_sustained_mj` is what a faster
kernel under the cap has to lower.
Needs a Hopper GPU and Triton >= 3.6 (no interpreter runs Gluon). Results and what they mean: benchmarks/README.md,
"A warp-specialised forward in Gluon".

    python benchmarks/attention_gluon.py --sustained 2000 --out benchmarks/results/attention-gluon-nvidia-h200.json
"""

import argparse
import datetime
import functools
import json
import math
import statistics
import sys
import threading
import time

import torch
import triton

VARIANTS = {  # keyword arguments of attention_gluon.forward
    "default": {},  # QB 4, NS 5, 144 / 56 registers, 64-row gather steps
    "qb3_ns4": {"QB": 3, "NS": 4},
    "qb2_ns6": {"QB": 2, "NS": 6},
    "regs_152_40": {"CONSUMER_REGS": 152, "PRODUCER_REGS": 40},
    "chunk_32": {"CHUNK": 32},
}


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


# NVML's reasons for holding the clocks below their maximum (nvmlClocksEventReason* bits)
CLOCK_REASONS = {0x1: "idle", 0x2: "application clocks", 0x4: "power cap", 0x8: "hardware slowdown",
                 0x10: "sync boost", 0x20: "thermal (software)", 0x40: "thermal (hardware)", 0x80: "power brake"}


class GPUState:
    """The GPU's SM clock and power over a `with` block, read through NVML every `period` seconds on a thread:
    `mhz` and `watts` are their means, `reasons` the names of the reasons NVML gave for clocks below the maximum,
    `mj` the energy used (millijoules, NVML's counter). All None where pynvml is missing."""

    def __init__(self, period: float = 0.002):
        self.period, self.mhz, self.watts, self.reasons, self.mj = period, None, None, None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            reasons = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                       or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons)
            self._read = lambda: (pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                                  pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, reasons(handle))
            self._energy = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception:  # no NVML here: timings go unannotated
            self._read = None

    def __enter__(self):
        self._samples, self._stop = [], threading.Event()
        if self._read is not None:
            self._mj0 = self._energy()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.period):
            self._samples.append(self._read())

    def __exit__(self, *exc):
        self._stop.set()
        if self._read is None:
            return
        self._thread.join()
        self.mj = self._energy() - self._mj0
        if self._samples:
            mhz, watts, masks = zip(*self._samples)
            self.mhz, self.watts = statistics.fmean(mhz), statistics.fmean(watts)
            union = functools.reduce(lambda x, y: x | y, masks)
            self.reasons = [name for bit, name in CLOCK_REASONS.items() if union & bit]


def sustained(fn, calls: int) -> tuple[float, GPUState]:
    """Milliseconds a call over `calls` calls launched back to back, and the GPU's state over them."""
    torch.cuda.synchronize()
    with GPUState() as state:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3 / calls
    return ms, state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="20x68x120")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--topk", default="1,3,7")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--repeats", type=int, default=5, help="timings per kernel, taken in turn; the median is kept")
    parser.add_argument("--sustained", type=int, default=0, help="calls back to back per sustained round (0: none)")
    parser.add_argument("--sustained-variants", default="default", help="VARIANTS also run back to back")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        sys.exit("benchmarks/attention_gluon.py needs a Hopper GPU")
    from attention import attended_pairs  # benchmarks/attention.py: the goal's count of attended keys

    from gvr.models import attention_gluon as AG
    from gvr.models import attention_triton as TK

    grid = tuple(int(x) for x in args.grid.split("x"))
    window = (9, 12)
    geo = TK.Geometry(grid, window, 64)
    metrics: dict[str, float] = {}
    torch.manual_seed(0)
    for topk in (int(x) for x in args.topk.split(",")):
        q, k, v = (torch.randn(1, args.heads, math.prod(grid), 64, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        units = TK.select_units(q, k, grid, window, topk).to(torch.int32).contiguous()
        ref = TK._forward(q, k, v, units, geo, lse=False)[0]
        gflop = 4 * 64 * attended_pairs(None, q, k, grid, f"sparse_local_top{topk}") / 1e9
        metrics[f"top{topk}_gflop"] = gflop
        runs = {"triton": functools.partial(TK._forward, q, k, v, units, geo, lse=False)}
        for name in args.variants.split(","):
            runs[name] = functools.partial(AG.forward, q, k, v, units, grid, window, **VARIANTS[name])
            metrics[f"top{topk}_{name}_max_abs_diff"] = (runs[name]().float() - ref.float()).abs().max().item()
        times: dict[str, list[float]] = {name: [] for name in runs}
        states: dict[str, list[GPUState]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # round robin: the GPU's clock moves over a run
            for name, run in runs.items():
                with GPUState() as state:
                    times[name].append(bench(run))
                states[name].append(state)
        for name, ms in times.items():
            metrics[f"top{topk}_{name}_ms"] = statistics.median(ms)
            metrics[f"top{topk}_{name}_tflops"] = gflop / statistics.median(ms)
            metrics[f"top{topk}_{name}_ms_min"], metrics[f"top{topk}_{name}_ms_max"] = min(ms), max(ms)
            if all(st.mhz is not None for st in states[name]):
                mhz = [st.mhz for st in states[name]]
                metrics[f"top{topk}_{name}_mhz"] = statistics.median(mhz)
                metrics[f"top{topk}_{name}_mhz_min"], metrics[f"top{topk}_{name}_mhz_max"] = min(mhz), max(mhz)
                # SM cycles a call takes: steadier than ms where the clock moves (the memory's clock does not)
                metrics[f"top{topk}_{name}_mcycles"] = statistics.median(t * f / 1e3 for t, f in zip(ms, mhz))
                metrics[f"top{topk}_{name}_rounds"] = [
                    {"ms": round(t, 4), "mhz": round(st.mhz), "watts": round(st.watts), "clock_reasons": st.reasons}
                    for t, st in zip(ms, states[name])]
        if args.sustained:  # a steady stream of calls, without do_bench's L2 flush between them
            steady = {name: runs[name] for name in ["triton", *args.sustained_variants.split(",")]}
            rounds: dict[str, list] = {name: [] for name in steady}
            for _ in range(3):
                for name, run in steady.items():
                    rounds[name].append(sustained(run, args.sustained))
            for name, rr in rounds.items():
                key = f"top{topk}_{name}_sustained"
                metrics[f"{key}_ms"] = statistics.median(ms for ms, _ in rr)
                metrics[f"{key}_tflops"] = gflop / metrics[f"{key}_ms"]
                if all(st.mj is not None for _, st in rr):
                    metrics[f"{key}_mj"] = statistics.median(st.mj / args.sustained for _, st in rr)
                    metrics[f"{key}_watts"] = statistics.median(st.watts for _, st in rr)
                    metrics[f"{key}_mhz"] = statistics.median(st.mhz for _, st in rr)
                    metrics[f"{key}_rounds"] = [
                        {"ms": round(ms, 4), "mj": round(st.mj / args.sustained, 1), "mhz": round(st.mhz),
                         "watts": round(st.watts), "clock_reasons": st.reasons} for ms, st in rr]
        print({k: v if isinstance(v, list) else round(v, 4) for k, v in metrics.items()
               if k.startswith(f"top{topk}_")}, flush=True)
    if args.out:
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                  "date": datetime.date.today().isoformat(),
                  "command": " ".join(["python benchmarks/attention_gluon.py", *(argv if argv is not None else sys.argv[1:])]),
                  "grid": args.grid, "heads": args.heads, "head_dim": 64, "variants": VARIANTS, "metrics": metrics}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
