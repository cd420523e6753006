"""Build (or load from the cache) the embedded benchmark for several corpus seeds and presets.

    python bench/build_seeds.py full:0 full:1000 quick:0 ...

Seed 0 is the TEST benchmark reported by the demo; bench/sweep.py uses seed 1000 as DEV (hyper-
parameter selection) and seeds 1 and 2 as the extra TEST seeds.
"""
import sys
import time

from alter_kernels.synthetic.inject import PRESETS, build_benchmark, with_overrides


def config_for(preset: str, seed: int):
    base = PRESETS["quick" if preset == "quick" else "default"]
    return base if seed == 0 else with_overrides(base, seed=seed)


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        preset, seed = spec.split(":")
        t = time.perf_counter()
        b = build_benchmark(config_for(preset, int(seed)), progress=False)
        print(f"{spec}: {b.root} ({time.perf_counter() - t:.0f}s)", flush=True)
