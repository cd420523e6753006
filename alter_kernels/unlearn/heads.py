"""Per-token loss terms of a training step, straight from the hidden states (issue 16).

Every method's loss is a reduction of a few per-token quantities of the model's next-token
distribution: -log p(y) (GA, GradDiff, NPO's sequence log-probs, retain NLL), ALTER's inverted
hinge loss, the Tsallis entropy of R_struct. ``step_terms`` gets them in one of two ways:

- **fused** (default where it can): the model runs up to its final norm (the HF forward with
  ``logits_to_keep`` = no position, the backbone's output caught by a forward hook, so DDP and
  every other wrapper still see their forward), then ``ops.lm_head_token_losses`` computes the
  terms from the hidden states and the LM head without ever holding the [N, V] logits;
- **materialised**: the usual forward, logits [B, T, V], then the public loss functions (ops/losses.py).

Both give the same numbers (tests/unlearn/test_fused_losses.py trains every method 20 steps both ways).
The fused path is skipped, with one log line per model, for heads it cannot fuse (logit
softcapping, logit_scale, a head that is not a Linear), a forward without ``logits_to_keep``, an
FSDP2-sharded head, and R_struct's grad-norm form (which needs a second backward through the
logits). ``fused_loss`` = "auto" (default) or "off" chooses.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import weakref

import torch
import torch.nn as nn

from ..common.text import IGNORE_INDEX
from ..ops.losses import inverted_hinge_loss, token_nll
from ..model.hf import backbone_of, head_problem
from ..ops import tsallis_entropy
from ..ops.lm_head_losses import lm_head_kl, lm_head_token_losses
from .options import FUSED_LOSS, UnlearnOptions

log = logging.getLogger("alter_kernels.unlearn")
FUSED_CHOICES = FUSED_LOSS   # options.py holds the choices
_decided: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class Terms:
    """Shifted per-token terms [B, T-1] fp32 (0 where the label is ignored): position t's
    distribution scored against labels[:, t + 1]. entropy: Tsallis S_q when asked, else None.
    hidden (fused) or logits (materialised): what produced them, [B, T-1, d] or [B, T-1, V]."""
    labels: torch.Tensor
    nll: torch.Tensor
    ihl: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX


def fused_problem(model: nn.Module) -> str | None:
    """Why the step's losses cannot come from the fused LM-head op (None: they can)."""
    why = head_problem(model)
    if why is not None:
        return why
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return f"its LM head is a {type(head).__name__}, not an nn.Linear"
    if _is_dtensor(head.weight) or _is_fsdp2(model):
        # FSDP2 swaps the root's parameters between sharded and unsharded around each forward and
        # reduces their gradients from hooks on the module's own backward: a head used outside
        # its module's forward would not take part in that
        return "the model is sharded with FSDP2 (fully_shard)"
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return f"{type(model).__name__}.forward takes no logits_to_keep (needed to skip the logits)"
    try:
        backbone_of(model)
    except TypeError as exc:
        return str(exc)
    return None


def _is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:                                # a torch built without distributed
        return False
    return isinstance(model, FSDPModule)


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:                                # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def use_fused(model: nn.Module, opts) -> bool:
    """The run's choice, made once per model (one log line when the fused path is skipped).
    opts: an UnlearnOptions or a mapping of its fields."""
    opts = UnlearnOptions.from_kwargs("use_fused", opts)
    if opts.fused_loss == "off":
        return False
    if opts.grad_norm_struct:
        why = "struct_mode='grad_norm' differentiates twice through the logits"
    else:
        hit = _decided.get(model)
        if hit is not None:
            return hit
        why = fused_problem(model)
    if why is None:
        _decided[model] = True
        return True
    if _decided.get(model) is not False:
        log.info("unlearn: losses from materialised logits, not the fused LM-head op: %s", why)
        _decided[model] = False
    return False


def final_hidden(model: nn.Module, fwd, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """The backbone's output (after the final norm) [B, T, d] from one call of ``fwd`` (the model
    or a wrapper of it) that asks the head for no position."""
    caught = {}

    def hook(module, args, output):
        caught["h"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = backbone_of(model).register_forward_hook(hook)
    try:
        fwd(input_ids=ids, attention_mask=att, use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=ids.device))
    finally:
        handle.remove()
    return caught["h"]


def head_terms(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, q: float | None = None) -> Terms:
    """Terms of already-shifted hidden states [B, T, d] and labels [B, T] through the LM head."""
    head = model.get_output_embeddings()
    b, t, d = hidden.shape
    if hidden.dtype != head.weight.dtype:              # e.g. a backbone run under autocast
        hidden = hidden.to(head.weight.dtype)
    out = lm_head_token_losses(hidden.reshape(-1, d), head.weight, labels.reshape(-1), bias=head.bias, q=q)
    ent = out.entropy.view(b, t) if out.entropy is not None else None
    return Terms(labels, out.nll.view(b, t), out.ihl.view(b, t), ent, hidden=hidden)


def logit_terms(logits: torch.Tensor, labels: torch.Tensor, q: float | None = None) -> Terms:
    """The same terms from materialised (already-shifted) logits, with the public losses (ops/losses.py)."""
    nll = token_nll(logits, labels, shift=False, reduction="none")
    ihl = inverted_hinge_loss(logits, labels, shift=False, reduction="none")
    ent = tsallis_entropy(logits, q=q) if q is not None else None
    return Terms(labels, nll.float(), ihl.float(), ent, logits=logits)


def step_terms(model: nn.Module, fwd, batch: dict, opts, q: float | None = None) -> Terms:
    """Forward ``fwd`` (the model or its DDP wrapper) on the batch; the per-token terms."""
    ids, att, lab = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if use_fused(model, opts):
        h = final_hidden(model, fwd, ids, att)
        return head_terms(model, h[:, :-1], lab[:, 1:], q=q)
    out = fwd(input_ids=ids, attention_mask=att, use_cache=False)
    return logit_terms(out.logits[:, :-1], lab[:, 1:], q=q)


def logits_at(model: nn.Module, terms: Terms, mask: torch.Tensor, ids: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(z [n, k], logsumexp [n]) of the step's next-token logits at the n positions of ``mask``
    [B, T-1], z at the token ids ``ids`` [n, k]; differentiable. Fused: from the hidden states, k
    rows of the LM head per position, and the logsumexp from the fused NLL (nll = lse - z_y), so
    no [n, V] logits either; materialised: from the logits."""
    if terms.logits is not None:
        lg = terms.logits[mask].float()
        return lg.gather(-1, ids), torch.logsumexp(lg, -1)
    head = model.get_output_embeddings()
    h = terms.hidden[mask].to(head.weight.dtype)                                     # [n, d]
    cols = torch.cat([ids, terms.labels[mask][:, None]], 1)                          # ids, then the label
    z = torch.einsum("nd,nkd->nk", h.float(), head.weight[cols].float())
    if head.bias is not None:
        z = z + head.bias[cols].float()
    return z[:, :-1], terms.nll[mask] + z[:, -1]


def retain_kl_tokens(model: nn.Module, ref_model: nn.Module, terms: Terms, ids: torch.Tensor, att: torch.Tensor,
                     rows: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_ref || p_model) [R, T-1] of the selected rows (0 where ignored).

    Fused whenever the step was (terms.hidden set): the reference model runs up to its final norm
    under no_grad and ``lm_head_kl`` takes the two hidden states through the two heads, the
    model's (trained in the full-parameter KL baseline, so it differs from the reference's after
    the first step) and the reference's (``weight_base`` / ``bias_base``, a constant), never
    holding the retain rows' logits. Materialised (the reference's logits and the step's) when
    the step was (``fused_loss="off"`` or a head that cannot be fused).
    """
    valid = terms.valid[rows]
    if terms.hidden is not None:
        head, ref_head = model.get_output_embeddings(), ref_model.get_output_embeddings()
        with torch.no_grad():
            h_ref = final_hidden(ref_model, ref_model, ids[rows], att[rows])[:, :-1].to(head.weight.dtype)
        return lm_head_kl(h_ref, terms.hidden[rows], head.weight, bias=head.bias, mask=valid,
                          weight_base=ref_head.weight.detach(),
                          bias_base=ref_head.bias.detach() if ref_head.bias is not None else None)
    with torch.no_grad():
        ref = ref_model(input_ids=ids[rows], attention_mask=att[rows], use_cache=False).logits[:, :-1]
    lp = torch.log_softmax(terms.logits[rows].float(), -1)
    lq = torch.log_softmax(ref.float(), -1)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    return torch.where(valid, kl, torch.zeros_like(kl))
