"""HF integration: HF ``model.generate(...)`` (and ``pipeline``) with a chosen inference rule for a
block, recording the routing entropies (:func:`gated_decoding`)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ..config import INFERENCE_ENTROPY
from ..model.state import get_state, is_patched
from .options import PREFILL_MODES


class GatedDecoding:
    """A block in which HF ``model.generate(...)`` uses a chosen inference rule, with a record.

    A patched model already routes every forward, HF ``generate`` included, by its inference rule
    (``config.inference_entropy``, see :mod:`alter_kernels.model.inference`); this context manager is
    for choosing another rule or prompt routing for a while, and for reading what routed:

    - ``entropy``: "base", "self" or "none" for the block (None: keep the model's);
    - ``prefill``: "base" (prompt tokens by base-model entropies) or "high" (every prompt token
      high entropy);
    - ``prompt_entropy`` [B, T]: the routing entropies of the last prompt (prefill) forward;
      ``step_entropies``: per forward from the prefill on, [B, 1], the entropy of the distribution that produced the token sampled from that forward's
      logits (it routes that token when it is fed back).

    While installed, explicit routing inputs are cleared (restored on exit), so that every
    forward routes by the rule.
    """

    def __init__(self, model: nn.Module, prefill: str = "base", entropy: str | None = None):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"gated_decoding: prefill must be one of {PREFILL_MODES}, got {prefill!r}")
        if entropy is not None and entropy not in INFERENCE_ENTROPY:
            raise ValueError(f"gated_decoding: entropy must be one of {INFERENCE_ENTROPY} or None, got {entropy!r}")
        self.model = model
        self.state = get_state(model)
        self.rule = self.state.inference
        if self.rule is None:
            raise ValueError("gated_decoding: this patched model has no LM head to take entropies from")
        self.prompt_entropy: torch.Tensor | None = None
        self.step_entropies: list[torch.Tensor] = []
        self._stream = None
        self._prev = (self.state.config.inference_entropy, self.rule.prefill_high, self.state.entropy,
                      self.state.labels)
        if entropy is not None:                         # a new config: the adapter's own is never edited
            self.state.config = dataclasses.replace(self.state.config, inference_entropy=entropy)
        self.rule.prefill_high = prefill == "high"
        self.state.entropy = self.state.labels = None
        self._handles = [model.register_forward_hook(self._post)]

    def _post(self, module, args, output):
        stream = self.rule.last_stream
        if stream is None:
            return None
        if stream is not self._stream:                 # a forward that started a sequence
            self._stream = stream
            self.prompt_entropy = self.rule.last_entropy
            self.step_entropies = []
        self.step_entropies.append(stream.next_entropy[:, -1:].clone())
        return None

    def remove(self):
        for h in self._handles:
            h.remove()
        if self._handles:
            mode, self.rule.prefill_high, self.state.entropy, self.state.labels = self._prev
            if self.state.config.inference_entropy != mode:
                self.state.config = dataclasses.replace(self.state.config, inference_entropy=mode)
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def gated_decoding(model: nn.Module, prefill: str = "base", entropy: str | None = None) -> GatedDecoding:
    """HF ``model.generate(...)`` with a chosen inference rule for a block (see :class:`GatedDecoding`).

        with ak.gated_decoding(model, entropy="self") as gd:
            out = model.generate(input_ids, attention_mask=mask, max_new_tokens=64, do_sample=True, top_p=0.9)

    Without arguments it changes nothing about routing (a patched model always routes by its
    rule) and only records the entropies. Or keep the returned handle and call ``.remove()``.
    """
    if not is_patched(model):
        raise ValueError("gated_decoding: the model is not patched with ALTER (alter_kernels.patch)")
    return GatedDecoding(model, prefill, entropy)
