"""The run context: everything one unlearning run carries besides the model's weights."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from . import _model_api as _m
from .batches import UnlearnData
from .methods import Method
from .options import UnlearnOptions


@dataclasses.dataclass
class RunContext:
    """One run of :func:`alter_kernels.unlearn.unlearn` (or the set-up of :func:`prepare_alter`):
    the method's record, the options, where it runs, the prepared data, and what the set-up
    changed on the model (``undo``: callables run when the run ends, in order)."""
    model: Any
    spec: Method
    opts: UnlearnOptions
    batch_size: int
    seed: int
    dev: torch.device
    tokenizer: Any = None
    dist: Any = None                        # a distributed.DistContext in data-parallel runs
    progress: bool = False                  # progress lines (the main process only)
    out_dir: str | None = None
    data: UnlearnData | None = None
    rows: tuple = (None, None)              # forget / retain rows as loaded (the held-out routing set)
    n_frozen: int = 0                       # leading forget experts kept frozen (continued unlearning)
    trained_experts: list = dataclasses.field(default_factory=list)
    threshold_source: str | None = None     # "config", "quantile" or "auto" (adapter methods)
    ref_model: Any = None                   # KL: a frozen copy of the model
    held: tuple | None = None               # held-out routing set: (examples, experts, held_out)
    undo: list[Callable[[], Any]] = dataclasses.field(default_factory=list)

    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def main(self) -> bool:
        """The process that reports and writes (the only one outside data-parallel runs)."""
        return self.dist is None or self.dist.is_main

    @property
    def mode(self) -> str | None:
        return self.dist.mode if self.dist is not None else None

    @property
    def show(self) -> bool:
        return self.progress and self.main

    @property
    def cfg(self):
        """The adapter's AlterConfig (adapter methods, once patched): the model's own, read where it
        lives; None for full-parameter methods."""
        if not self.spec.adapter or not _m.is_patched(self.model):
            return None
        return _m.get_state(self.model).config

    def data_kwargs(self) -> dict:
        return self.opts.data_kwargs()

    def restore(self) -> None:
        """Run (and forget) the ``undo`` callables."""
        todo, self.undo = self.undo, []
        for fn in todo:
            fn()
