"""ALTER unlearning inside ``transformers.Trainer``: :class:`AlterTrainer` and :func:`build`.

The engine's pieces are reused, not copied:

- ``prepare_alter`` (alter_kernels.unlearn): tokenise the rows, patch the model, assign forget
  rows to experts, initialise the routers, pick theta, cache the base-model entropies;
- ``alter_loss`` (alter_kernels.unlearn): the ALTER objective of one mixed batch (it sets the
  routing inputs from the batch: cached entropies, per-token expert labels);
- ``adapter_parameters``: the optimizer's groups A / B / router with lr_A / lr_B / lr_router;
- ``save_adapter``: what ``trainer.save_model()`` (and every checkpoint) writes.

One training item is a (forget row, retain row) pair, so a batch of ``per_device_train_batch_size``
items is the engine's mixed batch of as many forget rows plus as many retain rows.

Under DDP (accelerate launch / torchrun) the loss divides by the counts of the global batch
(``reduce``) and is scaled by the number of processes, as the engine does, so the averaged
gradient is the one of the whole batch. ``python/hf_trainer_unlearn.py`` runs it end to end.
Needs ``transformers`` (imported with this module).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import Trainer, TrainingArguments

from ..model import adapter_parameters, save_adapter
from ..unlearn import DEFAULTS, UnlearnOptions, alter_loss, prepare_alter
from ..unlearn.distributed import anchor_adapter_grads

__all__ = ["AlterTrainer", "AlterCollator", "PairDataset", "build"]


class PairDataset(torch.utils.data.Dataset):
    """Item k: forget example k and retain example k mod len(retain) (the retain rows cycle)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data.forget)

    def __getitem__(self, k):
        return (k, k % len(self.data.retain))


class AlterCollator:
    """A list of (forget, retain) index pairs -> the mixed batch ``alter_loss`` takes."""

    def __init__(self, data):
        self.data = data

    def __call__(self, pairs):
        return self.data.batch([f for f, _ in pairs], [r for _, r in pairs])


class AlterTrainer(Trainer):
    """Trainer whose loss is ALTER's, whose optimizer has ALTER's learning rates and whose saved
    model is the adapter."""

    def __init__(self, *args, alter_hparams: dict | None = None, lr_A: float = DEFAULTS["lr_A"],
                 lr_B: float = DEFAULTS["lr_B"], lr_router: float = DEFAULTS["lr_router"], **kwargs):
        super().__init__(*args, **kwargs)
        self.alter_hp = UnlearnOptions.from_kwargs("AlterTrainer", alter_hparams or {})
        self.alter_lrs = {"A": lr_A, "B": lr_B, "router": lr_router}
        self.alter_logs: list[dict] = []
        self.loss_is_scaled_for_ga = False          # a per-batch mean: the Trainer divides by the GA steps
        self._anchors = anchor_adapter_grads(self.model) if self.args.world_size > 1 else []

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = adapter_parameters(self.model)
            params = [{"params": [p for p in groups[k] if p.requires_grad], "lr": lr}
                      for k, lr in self.alter_lrs.items()]
            self.optimizer = torch.optim.AdamW([g for g in params if g["params"]],
                                               weight_decay=self.args.weight_decay)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inner = self.accelerator.unwrap_model(model)     # the patched model (routing state lives on it)
        world = self.args.world_size
        reduce = None
        if world > 1:
            def reduce(t):
                t = t.clone()
                dist.all_reduce(t)
                return t
        loss, logs = alter_loss(inner, inputs, self.alter_hp, forward=model, reduce=reduce)
        self.alter_logs.append(logs)
        return loss * world if world > 1 else loss

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            save_adapter(self.accelerator.unwrap_model(self.model), output_dir)


def build(model, tokenizer, forget, retain, out_dir, max_steps=10, batch_size=2, lr_A=DEFAULTS["lr_A"],
          lr_B=DEFAULTS["lr_B"], lr_router=DEFAULTS["lr_router"], seed=0, alter_config=None, **hparams):
    """Patch ``model`` and return an AlterTrainer ready for ``.train()`` (and the prepared data)."""
    data = prepare_alter(model, forget, retain, tokenizer, alter_config=alter_config, seed=seed,
                         batch_size=batch_size, **hparams)
    args = TrainingArguments(output_dir=out_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
                             learning_rate=lr_B, lr_scheduler_type="constant", weight_decay=0.0,
                             remove_unused_columns=False, report_to=[], save_strategy="no", logging_steps=1,
                             seed=seed, data_seed=seed, use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True,
                             # DDP: the routers get gradient only through the router loss, which DDP's
                             # search from the forward outputs cannot see; every adapter parameter gets a
                             # gradient each step anyway (anchor_adapter_grads), so no search is needed
                             ddp_find_unused_parameters=False)
    trainer = AlterTrainer(model=model, args=args, train_dataset=PairDataset(data), data_collator=AlterCollator(data),
                           alter_hparams={k: v for k, v in hparams.items() if k in ("beta", "gamma", "lam", "rho",
                                                                                     "struct_q")},
                           lr_A=lr_A, lr_B=lr_B, lr_router=lr_router)
    return trainer, data
