"""Training checkpoints: trainable weights, optimizer, RNG states, step and history in one
file, written to a temporary name and renamed into place (a crash never leaves half a file;
the previous checkpoint stays until the new one is complete)."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_torch_save(obj, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=d)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(out_dir: str, *, method: str, step: int, trainable: dict, optimizer, history: list,
                    fingerprint: str, extra: dict | None = None) -> str:
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    atomic_torch_save({
        "format_version": FORMAT_VERSION,
        "method": method,
        "step": step,
        "trainable": {k: v.detach().cpu().clone() for k, v in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": history,
        "fingerprint": fingerprint,
        "extra": extra or {},
    }, path)
    return path


def load_checkpoint(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RuntimeError(f"resume: {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ck, dict) or ck.get("format_version", 0) > FORMAT_VERSION or "step" not in ck:
        raise RuntimeError(f"resume: {path} is not an alter_kernels checkpoint this version can read")
    return ck
