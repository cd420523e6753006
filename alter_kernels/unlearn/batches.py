"""The engine's batches: the mixed forget + retain batch of one step, the per-epoch order, and
batched passes over examples (split over the ranks in data-parallel runs)."""
from __future__ import annotations

import dataclasses
import math

import torch

from ..config import AlterConfig
from .data import collate, epoch_order, pad_float
from .util import progress_bar


@dataclasses.dataclass(kw_only=True)
class UnlearnData:
    """The prepared data of an unlearning run, whatever the method (see :func:`prepare_alter`):
    tokenised forget / retain examples, each forget row's expert, what the method caches from the
    base model and the adapter's config. Built by keyword. ``batch(fi, ri)`` builds the mixed
    batch that :func:`alter_kernels.unlearn.alter_loss` takes, for another training loop (HF
    Trainer, ...).

    ``forget_cache`` / ``retain_cache``: (routing entropies, base S_q) per example, ALTER only;
    ``forget_ref``: the reference log-probs of the forget rows, NPO only; ``config``: the adapter's
    config once the set-up is done (None for full-parameter methods)."""
    forget: list
    retain: list
    pad_id: int
    forget_domain: list
    domain_map: dict = dataclasses.field(default_factory=dict)
    forget_cache: tuple | None = None
    retain_cache: tuple | None = None
    forget_top: list | None = None         # answer-key router: base greedy next tokens per example
    retain_top: list | None = None
    forget_ref: list | None = None
    forget_generic: list | None = None         # forget_loss="generic": (ids, log-probs, stated) per forget row
    config: AlterConfig | None = None

    def batch(self, forget_idx, retain_idx, device=None) -> dict:
        return batch_of(self, list(forget_idx), list(retain_idx), device or "cpu")

    def step_batch(self, epoch: int, k: int, batch_size: int, seed: int, device) -> dict:
        """Batch ``k`` of ``epoch``: forget rows in the epoch's seeded order, retain rows cycling."""
        order = epoch_order(len(self.forget), seed, epoch)
        fi = order[k * batch_size:(k + 1) * batch_size]
        ri = []
        if self.retain:
            rorder = epoch_order(len(self.retain), seed, epoch, salt=1)
            ri = [rorder[(k * batch_size + j) % len(self.retain)] for j in range(batch_size)]
        return batch_of(self, fi, ri, device)


AlterData = UnlearnData   # its name before issue 25 (public: alter_kernels.unlearn.AlterData, docs/scaling.md)


def batch_of(d: UnlearnData, fi, ri, dev) -> dict:
    """The mixed batch of forget rows fi then retain rows ri (the layout methods.* expect)."""
    exs = [d.forget[i] for i in fi] + [d.retain[i] for i in ri]
    ids, att, lab = collate(exs, d.pad_id)
    t = ids.shape[1]
    b = {"input_ids": ids, "attention_mask": att, "labels": lab,
         "is_forget": torch.tensor([True] * len(fi) + [False] * len(ri)),
         "domain": torch.tensor([d.forget_domain[i] for i in fi] + [0] * len(ri), dtype=torch.long)}
    if d.forget_cache is not None:
        fc, rc = d.forget_cache, d.retain_cache
        b["entropy"] = pad_float([fc[0][i] for i in fi] + [rc[0][i] for i in ri], t, math.inf)
        b["base_sq"] = pad_float([fc[1][i] for i in fi] + [rc[1][i] for i in ri], t, math.nan)
    if d.forget_top is not None:
        # token ids are exact in fp32 up to 2**24, far above any vocabulary
        b["base_top"] = pad_float([d.forget_top[i].float() for i in fi] + [d.retain_top[i].float() for i in ri],
                                  t, -1.0).long()
    if d.forget_generic is not None:
        k = d.forget_generic[0][0].shape[-1] if d.forget_generic else 1
        b["generic_ids"] = torch.zeros(len(exs), t, k, dtype=torch.long)
        b["generic_logp"] = torch.full((len(exs), t, k), -math.inf)       # retain rows: no target
        b["generic_stated"] = torch.zeros(len(exs), t, dtype=torch.bool)
        for j, i in enumerate(fi):
            a_ids, a_lp, stated = d.forget_generic[i]
            b["generic_ids"][j, :a_ids.shape[0]] = a_ids
            b["generic_logp"][j, :a_lp.shape[0]] = a_lp
            b["generic_stated"][j, :stated.shape[0]] = stated
    if d.forget_ref is not None:
        b["ref_logp"] = torch.tensor([d.forget_ref[i] for i in fi] + [0.0] * len(ri), dtype=torch.float32)
    return {k2: v.to(dev) for k2, v in b.items()}


def batched(n: int, bs: int):
    """Index lists [0, bs), [bs, 2 bs), ... covering range(n)."""
    for s in range(0, n, bs):
        yield list(range(s, min(n, s + bs)))


def map_batches(n: int, bs: int, fn, ctx=None, lockstep: bool = False, desc: str | None = None) -> list:
    """fn(idx) for each batch of indices, concatenated; with a DistContext the batches are split
    round-robin over the ranks (the same batches as one process: bit-identical results) and
    gathered, so every rank gets the whole list. desc: a progress line (single process)."""
    groups = list(batched(n, bs))
    if ctx is None:
        per = [fn(idx) for idx in progress_bar(groups, desc)]
    else:
        per = ctx.map_batches(len(groups), lambda j: fn(groups[j]), lockstep=lockstep)
    return [x for part in per for x in part]
