"""What :func:`alter_kernels.unlearn.unlearn` returns and raises."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..config import AlterConfig


class UnlearnError(RuntimeError):
    """The run cannot proceed as asked."""


class UnlearnInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run with ``out_dir``: the run finished its current step, wrote
    ``checkpoint`` (the state after ``step`` steps) and stopped; ``resume=True`` continues."""

    def __init__(self, msg: str, step: int, checkpoint: str | None):
        super().__init__(msg)
        self.step, self.checkpoint = step, checkpoint


class UnlearnDivergedError(UnlearnError):
    """A non-finite loss or gradient stopped the run; ``checkpoint`` is the last good one."""

    def __init__(self, msg: str, step: int, checkpoint: str | None, history: list):
        super().__init__(msg)
        self.step, self.checkpoint, self.history = step, checkpoint, history


@dataclasses.dataclass
class UnlearnResult:
    model: Any
    method: str
    history: list
    metrics: list
    seconds: float
    steps: int
    config: AlterConfig | None = None
    domain_map: dict = dataclasses.field(default_factory=dict)
    out_dir: str | None = None
    adapter_dir: str | None = None
    model_dir: str | None = None
    trained_experts: list = dataclasses.field(default_factory=list)
    threshold: float | None = None          # ALTER's theta after set-up (also in config / the adapter)
    threshold_source: str | None = None     # "config", "quantile" (threshold_quantile) or "auto" (threshold_auto)
    forget_nll_start: float | None = None   # held-out forget NLL before training (None: not measured)
    forget_unchanged: bool | None = None    # the run ended with that NLL essentially unchanged (and warned)

    @property
    def router_accuracy(self) -> dict | None:
        """Held-out routing accuracy of the last epoch ({"forget", "retain", "overall", "per_layer", ...})."""
        for m in reversed(self.metrics):
            if "router_accuracy" in m:
                return m["router_accuracy"]
        return None

    @property
    def forget_nll(self) -> tuple[float | None, float | None]:
        """(before training, after the last epoch) held-out forget NLL."""
        end = self.metrics[-1].get("eval_forget_nll") if self.metrics else None
        return self.forget_nll_start, end

    @property
    def high_entropy_share(self) -> float:
        vals = [h["high_entropy_share"] for h in self.history if "high_entropy_share" in h
                and not math.isnan(h["high_entropy_share"])]
        return sum(vals) / len(vals) if vals else float("nan")
