"""Small helpers the engine shares: the model's device, the tokenizer's pad id, progress lines."""
from __future__ import annotations

import torch


def device_of(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def pad_id_of(tokenizer) -> int:
    """The id used to pad batches: the tokenizer's pad token, else its EOS token, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def progress_bar(it, desc: str | None, unit: str = "batch"):
    """``it`` with a tqdm progress line named ``desc`` (None / empty: no line)."""
    if not desc:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, unit=unit, dynamic_ncols=True)
