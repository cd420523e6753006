"""The decode-shaped ALTER path of :func:`alter_kernels.generate` (installed for the decode steps).

Same math as the generic path (``route`` with labels=None, then ``asym_lora``), fewer ops,
because at 1..8 tokens per step the cost is the number of op calls, not FLOPs:

- routing: per decoder layer one small plan (no labels, no gradient masks, no RoutingPlan);
  the step's high/low mask and temperatures are computed once per step for all layers
  (:mod:`.routing`). The expert weights are expanded once per layer to the rank-replicated layout
  ``w_rep[n, e*r + j] = w[n, e]`` (a matmul with a 0/1 expander), tiled per group size;
- linears that read the same input (q/k/v, gate/up; o and down alone) form a group. The first
  member called with a new input computes the adapter output of the whole group: one matmul
  with the stacked, expert-replicated ``[A; A; ..]`` ((G*E*r) x d_in) gives the E copies of
  ``u = A x`` per member, one in-place multiply by ``w_rep`` scales them, one matmul with the
  block-diagonal, pre-scaled ``[B_0 | .. | B_N]^T`` blocks (plus the biases) gives every
  member's delta; each member then runs ``addmm(delta_k, x, W0^T)``: one op, like nn.Linear.
  Replicating A costs E*r rows of d_in per member and the block-diagonal B G-fold FLOPs on the
  small side: both are small next to the d_out x d_in base GEMMs.

It is installed through the model's public decode hook (``install_decode_hook``): the model
calls :meth:`DecodeAdapters.route_layer` from each decoder layer's pre-hook and runs
:meth:`DecodeAdapters.linear_forward`'s function in place of each AlterLinear's forward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.layer import AlterLinear
from ..model.router import LayerRouter
from ..model.plan import router_features
from ..model.state import adapted_linears, get_state, install_decode_hook, layer_routers
from .native import compiled_decode_ops
from .routing import entropy_gate, expert_weights, first_expert

SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class DecodeAdapters:
    """The decode path of one patched model, for the duration of :func:`alter_kernels.generate`."""

    NATIVE_MAX_TOKENS = 16

    def __init__(self, model: nn.Module, record: bool = False, native: bool | None = None):
        self.model = model
        self.state = get_state(model)
        self._native_route, self._native_group = compiled_decode_ops(native)
        cfg = self.state.config
        self.threshold, self.tau_high, self.tau_low = float(cfg.threshold), float(cfg.tau_high), float(cfg.tau_low)
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
        self._all_native = False
        self._handle = None
        self._first: dict = {}
        self._forwards: dict[int, object] = {}
        self._linears: list[AlterLinear] = []
        self.layers: dict[str, dict] = {
            path: {"router": r, "w": None, "native": False, "wg": None, "groups": [], "expanders": {},
                   "w_rep": {}, "device": r.weight.device}
            for path, r in layer_routers(model).items()}
        self._groups: list[tuple[dict, list[AlterLinear]]] = []
        self._group_linears(adapted_linears(model))

    def _group_linears(self, linears) -> None:
        """Groups of linears reading one input (same parent module: HF passes them one tensor)."""
        by_parent: dict[str, dict[str, AlterLinear]] = {}
        for path, alin in linears:
            if alin.router is None or alin.router.layer_name not in self.layers:
                raise RuntimeError(f"generate: AlterLinear {path} has no decoder-layer router")
            if alin.lora_B.shape[0] != self.num_experts or alin.lora_A.shape[0] != self.rank:
                raise RuntimeError(f"generate: AlterLinear {path} does not match the adapter config")
            parent, _, name = path.rpartition(".")
            by_parent.setdefault(parent, {})[name] = alin
            self._linears.append(alin)
        for named in by_parent.values():
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
        slot = self.layers[members[0].router.layer_name]
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
    def _prepare_group(self, group: dict, members: list[AlterLinear]) -> None:
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
            self._forwards[id(alin)] = self._make_linear(alin, group, k)

    def install(self) -> DecodeAdapters:
        for slot in self.layers.values():
            slot["wg"] = slot["router"].weight.detach().to(torch.float32)
        for group, members in self._groups:
            self._prepare_group(group, members)
        self._all_native = all(grp["native"] for grp, _ in self._groups) and self._native_route is not None
        self._handle = install_decode_hook(self.model, self)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._forwards.clear()
        for slot in self.layers.values():
            slot["w"] = None
            slot["w_rep"] = {}
            for group in slot["groups"]:
                group["cache"][:] = [None, None, None, 0]

    # ---------------------------------------------------------------- the DecodeHook protocol
    def linear_forward(self, alin: AlterLinear):
        return self._forwards[id(alin)]

    def route_layer(self, router: LayerRouter, hidden: torch.Tensor) -> None:
        """The layer's expert weights for this forward (from its pre-hook, adapters on)."""
        slot = self.layers[router.layer_name]
        if router.router_input == "token":
            h = hidden.reshape(-1, hidden.shape[-1])
        else:                                   # prefix-match router: features of the tokens <= t
            h = router_features(router, hidden)
        for group in slot["groups"]:
            c = group["cache"]
            c[0] = c[1] = c[2] = None
        native = self._all_native and h.shape[0] <= self.NATIVE_MAX_TOKENS and h.device.type == "cpu"
        if native:
            w = self._native_route(h, slot["wg"], self._ent_flat, self.threshold, self.tau_high, self.tau_low,
                                   self.top_k)
        else:
            if not self._derived:
                self._derive()
            if h.dtype != torch.float32:
                h = h.to(torch.float32)
            first = self._first.get(h.device)
            if first is None:
                first = self._first[h.device] = first_expert(self.num_experts, h.device)
            w = expert_weights(h, slot["wg"], self.step_high, self.step_tau, self.top_k, first)
        if self.adapted_rows is not None:
            w[self.adapted_rows:] = 0
        slot["w"] = w
        slot["native"] = native
        if not native:
            for gsize, ex in slot["expanders"].items():
                slot["w_rep"][gsize] = torch.mm(w, ex)
        if self.record:
            self.records[-1][router.layer_name] = w[:self.adapted_rows].detach().clone()

    # ---------------------------------------------------------------- per step
    def set_entropy(self, entropy: torch.Tensor) -> None:
        """Routing entropies of this forward's tokens ([B, T] fp32). Kept by reference (a view, no
        copy: the decode loop passes its static buffer); the Python path derives the high mask and
        temperatures from it lazily, once per forward, into static tensors."""
        e = entropy.reshape(-1)
        if e.dtype != torch.float32:
            e = e.to(torch.float32)
        self._ent_flat = e
        self._derived = False

    def _derive(self) -> None:
        e = self._ent_flat.view(-1, 1)
        if self.step_tau is not None and self.step_tau.shape == e.shape:     # in place: static addresses
            entropy_gate(e, self.threshold, self._tau_hi, self._tau_lo, out=(self._low, self.step_high, self.step_tau))
        else:
            self._tau_hi = torch.full_like(e, self.tau_high)
            self._tau_lo = torch.full_like(e, self.tau_low)
            self.step_high, self.step_tau = entropy_gate(e, self.threshold, self._tau_hi, self._tau_lo)
            self._low = torch.empty_like(self.step_high)
        self._derived = True

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
