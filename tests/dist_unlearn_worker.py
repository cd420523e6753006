"""Worker of tests/unlearn/test_unlearn_distributed.py: more of the engine under data parallelism, in one
launch. Run in process with mode "none" (the reference), or

    torchrun --standalone --nproc_per_node=2 tests/dist_unlearn_worker.py ddp|fsdp2 DATA OUT

1. sequential unlearning: a first request, then (adapter reloaded on a fresh model, one expert
   added) a second request that must leave the first request's experts and A bit-identical;
2. a full-parameter baseline (kl: a frozen reference copy per rank), saved with save_pretrained;
3. resume: 2 steps with a checkpoint, then resume=True up to 3 steps.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

import alter_kernels as ak

LR = dict(lr_A=1e-2, lr_B=1e-2, lr_router=1e-2)


def _load(data):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.join(data, "model"))
    return AutoModelForCausalLM.from_pretrained(os.path.join(data, "model")), tok


def run(mode: str, data: str, out: str) -> None:
    forget, retain = os.path.join(data, "forget.json"), os.path.join(data, "retain.json")
    forget2 = os.path.join(data, "forget2.json")
    kw = dict(batch_size=2, seed=0, distributed=mode, progress=False)

    # 1. sequential requests
    model, tok = _load(data)
    ak.unlearn(model, forget, retain, method="alter", tokenizer=tok, max_steps=2, out_dir=os.path.join(out, "s1"),
               threshold_quantile=0.5, **LR, **kw)
    model, _ = _load(data)
    cfg, _ = ak.read_adapter_config(os.path.join(out, "s1", "adapter"))
    ak.patch(model, cfg)
    ak.load_adapter(model, os.path.join(out, "s1", "adapter"))
    ak.add_forget_experts(model, 1)
    ak.unlearn(model, forget2, retain, method="alter", tokenizer=tok, max_steps=2, out_dir=os.path.join(out, "s2"),
               **LR, **kw)

    # 2. full-parameter baseline with a reference model per rank
    # FSDP2 takes its losses from materialised logits (unlearn/heads.py), the others from the hidden
    # states: each is compared with the single-process run of the same loss path ("kl_off": the
    # materialised KL's gradient at p = p_ref is rounding noise, which Adam's first step turns into
    # +-lr updates; the fused op's is exactly 0, so the two paths differ by design there)
    variants = [("kl", "off" if mode == "fsdp2" else "auto")] + ([("kl_off", "off")] if mode == "none" else [])
    for name, fused in variants:
        model, _ = _load(data)
        ak.unlearn(model, forget, retain, method="kl", tokenizer=tok, max_steps=2, out_dir=os.path.join(out, name),
                   lr=1e-3, fused_loss=fused, **kw)

    # 3. resume: 2 steps, then continue to 3 from the checkpoint (a fresh model each time)
    for steps, resume in ((2, False), (3, True)):
        model, _ = _load(data)
        ak.unlearn(model, forget, retain, method="alter", tokenizer=tok, max_steps=steps, resume=resume,
                   checkpoint_every=1, out_dir=os.path.join(out, "resume"), threshold_quantile=0.5, **LR, **kw)
    model, _ = _load(data)                        # the uninterrupted 3 steps
    ak.unlearn(model, forget, retain, method="alter", tokenizer=tok, max_steps=3, out_dir=os.path.join(out, "straight"),
               threshold_quantile=0.5, **LR, **kw)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3])
    if dist.is_initialized():
        if dist.get_rank() == 0:
            with open(os.path.join(sys.argv[3], "done.json"), "w") as f:
                json.dump({"world_size": dist.get_world_size()}, f)
        dist.destroy_process_group()
