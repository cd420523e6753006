"""Data-parallel unlearning: ``ak.unlearn(..., distributed="ddp"|"fsdp2")`` under ``torchrun`` or
``accelerate launch`` (both set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

How a step is split so that N processes compute what one process computes (docs/scaling.md):

- Every rank builds the same global batch (same seed, same order), then keeps the rows
  ``rank, rank + world, ...`` of it, padded to the global length. A rank left without a row
  (a global batch smaller than the world) gets one filler row that carries no loss.
- Routing inputs (entropies, labels) are sliced with the rows, so each rank routes its shard.
  The cached base-model entropies (and NPO reference log-probabilities) are computed once, the
  batches of the cache split round-robin over the ranks exactly as one process batches them,
  then gathered: every rank holds the whole, bit-identical cache.
- Every mean of the loss divides by the count of the GLOBAL batch (one all-reduce of a few
  counts per step), and the backward uses ``world * loss``: DDP and FSDP2 average gradients,
  so the update is the single-process update of the global batch.
- Every adapter parameter gets a gradient every step (zeros where the masks of spec 4 stop
  it), so that DDP's reducer and FSDP2's reduce-scatter see the same parameters on all ranks.
- Only rank 0 writes checkpoints, adapters, models and metrics (each atomically); FSDP2
  gathers the full tensors first (a collective every rank joins).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.distributed as dist

from . import _model_api as _patch

MODES = ("ddp", "fsdp2")


def resolve_mode(distributed) -> str | None:
    """None / "auto": "ddp" when launched with WORLD_SIZE > 1 (or a process group of more than one
    process exists), else single-process. "none" / False: single-process. "ddp", "fsdp2"."""
    if distributed is None or distributed == "auto":
        if dist.is_available() and dist.is_initialized():
            return "ddp" if dist.get_world_size() > 1 else None
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            world = 1
        return "ddp" if world > 1 else None
    if distributed is False or (isinstance(distributed, str) and distributed.lower() in ("none", "off", "no")):
        return None
    if distributed is True:
        return "ddp"
    mode = str(distributed).lower()
    if mode not in MODES:
        raise ValueError(f"unlearn: distributed must be None/'auto', 'none', 'ddp' or 'fsdp2', got {distributed!r}")
    return mode


def launcher_device() -> torch.device:
    """The device of this process: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


class DistContext:
    """The process group of a data-parallel run and the few collectives the engine needs."""

    def __init__(self, mode: str, device: torch.device):
        if not dist.is_available():
            raise RuntimeError("unlearn: torch.distributed is not available in this torch build")
        self.mode = mode
        self.created_group = False
        if not dist.is_initialized():
            missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise RuntimeError(f"unlearn: distributed={mode!r} needs a launcher (torchrun, accelerate launch) "
                                   f"or an initialised process group; environment variables {missing} are not set")
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.created_group = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = device
        # gloo reduces CPU tensors, nccl CUDA tensors
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        x = t.detach().to(self.comm_device).clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x.to(t.device)

    def barrier(self) -> None:
        dist.barrier()

    def map_batches(self, n_batches: int, fn, lockstep: bool = False) -> list:
        """[fn(0), ..., fn(n_batches - 1)] on every rank, each rank computing every world-th
        batch. lockstep: every rank calls fn the same number of times (a rank without a batch
        repeats batch 0 and drops the result), for forwards that are collectives (FSDP2)."""
        mine = {}
        for k in range(math.ceil(n_batches / self.world)):
            j = k * self.world + self.rank
            if j < n_batches:
                mine[j] = fn(j)
            elif lockstep and n_batches:
                fn(0)
        parts = [None] * self.world
        dist.all_gather_object(parts, mine)
        merged = {}
        for p in parts:
            merged.update(p)
        return [merged[j] for j in range(n_batches)]

    # ---------------------------------------------------------------- batches
    def shard(self, batch: dict) -> dict:
        """Rows rank, rank + world, ... of the global batch (all of its tensors are per row)."""
        n = batch["input_ids"].shape[0]
        rows = list(range(self.rank, n, self.world))
        if rows:
            idx = torch.tensor(rows, device=batch["input_ids"].device)
            return {k: v.index_select(0, idx) for k, v in batch.items()}
        # no row for this rank: one filler row without loss (no answer token, no routing label)
        out = {k: v[:1].clone() for k, v in batch.items()}
        out["labels"].fill_(-100)
        out["is_forget"].fill_(False)
        out["domain"].fill_(-1)
        if "ref_logp" in out:
            out["ref_logp"].zero_()
        return out

    # ---------------------------------------------------------------- wrapping
    def wrap(self, model):
        """DDP: returns the DistributedDataParallel wrapper (call it for the forward; ``model`` stays
        the inner module). FSDP2: ``fully_shard`` on every decoder layer and the root, in place;
        returns ``model``. Parameters become DTensors: build the optimizer after this."""
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            if not any(p.requires_grad for p in model.parameters()):
                raise RuntimeError("unlearn: DDP needs at least one trainable parameter")
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard
        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        return model

    @contextlib.contextmanager
    def full_params(self, model):
        """FSDP2: every rank unshards, so the module holds whole plain tensors inside the block
        (for saving); DDP: nothing to do."""
        if self.mode != "fsdp2":
            yield
            return
        from torch.distributed.fsdp import FSDPModule
        mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in mods:
            m.unshard()
        try:
            yield
        finally:
            for m in mods:
                m.reshard()

    def optimizer_state(self, model, optimizer) -> dict:
        """Checkpointable optimizer state: the plain state dict (DDP: the same on every rank), or
        under FSDP2 the full, FQN-keyed state (a collective)."""
        if self.mode != "fsdp2":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if self.mode != "fsdp2":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def full_value(self, t):
        """A DTensor (FSDP2 gradient norm, ...) as a plain tensor; others unchanged."""
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    def check_agreement(self, tensors: list[torch.Tensor], what: str) -> None:
        """DDP: every rank must hold the same trainable weights; raise if they diverged."""
        if self.mode != "ddp" or not tensors:
            return
        s = torch.stack([t.detach().double().sum() for t in tensors]).to(self.comm_device)
        parts = [torch.empty_like(s) for _ in range(self.world)]
        dist.all_gather(parts, s)
        for r, p in enumerate(parts):
            if not torch.equal(p, parts[0]):
                raise RuntimeError(f"unlearn: rank {r}'s {what} differ from rank 0's after training; the ranks "
                                   "did not see the same data or options")

    def zero_frozen_expert_grads(self, model, n_frozen: int) -> None:
        """FSDP2 form of the sequential-unlearning gradient hooks: after the reduce-scatter, zero
        the gradient of experts [0, n_frozen) in each rank's shard (lora_B is sharded on the
        expert dimension, the routers on the hidden one)."""
        if n_frozen <= 0:
            return
        state = _patch.get_state(model)
        for _, alin in state.replaced:
            _zero_leading(alin.lora_B, n_frozen, dim=0)
        for layer_path in state.routers:
            _zero_leading(_patch.layer_routers(model)[layer_path].weight, n_frozen, dim=1)


def _zero_leading(p: torch.nn.Parameter, n: int, dim: int) -> None:
    g = p.grad
    if g is None:
        return
    if not hasattr(g, "to_local"):
        g.narrow(dim, 0, min(n, g.shape[dim])).zero_()
        return
    local = g.to_local()
    shard_dims = [pl.dim for pl in g.placements if hasattr(pl, "dim")]
    if dim not in shard_dims:                       # not sharded along dim: plain slice of the local piece
        local.narrow(dim, 0, min(n, local.shape[dim])).zero_()
        return
    # sharded along dim (FSDP2: torch.chunk layout): global rows [start, start + local)
    size, world = g.shape[dim], g.device_mesh.size()
    chunk = math.ceil(size / world)
    start = g.device_mesh.get_local_rank() * chunk
    k = max(0, min(n - start, local.shape[dim]))
    if k:
        local.narrow(dim, 0, k).zero_()


def decoder_layers(model) -> list:
    """The decoder layers FSDP2 shards one by one: the ALTER-patched layers, else model.model.layers."""
    if _patch.is_patched(model):
        return [model.get_submodule(p) for p in _patch.get_state(model).routers]
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def anchor_adapter_grads(model) -> list:
    """Forward hooks that add 0 * (sum A + sum B) to every AlterLinear's output: the masked
    backward of spec 4 leaves A (no high-entropy token) or B without any gradient in some steps,
    and a data-parallel step needs every trainable parameter to get one (zeros) on every rank.
    Values and gradients are unchanged (the added term is 0); AdamW then also steps those
    parameters with a zero gradient, the same in one process and in N. Returns the handles."""
    handles = []

    def hook(mod, args, out):
        terms = [p.sum() for p in (mod.lora_A, mod.lora_B) if p.requires_grad]
        return out + sum(terms) * 0.0 if terms else out

    for _, alin in _patch.get_state(model).replaced:
        handles.append(alin.register_forward_hook(hook))
    return handles
