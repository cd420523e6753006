"""Shared helpers of the benchmarks: timing, peak memory, machine description, JSON + markdown output.

Timing: median of ``iters`` runs after ``warmup`` runs (CUDA: each run between two CUDA events,
so host-side launch gaps before the first kernel do not count and no host timer resolution
limits a sub-millisecond kernel; CPU: perf_counter).
Peak memory: on CUDA, torch.cuda.max_memory_allocated above the memory in use before the call;
on CPU, the peak of the running sum of tensor allocations recorded by torch.profiler
(profile_memory=True) during one call: the extra memory the call needs, O(N) vs O(N*V) shows.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import threading
import time
from typing import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_call(fn: Callable, device="cpu") -> float:
    """Seconds of one fn() call: CUDA events around it on a CUDA device (synchronised after),
    perf_counter on the CPU."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_fn(fn: Callable, device="cpu", warmup: int = 2, iters: int = 5, min_time: float = 0.0) -> float:
    """Median seconds of fn() over ``iters`` runs (more while their sum is under min_time)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    while len(times) < iters or sum(times) < min_time:
        times.append(timed_call(fn, device))
        if len(times) >= 1000:
            break
    return statistics.median(times)


def copy_bandwidth(device, nbytes: int = 2 << 30, iters: int = 10) -> dict:
    """Device-to-device copy bandwidth through torch (dst.copy_(src)), counting the bytes read
    plus the bytes written (the convention of the issue and of the device notes: ~4.3 TB/s on an
    H200). The bar for a memory-bound kernel that reads its input once."""
    device = torch.device(device)
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, warmup=2, iters=iters)
    out = {"bytes": 2 * n, "time_ms": t * 1e3, "GB_s": 2 * 2 * n / t / 1e9}
    del src, dst
    return out


def peak_memory(fn: Callable, device="cpu") -> int:
    """Bytes of extra memory at the peak of one fn() call (see module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    # allocations are booked as the self memory of the op that made them, frees as "[memory]"
    # events; walking them in time order gives the running total (an op's internal transient
    # peak is seen only as its net self memory).
    events = [e for e in prof.events() if e.self_cpu_memory_usage]
    events.sort(key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cuda"] = torch.version.cuda
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:                 # not installed, or broken
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_sms"] = props.multi_processor_count
        info["gpu_memory_GiB"] = round(props.total_memory / 2**30, 1)
    return info


def write_results(path_stem: str, results: dict, table_md: str) -> tuple[str, str]:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically (the package's one atomic writer);
    returns both paths."""
    from alter_kernels.common.fsio import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    out = []
    for ext, text in ((".json", json.dumps(results, indent=2, sort_keys=True) + "\n"), (".md", table_md)):
        out.append(atomic_write(path_stem + ext, text))
    return tuple(out)


def md_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class RssPeak:
    """Peak RSS (bytes) above the RSS at entry, sampled every 20 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def rss_peak(fn):
    with RssPeak() as r:
        fn()
    return r.extra


def round_robin(fns: dict, reps: int, warmup: int = 1) -> dict:
    """{name: [seconds per repetition]}: every fn once per repetition, in order."""
    times = {k: [] for k in fns}
    for it in range(warmup + reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if it >= warmup:
                times[k].append(time.perf_counter() - t0)
        print(f"  rep {it - warmup + 1}/{reps}:", {k: round(v[-1], 2) for k, v in times.items() if v}, flush=True)
    return times
