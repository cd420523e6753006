"""Gated decoding: entropy-routed generation with an ALTER-patched model (ALTER_SPEC sections 2, 3).

Every token is routed by the entropy of the distribution that predicted it,
``e_t = S_q(softmax(z_{t-1}))`` with ``q = config.q_route``, from the source the model's
``config.inference_entropy`` names (the same rule as every other forward of the model, see
:mod:`alter_kernels.inference`):

- "base" (default): the frozen base model's distributions. Prompt tokens from a base pass over
  the prompt (``lm_head_entropy``: no [B, T, V] logits kept), +inf at the first real token and
  after left padding; generated tokens from a base stream decoded beside the adapted one;
- "self": prompt tokens as "base"; each generated token by S_q of the adapted model's *raw*
  logits that produced it (before temperature, top-k/top-p or any HF logits processor);
- "none": every token high entropy.

Two entry points:

- :func:`generate`: a fast decode loop (static KV cache, in-place step buffers, a decode-shaped
  adapter path, the base stream as extra batch rows of the same GEMMs, CUDA graphs on GPU).
  Works on unpatched models too (plain decoding).
- HF ``model.generate(...)`` (and ``pipeline``) route through the model's own hooks;
  :func:`gated_decoding` chooses another rule for a block and records the entropies.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _backend
from .config import INFERENCE_ENTROPY
from .hf import backbone_of, cache_kwarg, lm_head_of, position_ids_from_mask
from .inference import routing_from_next
from .ops.entropy import lm_head_entropy, tsallis_entropy
from .patch import AlterLinear, add_plan_hook, get_state, is_patched, router_features, token_entropy

__all__ = ["generate", "GenerationOutput", "gated_decoding", "GatedDecoding", "prompt_entropy",
           "sample_next_token"]

PREFILL_MODES = ("base", "high")


# --------------------------------------------------------------------------- helpers
def _q_route(model: nn.Module, q: float | None) -> float:
    if q is not None:
        return float(q)
    return get_state(model).config.q_route if is_patched(model) else 1.5


def prompt_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None, q: float | None = None) -> torch.Tensor:
    """Routing entropies [B, T] of a (left-padded) prompt from the base model (adapters off):
    :func:`alter_kernels.token_entropy` (positions counted over real tokens, +inf where token t
    has no real predecessor)."""
    return token_entropy(model, input_ids, attention_mask, q=_q_route(model, q), position_ids=position_ids)


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


def _eos_tensor(eos_token_id, device) -> torch.Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids:
        return None
    return torch.tensor(ids, dtype=torch.long, device=device)


# --------------------------------------------------------------------------- fast adapter path
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _FastAdapters:
    """Decode-shaped ALTER path installed on a patched model for the duration of :func:`generate`.

    Same math as the generic path (``route`` with labels=None, then ``asym_lora``), fewer ops,
    because at 1..8 tokens per step the cost is the number of op calls, not FLOPs:

    - routing: per decoder layer one small plan (no labels, no gradient masks, no RoutingPlan);
      the step's high/low mask and temperatures are computed once per step for all layers. The
      expert weights are expanded once per layer to the rank-replicated layout
      ``w_rep[n, e*r + j] = w[n, e]`` (a matmul with a 0/1 expander), tiled per group size;
    - linears that read the same input (q/k/v, gate/up; o and down alone) form a group. The first
      member called with a new input computes the adapter output of the whole group: one matmul
      with the stacked, expert-replicated ``[A; A; ..]`` ((G*E*r) x d_in) gives the E copies of
      ``u = A x`` per member, one in-place multiply by ``w_rep`` scales them, one matmul with the
      block-diagonal, pre-scaled ``[B_0 | .. | B_N]^T`` blocks (plus the biases) gives every
      member's delta; each member then runs ``addmm(delta_k, x, W0^T)``: one op, like nn.Linear.
      Replicating A costs E*r rows of d_in per member and the block-diagonal B G-fold FLOPs on the
      small side: both are small next to the d_out x d_in base GEMMs.
    """

    NATIVE_MAX_TOKENS = 16

    def __init__(self, model: nn.Module, record: bool = False, native: bool | None = None):
        self.state = get_state(model)
        self._native_route = _backend.native_op("decode_route") if native is not False else None
        self._native_group = _backend.native_op("decode_group_linear") if native is not False else None
        if native and (self._native_route is None or self._native_group is None):
            raise RuntimeError("generate: native=True but the extension's decode ops are missing "
                               f"({_backend.extension_error() or 'not built with csrc/cpu/asym_lora_decode.cpp'})")
        cfg = self.state.config
        self.threshold, self.tau_high, self.tau_low = cfg.threshold, cfg.tau_high, cfg.tau_low
        self.top_k = min(cfg.top_k, cfg.num_experts - 1)
        self.num_experts = cfg.num_experts
        self.rank = cfg.rank
        self.record = record
        self.records: list[dict[str, torch.Tensor]] = []
        self.adapted_rows: int | None = None   # two streams: rows from here on are base rows (no adapter)
        self.step_tau: torch.Tensor | None = None
        self.step_high: torch.Tensor | None = None
        self._ent_flat: torch.Tensor | None = None
        self._derived = False
        self._saved_hooks = []
        self._linears: list[AlterLinear] = []
        self.layers: dict[str, dict] = {}
        modules = dict(model.named_modules())
        e, r = self.num_experts, self.rank
        for handle, layer_path in zip(self.state.hooks, self.state.routers):
            layer = modules[layer_path]
            router = layer.get_submodule("alter_router")
            dev = router.weight.device
            self.layers[layer_path] = {"router": router, "layer": layer, "hook_id": handle.id, "w": None, "native": False,
                                       "wg": None, "groups": [], "expanders": {}, "w_rep": {}, "device": dev}
        by_parent: dict[str, dict[str, AlterLinear]] = {}
        for path, alin in self.state.replaced:
            if alin._router is None or alin._router.layer_name not in self.layers:
                raise RuntimeError(f"generate: AlterLinear {path} has no decoder-layer router")
            if alin.lora_B.shape[0] != e or alin.lora_A.shape[0] != r:
                raise RuntimeError(f"generate: AlterLinear {path} does not match the adapter config")
            parent, _, name = path.rpartition(".")
            by_parent.setdefault(parent, {})[name] = alin
            self._linears.append(alin)
        # groups of linears reading one input (same parent module, HF passes the same tensor)
        self._groups: list[tuple[dict, list[AlterLinear]]] = []
        for parent, named in by_parent.items():
            used = set()
            for names in SHARED_INPUT_GROUPS:
                members = [named[n] for n in names if n in named]
                if len(members) >= 2 and len({m.base_layer.in_features for m in members}) == 1:
                    self._groups.append(self._new_group(members))
                    used.update(id(m) for m in members)
            for alin in named.values():
                if id(alin) not in used:
                    self._groups.append(self._new_group([alin]))

    def _new_group(self, members):
        slot = self.layers[members[0]._router.layer_name]
        g = len(members)
        group = {"slot": slot, "g": g, "cache": [None, None, None, 0]}  # input, its 2D view, outputs, members left
        slot["groups"].append(group)
        if g not in slot["expanders"]:
            e, r = self.num_experts, self.rank
            ex = torch.zeros(e, g * e * r, device=slot["device"])
            for k in range(g):
                for ei in range(e):
                    ex[ei, k * e * r + ei * r:k * e * r + (ei + 1) * r] = 1.0
            slot["expanders"][g] = ex
        return group, members

    # ---------------------------------------------------------------- install / remove
    def install(self):
        for slot in self.layers.values():
            layer, hid = slot["layer"], slot["hook_id"]
            self._saved_hooks.append((layer, hid, layer._forward_pre_hooks[hid]))
            slot["wg"] = slot["router"].weight.detach().to(torch.float32)
            layer._forward_pre_hooks[hid] = self._make_hook(slot)
        for group, members in self._groups:
            a = members[0].lora_A
            acc = torch.float64 if a.dtype == torch.float64 else torch.float32
            group["acc"] = acc
            group["dtype"] = members[0].base_layer.weight.dtype
            group["members"] = members
            group["py_ready"] = False          # the pure-PyTorch tensors are built on first use
            # for the native decode op: [A_1; ..; A_G] (G*r, d_in) and pre-scaled B^T (E, r, d_out)
            group["native"] = (self._native_group is not None and a.device.type == "cpu"
                               and group["dtype"] == acc and a.dtype == acc
                               and all(m.base_layer.weight.dtype == acc for m in members))
            if group["native"]:
                group["a_cat"] = torch.cat([m.lora_A.detach() for m in members]).contiguous()
                group["b_t"] = [(m.lora_B.detach() * m.scale).permute(0, 2, 1).contiguous() for m in members]
                # plain tensors (detached views of the parameters): a Parameter argument sends the
                # torch.ops call through the __torch_function__ path, several times slower
                group["weights"] = [m.base_layer.weight.detach() for m in members]
                group["biases"] = [m.base_layer.bias.detach() if m.base_layer.bias is not None else None
                                   for m in members]
            for k, alin in enumerate(members):
                alin.forward = self._make_linear(alin, group, k)
        self._all_native = all(grp["native"] for grp, _ in self._groups) and self._native_route is not None
        return self

    def remove(self):
        for layer, hid, fn in self._saved_hooks:
            layer._forward_pre_hooks[hid] = fn
        self._saved_hooks.clear()
        for alin in self._linears:
            if "forward" in alin.__dict__:
                del alin.forward
        for slot in self.layers.values():
            slot["w"] = None
            slot["w_rep"] = {}
            for group in slot["groups"]:
                group["cache"][:] = [None, None, None, 0]

    # ---------------------------------------------------------------- per step
    def set_entropy(self, entropy: torch.Tensor):
        """Routing entropies of this forward's tokens ([B, T] fp32). Kept by reference (a view, no
        copy: the decode loop passes its static buffer); the Python path derives the high mask and
        temperatures from it lazily, once per forward, into static tensors."""
        e = entropy.reshape(-1)
        if e.dtype != torch.float32:
            e = e.to(torch.float32)
        self._ent_flat = e
        self._derived = False

    def _derive(self):
        e = self._ent_flat.view(-1, 1)
        if self.step_tau is not None and self.step_tau.shape == e.shape:
            torch.le(e, self.threshold, out=self._low)                  # in place: static addresses
            torch.logical_not(self._low, out=self.step_high)
            torch.where(self.step_high, self._tau_hi, self._tau_lo, out=self.step_tau)
        else:
            self._low = e <= self.threshold
            self.step_high = ~self._low                                  # NaN / +inf: high
            self._tau_hi = torch.full_like(e, self.tau_high)
            self._tau_lo = torch.full_like(e, self.tau_low)
            self.step_tau = torch.where(self.step_high, self._tau_hi, self._tau_lo)
        self._derived = True

    def _make_hook(self, slot):
        router = slot["router"]
        state = self.state
        e_count = self.num_experts
        k = self.top_k
        fast = self
        first = None
        caches = [grp["cache"] for grp in slot["groups"]]
        native_route = self._native_route
        wg = slot["wg"]
        threshold, tau_high, tau_low = float(self.threshold), float(self.tau_high), float(self.tau_low)

        def hook(module, args, kwargs):
            nonlocal first
            if not state.enabled:
                slot["w"] = None
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if router.router_input == "token":
                h = hidden.reshape(-1, hidden.shape[-1])
            else:                                   # prefix-match router: features of the tokens <= t
                if state.routers and state.routers[0] == router.layer_name:
                    state.route_h0 = hidden
                h = router_features(router, hidden)
            for c in caches:
                c[0] = c[1] = c[2] = None
            if fast._all_native and h.shape[0] <= fast.NATIVE_MAX_TOKENS and h.device.type == "cpu":
                w = native_route(h, wg, fast._ent_flat, threshold, tau_high, tau_low, k)
                if fast.adapted_rows is not None:
                    w[fast.adapted_rows:] = 0
                slot["w"] = w
                slot["native"] = True
                if fast.record:
                    fast.records[-1][router.layer_name] = w[:fast.adapted_rows].clone()
                return None
            slot["native"] = False
            if not fast._derived:
                fast._derive()
            if h.dtype != torch.float32:
                h = h.to(torch.float32)
            logits = torch.mm(h, slot["wg"])                                     # [N, E]
            g = torch.softmax(logits.div_(fast.step_tau), dim=-1)
            if first is None or first[0].device != g.device:
                col0 = torch.zeros(1, e_count, dtype=torch.bool, device=g.device)
                col0[0, 0] = True
                first = (col0, torch.ones((), device=g.device))
            if k == e_count - 1:                      # every forget expert joins: no top-k needed
                w_high = torch.where(first[0], first[1], g)
            else:
                w_high = torch.where(first[0], first[1], torch.zeros_like(g))
                if k > 0:
                    top = g[:, 1:].topk(k, dim=-1).indices + 1
                    w_high = w_high.scatter_(1, top, g.gather(1, top))
            w_low = torch.zeros_like(g).scatter_(1, g.argmax(dim=-1, keepdim=True), 1.0)
            w = torch.where(fast.step_high, w_high, w_low)
            if fast.adapted_rows is not None:
                w[fast.adapted_rows:] = 0
            slot["w"] = w
            for gsize, ex in slot["expanders"].items():
                slot["w_rep"][gsize] = torch.mm(w, ex)
            if fast.record:
                fast.records[-1][router.layer_name] = w[:fast.adapted_rows].detach().clone()
            return None
        return hook

    def _build_python(self, group) -> None:
        """Tensors of the pure-PyTorch group path (built when a forward first needs them)."""
        members, acc, e = group["members"], group["acc"], self.num_experts
        er = e * self.rank
        dev = members[0].lora_A.device
        # [A; A; ..] replicated per expert, stacked per member: (G*E*r, d_in), used transposed
        group["a_t"] = torch.cat([m.lora_A.detach().to(acc).repeat(e, 1) for m in members]).t()
        # block-diagonal pre-scaled [B_0 | .. | B_N]^T per member: (G*E*r, sum d_out)
        d_outs = [m.base_layer.out_features for m in members]
        bblk = torch.zeros(len(members) * er, sum(d_outs), dtype=acc, device=dev)
        col = 0
        for k, m in enumerate(members):
            bt = (m.lora_B.detach().to(acc) * m.scale).permute(0, 2, 1).reshape(er, d_outs[k])
            bblk[k * er:(k + 1) * er, col:col + d_outs[k]] = bt
            col += d_outs[k]
        group["b_blk"] = bblk
        group["d_outs"] = d_outs
        biases = [m.base_layer.bias for m in members]
        group["bias"] = None if all(b is None for b in biases) else torch.cat(
            [(b.detach() if b is not None else torch.zeros(d, device=dev)).to(acc) for b, d in zip(biases, d_outs)])
        group["py_ready"] = True

    def _make_linear(self, alin: AlterLinear, group, k: int):
        base = alin.base_layer
        weight, bias = base.weight, base.bias
        w_t = weight.t()
        d_out = base.out_features
        state = self.state
        slot = group["slot"]
        gsize = group["g"]
        native = self._native_group
        cache = group["cache"]
        fast = self

        def compute(x: torch.Tensor) -> None:
            """First member of the group to see ``x``: the outputs (native) or deltas of all members."""
            x2 = x.reshape(-1, x.shape[-1])
            cache[0], cache[1] = x, x2
            if slot["native"]:
                cache[2] = native(x2, group["weights"], group["biases"], group["a_cat"], group["b_t"], slot["w"])
                return
            if not group["py_ready"]:
                fast._build_python(group)
            acc = group["acc"]
            wu = torch.mm(x2 if x2.dtype == acc else x2.to(acc), group["a_t"])     # [N, G*E*r] u copies
            wu.mul_(slot["w_rep"][gsize])                                          # * expert weights
            delta = (torch.mm(wu, group["b_blk"]) if group["bias"] is None
                     else torch.addmm(group["bias"], wu, group["b_blk"]))           # [N, sum d_out]
            if delta.dtype != x2.dtype:
                delta = delta.to(x2.dtype)
            cache[2] = delta.split(group["d_outs"], dim=1) if gsize > 1 else (delta,)

        def forward(x: torch.Tensor, plan=None) -> torch.Tensor:
            if cache[0] is not x:
                if not state.enabled:
                    return F.linear(x, weight, bias)
                compute(x)
                cache[3] = gsize
            part = cache[2][k]
            cache[3] -= 1
            x2 = cache[1]
            if cache[3] == 0:                          # every member served: release the activations
                cache[0] = cache[1] = cache[2] = None
            if slot["native"]:
                return part.view(*x.shape[:-1], d_out)
            return torch.addmm(part, x2, w_t).view(*x.shape[:-1], d_out)
        return forward


# --------------------------------------------------------------------------- fast loop
@dataclasses.dataclass
class GenerationOutput:
    """What :func:`generate` returns with ``return_dict=True``.

    sequences         [B, T + n] prompt (as given, left padding kept) and the n generated tokens
    prompt_entropy    [B, T] routing entropies of the prompt tokens (None for unpatched models)
    entropy           [B, n] entropy S_q of the raw distribution that produced each generated token
                      (= the routing entropy of that token when it is fed back)
    high_fraction     share of high-entropy routed tokens among the decode steps' inputs (real rows)
    prefill_s         wall seconds of the prefill (prompt entropies + the prompt forward + first logits)
    decode_s          wall seconds of the decode loop (synchronised on CUDA)
    plans             with record_plans=True: per forward (prefill first, then one per decode
                      step) a dict layer name -> expert weights [B*T_step, E]
    cuda_graph        whether the decode steps ran as a replayed CUDA graph
    inference_entropy which entropies routed the generated tokens ("base", "self", "none")
    """

    sequences: torch.Tensor
    prompt_entropy: torch.Tensor | None
    entropy: torch.Tensor
    high_fraction: float
    prefill_s: float = 0.0
    decode_s: float = 0.0
    plans: list | None = None
    cuda_graph: bool = False
    inference_entropy: str | None = None


def _check_generate_args(model, input_ids, max_new_tokens, attention_mask, prefill, temperature, top_k, top_p):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (
            torch.long, torch.int32, torch.int64):
        raise TypeError("generate: input_ids must be an integer tensor [B, T], got "
                        f"{getattr(input_ids, 'shape', type(input_ids).__name__)} "
                        f"{getattr(input_ids, 'dtype', '')}")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"generate: input_ids must hold at least one prompt token per row, got shape "
                         f"{tuple(input_ids.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"generate: attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        m = attention_mask.bool()
        if bool((~m[:, -1]).any()):
            raise ValueError("generate: attention_mask has padding at the end of a row; pad prompts on the left")
        if bool((m[:, :-1] & ~m[:, 1:]).any()):
            raise ValueError("generate: attention_mask must be left padding only (0...0 1...1 per row)")
    if isinstance(prefill, str):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"generate: prefill must be one of {PREFILL_MODES} or a [B, T] entropy tensor, "
                             f"got {prefill!r}")
    elif isinstance(prefill, torch.Tensor):
        if tuple(prefill.shape) != tuple(input_ids.shape):
            raise ValueError(f"generate: a prefill entropy tensor must be [B, T] = {tuple(input_ids.shape)}, "
                             f"got {tuple(prefill.shape)}")
    else:
        raise TypeError(f"generate: prefill must be 'base', 'high' or a tensor, got {type(prefill).__name__}")
    if not (temperature > 0):
        raise ValueError(f"generate: temperature must be > 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"generate: top_k must be an int >= 0 or None, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32,
             attention_mask: torch.Tensor | None = None, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             prefill: str | torch.Tensor | None = None, entropy: str | None = None, fast: bool = True,
             native: bool | None = None, cuda_graph: bool | None = None,
             record_plans: bool = False, return_dict: bool = False):
    """Gated (entropy-routed) generation with a static KV cache. Returns [B, T + n] token ids.

    model: a Hugging Face causal LM (Llama family), patched with ALTER or not (unpatched: plain
        decoding with the same loop, for comparisons).
    input_ids [B, T], attention_mask [B, T] (left padding only; None: no padding).
    entropy: which entropies route the generated tokens: "base", "self" or "none" (default: the
        model's ``config.inference_entropy``, the rule every other forward of the model follows).
        "base": the base model's next-token distribution, from a base stream that runs beside the
        adapted one as extra batch rows through the same frozen GEMMs (weights read once per step,
        its own KV cache rows; the adapters only touch the adapted rows); its logits come out of
        the same LM-head GEMM and only their entropy is kept. "self": S_q of the adapted model's
        raw logits that produced the token (before temperature / top-k / top-p). "none": every
        token high entropy.
    prefill: how the prompt tokens are routed: "base" (base-model entropies of the prompt, from a
        base pass over the prompt with adapters off; the default unless entropy is "none"),
        "high" (every prompt token high entropy) or a [B, T] tensor of routing entropies.
    do_sample, temperature, top_k, top_p, generator: sampling (greedy when do_sample is False).
    eos_token_id: int or list; a finished row gets pad_token_id (default: the first eos id)
        afterwards; the loop stops when every row has finished.
    fast: use the decode-shaped ALTER path (see _FastAdapters); False: the generic AlterLinear
        path through the dispatched ``asym_lora`` and ``route`` ops.
    native: with fast=True on the CPU, use the extension's decode ops (``decode_route``,
        ``decode_group_linear``) for forwards of at most 16 tokens when the model and adapter are
        both fp32 (or fp64): None (default) when the extension has them, False never, True
        require them.
    cuda_graph: capture the decode step as a CUDA graph and replay it (default: on for CUDA
        tensors with fast=True). Falls back to eager (with a warning) if the capture fails.
    record_plans: keep every forward's expert weights per layer (tests, analysis).
    return_dict: return a :class:`GenerationOutput` instead of the sequences.
    """
    patched = is_patched(model)
    state = get_state(model) if patched else None
    mode = entropy if entropy is not None else (state.config.inference_entropy if patched else "none")
    if mode not in INFERENCE_ENTROPY:
        raise ValueError(f"generate: entropy must be one of {INFERENCE_ENTROPY} or None, got {entropy!r}")
    if prefill is None:
        prefill = "high" if mode == "none" else "base"
    _check_generate_args(model, input_ids, max_new_tokens, attention_mask, prefill, temperature, top_k, top_p)
    from transformers import StaticCache

    device = input_ids.device
    input_ids = input_ids.long()
    bsz, t_prompt = input_ids.shape
    two_stream = patched and mode == "base"      # base rows beside the adapted ones
    rows = 2 * bsz if two_stream else bsz
    q = _q_route(model, None)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.long()
    eos = _eos_tensor(eos_token_id, device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos is not None else 0
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and fast
    if cuda_graph and device.type != "cuda":
        raise ValueError("generate: cuda_graph=True needs CUDA tensors")

    max_len = t_prompt + max_new_tokens
    backbone = backbone_of(model)
    head = lm_head_of(model)
    was_training = model.training
    model.eval()
    fastpath = _FastAdapters(model, record=record_plans, native=native) if (patched and fast) else None
    if fastpath is not None and two_stream:
        fastpath.adapted_rows = bsz
    plan_hook = None
    if patched and not fast and two_stream:
        def zero_base_rows(plan, layer_name):          # generic path: base rows get no adapter
            if plan.num_tokens == rows:
                plan.expert_weights[bsz:] = 0
        plan_hook = add_plan_hook(model, zero_base_rows)
    prev_inputs = (state.entropy, state.labels) if patched else None
    plans_out: list | None = [] if record_plans else None
    used_graph = False
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            # ---------------------------------------------------------------- prefill
            pos = position_ids_from_mask(attention_mask)
            cache = StaticCache(config=model.config, max_cache_len=max_len)
            # 4D boolean mask over the static cache slots: a key is visible if it is a real token
            # already written (slots > current step stay False); updated in place per step.
            slot_mask = torch.zeros(rows, 1, 1, max_len, dtype=torch.bool, device=device)
            slot_mask[:, 0, 0, :t_prompt] = attention_mask.bool().repeat(rows // bsz, 1)
            causal = torch.ones(t_prompt, t_prompt, dtype=torch.bool, device=device).tril()
            prefill_mask = torch.zeros(bsz, 1, t_prompt, max_len, dtype=torch.bool, device=device)
            prefill_mask[:, :, :, :t_prompt] = causal[None, None] & attention_mask.bool()[:, None, None, :]
            base_cache, last_base = None, None
            if patched:
                if isinstance(prefill, torch.Tensor) and not two_stream:
                    p_ent = prefill.to(device=device, dtype=torch.float32)
                elif prefill == "base" or two_stream:
                    # the base pass over the prompt: its entropies route the prompt, and with two
                    # streams its KV cache becomes the base rows of the decode cache
                    base_cache = StaticCache(config=model.config, max_cache_len=max_len) if two_stream else None
                    nxt_ent = _base_pass(model, backbone, head, input_ids, prefill_mask if two_stream else
                                         attention_mask, pos, base_cache, q)
                    last_base = nxt_ent[:, -1]
                    p_ent = routing_from_next(nxt_ent, attention_mask)
                    if isinstance(prefill, torch.Tensor):
                        p_ent = prefill.to(device=device, dtype=torch.float32)
                    elif prefill == "high":
                        p_ent = torch.full((bsz, t_prompt), math.inf, device=device)
                else:
                    p_ent = torch.full((bsz, t_prompt), math.inf, device=device)
            else:
                p_ent = None
            # the prefill (many tokens: FLOP-bound) goes through the generic path, i.e. the dispatched
            # route / asym_lora kernels; the decode-shaped path is installed for the steps after it
            if patched:
                state.entropy, state.labels = p_ent, None
            hidden = backbone(input_ids=input_ids, attention_mask=prefill_mask, position_ids=pos, cache=cache,
                              use_cache=True).last_hidden_state[:, -1]
            if patched:
                state.entropy = None
            logits = head(hidden).float()                                    # [B, V]
            if record_plans:
                plans_out.append({k: v.expert_weights.clone() for k, v in state.plans.items()})
            if two_stream:
                _stack_static_caches(cache, base_cache)
                base_cache = None
            if fastpath is not None:
                fastpath.install()

            def next_entropy(step_logits, base_logits):
                """S_q of the distribution that produced the token sampled from ``step_logits``."""
                if not patched or mode == "none":
                    return torch.full((bsz,), math.inf, device=device)
                return tsallis_entropy(base_logits if mode == "base" else step_logits, q)

            sync()
            t1 = time.perf_counter()
            # ---------------------------------------------------------------- decode
            out_tokens = torch.empty(bsz, max_new_tokens, dtype=torch.long, device=device)
            out_ent = torch.empty(bsz, max_new_tokens, dtype=torch.float32, device=device)
            tok_buf = torch.empty(rows, 1, dtype=torch.long, device=device)
            pos_buf = (pos[:, -1:] + 1).repeat(rows // bsz, 1)
            ent_buf = torch.empty(rows, 1, dtype=torch.float32, device=device)
            if patched:
                state.entropy = ent_buf        # explicit: the model's own inference rule stays out
            finished = torch.zeros(bsz, dtype=torch.bool, device=device)
            high_count, real_count = 0, 0
            n_done = 0
            graph = None
            graph_logits = None

            # CPU, 2-4 rows: W h^T reads the LM head once (ATen's h W^T packs W for >= 2 rows: measured
            # 2.3x slower at V = 16384); elsewhere the head's own forward
            few_rows = device.type == "cpu" and 2 <= rows <= 4 and getattr(head, "bias", None) is None

            def step_eager():
                if fastpath is not None:
                    fastpath.set_entropy(ent_buf)
                hid = backbone(input_ids=tok_buf, attention_mask=slot_mask, position_ids=pos_buf, cache=cache,
                               use_cache=True).last_hidden_state[:, -1]
                if few_rows:
                    return torch.mm(head.weight, hid.t()).t()
                return head(hid)                    # [rows, V]: one LM-head GEMM for both streams

            # the entropy of the distribution that produces a token routes it when it is fed back
            ent = last_base if (patched and mode == "base") else next_entropy(logits, None)
            for step in range(max_new_tokens):
                nxt = sample_next_token(logits, do_sample, temperature, top_k, top_p, generator)
                if eos is not None:
                    nxt = nxt.masked_fill(finished, pad_token_id)
                    finished = finished | torch.isin(nxt, eos)
                out_tokens[:, step] = nxt
                out_ent[:, step] = ent
                n_done = step + 1
                if step == max_new_tokens - 1 or (eos is not None and bool(finished.all())):
                    break
                tok_buf.copy_(nxt[:, None].repeat(rows // bsz, 1))
                ent_buf.copy_(ent[:, None].repeat(rows // bsz, 1))
                slot_mask[:, 0, 0, t_prompt + step] = True
                if record_plans:
                    if fastpath is not None:
                        fastpath.records.append({})
                if graph is not None:
                    graph.replay()
                    out_all = graph_logits
                elif cuda_graph and step >= 1 and not record_plans:
                    graph, graph_logits = _capture(step_eager)
                    if graph is None:
                        cuda_graph = False
                        out_all = step_eager()
                    else:
                        used_graph = True
                        graph.replay()
                        out_all = graph_logits
                else:
                    out_all = step_eager()
                logits = out_all[:bsz].float()
                ent = next_entropy(logits, out_all[bsz:] if two_stream else None)
                pos_buf += 1
                if record_plans:
                    plans_out.append(fastpath.records[-1] if fastpath is not None else
                                     {k: v.expert_weights[:bsz].clone() for k, v in state.plans.items()})
            sequences = torch.cat([input_ids, out_tokens[:, :n_done]], dim=1)
            ent_done = out_ent[:, :n_done].clone()
            if patched and n_done > 1:
                # share of high-entropy inputs among the decode steps' live rows (computed once, here)
                fed = ent_done[:, :n_done - 1]
                live = torch.ones_like(fed, dtype=torch.bool)
                if eos is not None:
                    hit = torch.isin(out_tokens[:, :n_done - 1], eos).long().cumsum(1)
                    live = torch.cat([torch.ones_like(live[:, :1]), hit[:, :-1] == 0], 1)
                high_count = (~(fed <= state.config.threshold) & live).sum()
                real_count = int(live.sum())
            sync()
            t2 = time.perf_counter()
    finally:
        if fastpath is not None:
            fastpath.remove()
        if plan_hook is not None:
            plan_hook.remove()
        if patched:
            state.entropy, state.labels = prev_inputs
        if was_training:
            model.train()
    if not return_dict:
        return sequences
    return GenerationOutput(sequences=sequences, prompt_entropy=p_ent, entropy=ent_done,
                            high_fraction=(float(high_count) / real_count) if real_count else float("nan"),
                            prefill_s=t1 - t0, decode_s=t2 - t1, plans=plans_out, cuda_graph=used_graph,
                            inference_entropy=mode if patched else None)


def _base_pass(model, backbone, head, input_ids, mask, pos, cache, q: float) -> torch.Tensor:
    """Base-model (adapters off) S_q [B, T] at every prompt position; fills ``cache`` if given."""
    state = get_state(model)
    kw = {cache_kwarg(backbone): cache} if cache is not None else {}
    prev, state.enabled = state.enabled, False
    try:
        hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=cache is not None,
                          **kw).last_hidden_state
    finally:
        state.enabled = prev
    return lm_head_entropy(hidden, head.weight, q=q, bias=getattr(head, "bias", None)).float()


def _stack_static_caches(cache, other) -> None:
    """Append ``other``'s batch rows to ``cache`` (two prefilled StaticCaches of one length): the
    decode steps then run both streams as one batch."""
    for la, lb in zip(cache.layers, other.layers):
        if not (hasattr(la, "keys") and hasattr(lb, "keys")) or int(la.get_seq_length()) != int(lb.get_seq_length()):
            raise RuntimeError("generate: cannot stack the base and adapted KV caches (unexpected cache layout)")
        la.keys = torch.cat([la.keys, lb.keys])
        la.values = torch.cat([la.values, lb.values])
        if hasattr(la, "batch_size"):
            la.batch_size = la.keys.shape[0]


def _capture(step_fn):
    """Capture one decode step as a CUDA graph. Returns (graph, static logits) or (None, None).

    The step before the capture ran eagerly (warm-up: kernels chosen, workspaces allocated). The
    capture itself executes nothing, so the static cache and its position counter are untouched;
    every replay advances them exactly like an eager step.
    """
    try:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step_fn()
        return graph, logits
    except Exception as exc:  # anything that syncs or allocates outside the pool inside the step
        warnings.warn(f"alter_kernels.generate: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                      "decoding eagerly", RuntimeWarning, stacklevel=3)
        return None, None


# --------------------------------------------------------------------------- HF integration
class GatedDecoding:
    """A block in which HF ``model.generate(...)`` uses a chosen inference rule, with a record.

    A patched model already routes every forward, HF ``generate`` included, by its inference rule
    (``config.inference_entropy``, see :mod:`alter_kernels.inference`); this context manager is
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
        if entropy is not None:
            self.state.config.inference_entropy = entropy
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
            (self.state.config.inference_entropy, self.rule.prefill_high, self.state.entropy,
             self.state.labels) = self._prev
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
