"""Worker for tests/unlearn/test_distributed.py: a few ALTER training steps of a tiny patched Llama,
single-process on the whole batch, or under torchrun (gloo) with DDP or FSDP2 on a batch shard.

    python tests/dist_worker.py single OUT.pt
    torchrun --nproc_per_node=2 tests/dist_worker.py ddp|fsdp2 OUT.pt
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak

STEPS, BATCH, SEQ = 3, 4, 8


def main(mode: str, out: str):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = ak.patch(LlamaForCausalLM(cfg), ak.AlterConfig(num_forget_experts=2, init_seed=1))
    with torch.no_grad():                    # non-zero experts, so every path carries gradient
        for p in ak.adapter_parameters(model)["B"]:
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 61, (BATCH, SEQ), generator=g)
    ent = torch.rand(BATCH, SEQ, generator=g) * 2.4          # high and low tokens
    labels = torch.tensor([0, 1, 2, 1])
    rows = slice(None)
    if mode != "single":
        # a bounded timeout: a stuck collective fails the run instead of hanging it
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        rank, world = dist.get_rank(), dist.get_world_size()
        per = BATCH // world
        rows = slice(rank * per, (rank + 1) * per)
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            wrapped = DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard
            for layer in model.model.layers:
                fully_shard(layer)
            wrapped = fully_shard(model)
    else:
        wrapped = model
    groups = ak.adapter_parameters(model)
    opt = torch.optim.AdamW([{"params": groups["A"], "lr": 1e-2}, {"params": groups["B"], "lr": 1e-2},
                             {"params": groups["router"], "lr": 1e-2}], weight_decay=0.0)
    # routing inputs are per shard: each rank routes its own rows
    with ak.routing_inputs(model, entropy=ent[rows], labels=labels[rows]):
        for _ in range(STEPS):
            loss = wrapped(x[rows], labels=x[rows]).loss + ak.router_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
    state = {}
    for name, p in ak.adapter_state_dict(model).items():
        t = p.detach()
        if hasattr(t, "full_tensor"):        # FSDP2 DTensor shard -> the whole tensor
            t = t.full_tensor()
        state[name] = t.clone()
    if mode == "single" or dist.get_rank() == 0:
        torch.save(state, out)
    if mode != "single":
        # release the wrapper (DDP's reducer) while the group is alive, then leave together
        del wrapped, opt
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # a worker once idled forever in interpreter teardown after finishing (gloo threads): the
    # result is written, so leave without running teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
