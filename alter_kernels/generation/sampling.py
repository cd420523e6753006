"""Choosing the next token: greedy or sampled (temperature, top-k, top-p), and the eos ids."""
from __future__ import annotations

import math

import torch


def sample_next_token(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token [B] from logits [B, V]: greedy (argmax) or sampling with temperature, top-k, top-p."""
    if not do_sample:
        return logits.argmax(dim=-1)
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if top_k is not None and 0 < top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_z, idx = z.sort(dim=-1, descending=True)
        cum = sorted_z.softmax(-1).cumsum(-1)
        drop = (cum - sorted_z.softmax(-1)) >= top_p          # keep the smallest prefix reaching top_p
        z = z.masked_fill(drop.scatter(-1, idx, drop), -math.inf)
    probs = z.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def eos_tensor(eos_token_id, device) -> torch.Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids:
        return None
    return torch.tensor(ids, dtype=torch.long, device=device)

