#!/usr/bin/env python
"""Is the compiled extension ``alter_kernels.kernels._C`` of this checkout current? ``scripts/test.sh``
builds it only when it is not (issue 27: the test command rebuilt it on every run).

    python tools/extension_check.py     # exit 0: current; 1: a build is needed (why, on stderr)

Current means all of:

- ``alter_kernels/kernels/_C<EXT_SUFFIX>`` exists for this Python;
- its build stamp ``alter_kernels/kernels/_C.build.json``, written by ``setup.py`` after every build of the
  extension, names the torch version (and CUDA version) installed now;
- no file under ``csrc/``, nor ``alter_kernels/common/constants.py`` (compiled in as
  ``ALTER_SHANNON_TOL``), is newer than the ``.so``;
- ``import alter_kernels.kernels._C`` works (in a child process, from this checkout).

A ``.so`` without a stamp (built before the stamp existed, or copied) counts as not current.
This file is the one home of the stamp's name and content; ``setup.py`` loads it to write it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT_MODULE = "alter_kernels.kernels._C"          # setup.py's extension name
STAMP_NAME = "_C.build.json"
BUILD_INPUTS = ("csrc", os.path.join("alter_kernels", "common", "constants.py"))


def stamp() -> dict:
    """What a build records about the torch it was built against."""
    import torch
    return {"torch": torch.__version__, "cuda": torch.version.cuda}


def write_stamp(ext_path: str) -> str:
    """Write the stamp beside the built extension ``ext_path`` (through a temp name, then rename)."""
    path = os.path.join(os.path.dirname(os.path.abspath(ext_path)), STAMP_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**stamp(), "extension": os.path.basename(ext_path)}, f, indent=1)
    os.replace(tmp, path)
    return path


def _newest(paths) -> tuple[float, str]:
    best = (0.0, "")
    for top in paths:
        if os.path.isfile(top):
            best = max(best, (os.path.getmtime(top), top))
        for d, _, names in os.walk(top):
            for n in names:
                p = os.path.join(d, n)
                best = max(best, (os.path.getmtime(p), p))
    return best


def reasons(root: str = ROOT, want: dict | None = None, try_import: bool = True) -> list[str]:
    """Why the extension of checkout ``root`` must be (re)built; empty when it is current.
    ``want``: the stamp expected (default: :func:`stamp` of the torch installed now)."""
    so = os.path.join(root, *EXT_MODULE.split(".")) + sysconfig.get_config_var("EXT_SUFFIX")
    if not os.path.isfile(so):
        return [f"{os.path.relpath(so, root)} does not exist"]
    st_path = os.path.join(os.path.dirname(so), STAMP_NAME)
    try:
        with open(st_path) as f:
            got = json.load(f)
    except (OSError, ValueError):
        return [f"{os.path.relpath(st_path, root)} is missing or unreadable (unknown build)"]
    out = []
    want = stamp() if want is None else want
    for k, v in want.items():
        if got.get(k) != v:
            out.append(f"built for {k} {got.get(k)}, installed {k} is {v}")
    t, newest = _newest([os.path.join(root, p) for p in BUILD_INPUTS])
    if t > os.path.getmtime(so):
        out.append(f"{os.path.relpath(newest, root)} is newer than the extension")
    if not out and try_import:
        r = subprocess.run([sys.executable, "-c", f"import torch, {EXT_MODULE}"], cwd=root, capture_output=True, text=True)
        if r.returncode != 0:
            lines = (r.stderr or "").strip().splitlines()
            out.append(f"import {EXT_MODULE} failed: {lines[-1] if lines else r.returncode}")
    return out


def main() -> int:
    why = reasons()
    if why:
        print(f"{EXT_MODULE} needs a build: " + "; ".join(why), file=sys.stderr)
        return 1
    print(f"{EXT_MODULE} is current (built for the installed torch, its sources unchanged since); no rebuild")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
