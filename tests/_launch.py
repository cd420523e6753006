"""Launching torchrun from tests: a fresh rendezvous port each time, a bounded wait, one retry.

A 2-process launch hung once on a loaded 2-core machine (a rendezvous race of --standalone);
a fixed free port and a retry after a timeout keep such a hang from stalling the suite.
"""
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]


def run(make_cmd, attempts: int = 2, timeout: int = 300) -> str:
    """Run make_cmd() (called anew for each attempt); returns stdout, fails with the output tail."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for attempt in range(attempts):
        try:
            res = subprocess.run(make_cmd(), capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            if attempt + 1 < attempts:
                continue
            raise
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        return res.stdout
