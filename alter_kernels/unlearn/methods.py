"""Per-method step losses (ALTER and the spec-7 baselines) on one mixed batch.

A batch holds forget rows then retain rows, right-padded: ``input_ids``, ``attention_mask``,
``labels`` (-100 on prompt and padding), ``is_forget`` [B] bool and ``domain`` [B] long (the
expert of each row: forget domain id >= 1, retain 0), plus the cached per-token base-model
entropies for ALTER. Every function returns (loss, logs) where logs are python floats.
"""
from __future__ import annotations

import contextlib

import torch

from .. import _backend
import importlib

_patch = importlib.import_module("alter_kernels.patch")  # the module (ak.patch is the function)
from ..reference.losses import IGNORE_INDEX, sequence_logprob
from . import objectives as obj

ADAPTER_METHODS = ("alter", "asymlora", "lora")
FULL_METHODS = ("ga", "graddiff", "kl", "npo", "npo_retain")
METHODS = ADAPTER_METHODS + FULL_METHODS
NEEDS_RETAIN = ("alter", "asymlora", "lora", "graddiff", "kl", "npo_retain")

DESCRIPTIONS = {
    "alter": "ALTER: entropy-routed asymmetric LoRA; IHL on low-entropy forget tokens per sub-domain, "
             "retain NLL, R_struct, router CE",
    "asymlora": "AsymLoRA: ALTER without entropy (every token on the low path), IHL on every forget token",
    "lora": "LoRA (one A, one B) trained with the GradDiff loss",
    "ga": "gradient ascent on the forget answers (full parameters)",
    "graddiff": "gradient difference: ascent on forget + NLL on retain (full parameters)",
    "kl": "ascent on forget + KL(base || model) on retain answers (full parameters)",
    "npo": "negative preference optimisation on forget, beta = npo_beta (full parameters)",
    "npo_retain": "NPO + NLL on retain (full parameters)",
}


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def alter_loss(model, batch: dict, hp: dict, mode: str = "alter"):
    """ALTER (spec 5) or AsymLoRA (mode="asymlora": every token low, no entropy)."""
    cfg = _patch.get_state(model).config
    ids, att, lab = batch["input_ids"], batch["attention_mask"], batch["labels"]
    is_f, dom = batch["is_forget"], batch["domain"]
    if mode == "asymlora":
        ent = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)   # every token low
    else:
        ent = batch["entropy"]
    route_labels = torch.where(att.bool(), dom[:, None].expand_as(ids), torch.full_like(ids, -1))
    grad_norm = mode == "alter" and hp["struct_mode"] == "grad_norm" and hp["lam"] != 0
    # the double backward of the grad-norm form needs a differentiable-twice path: the reference
    force = (lambda: _backend.use_backend("reference")) if grad_norm else contextlib.nullcontext
    with _patch.routing_inputs(model, entropy=ent, labels=route_labels), force():
        out = model(input_ids=ids, attention_mask=att, use_cache=False)
        rl = _patch.router_loss(model)
    rl = rl if rl is not None else out.logits.sum() * 0.0
    sl, sy, se = obj.shift(out.logits, lab, ent)
    valid = sy != IGNORE_INDEX
    low = se <= cfg.threshold                          # NaN / +inf count as high (as the router does)
    ihl, counts = obj.domain_ihl(sl, sy, low & is_f[:, None], dom)
    nll = obj.masked_nll(sl, sy, ~is_f)
    high = (~low) & valid & torch.isfinite(se)
    rs = sl.sum() * 0.0
    if mode == "alter" and hp["lam"] != 0:
        if hp["struct_mode"] == "drift":
            sb = batch["base_sq"][:, 1:]
            rs = obj.struct_drift(sl, sb, high, q=hp["struct_q"])
        else:
            with force():
                mean_s = obj.struct_entropy_mean(sl, high, q=hp["struct_q"])
                rs = obj.struct_grad_norm(mean_s, _patch.adapter_parameters(model)["A"])
    loss = hp["beta"] * ihl + hp["gamma"] * nll + hp["lam"] * rs + hp["rho"] * rl
    n_valid = int(valid.sum())
    logs = {"ihl": _f(ihl), "retain_nll": _f(nll), "struct": _f(rs), "router_ce": _f(rl),
            "high_entropy_share": (int(high.sum()) / n_valid) if n_valid else float("nan"),
            "forget_low_tokens": int(sum(counts.values()))}
    return loss, logs


def lora_loss(model, batch: dict, hp: dict):
    """Plain LoRA (1 expert, no entropy, no labels): GradDiff loss."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return _graddiff_terms(out.logits, batch, hp)


def _graddiff_terms(logits, batch, hp, retain_term: bool = True):
    sl, sy = obj.shift(logits, batch["labels"])
    is_f = batch["is_forget"]
    f_nll = obj.masked_nll(sl, sy, is_f)
    r_nll = obj.masked_nll(sl, sy, ~is_f) if retain_term else sl.sum() * 0.0
    loss = -hp["beta"] * f_nll + hp["gamma"] * r_nll
    return loss, {"forget_nll": _f(f_nll), "retain_nll": _f(r_nll)}


def full_loss(model, batch: dict, hp: dict, method: str, ref_model=None):
    """The full-parameter baselines: ga, graddiff, kl, npo, npo_retain."""
    ids, att, lab, is_f = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["is_forget"]
    out = model(input_ids=ids, attention_mask=att, use_cache=False)
    if method in ("ga", "graddiff"):
        return _graddiff_terms(out.logits, batch, hp, retain_term=method == "graddiff")
    sl, sy = obj.shift(out.logits, lab)
    if method == "kl":
        f_nll = obj.masked_nll(sl, sy, is_f)
        r = ~is_f
        if bool(r.any()):
            with torch.no_grad():
                ref = ref_model(input_ids=ids[r], attention_mask=att[r], use_cache=False).logits[:, :-1]
            kl = obj.retain_kl(sl[r], ref, sy[r])
        else:
            kl = sl.sum() * 0.0
        return -hp["beta"] * f_nll + hp["gamma"] * kl, {"forget_nll": _f(f_nll), "retain_kl": _f(kl)}
    # npo / npo_retain: sequence log-probabilities against the cached reference ones
    logp = sequence_logprob(sl[is_f], sy[is_f], shift=False)
    npo = obj.npo_forget(logp, batch["ref_logp"][is_f].to(logp.dtype), beta=hp["npo_beta"])
    loss = hp["beta"] * npo
    logs = {"npo": _f(npo), "forget_logp": _f(logp.mean())}
    if method == "npo_retain":
        r_nll = obj.masked_nll(sl, sy, ~is_f)
        loss = loss + hp["gamma"] * r_nll
        logs["retain_nll"] = _f(r_nll)
    return loss, logs
