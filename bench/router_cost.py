#!/usr/bin/env python
"""What each router form costs on SmolLM2-135M-Instruct (issue 23): the patched model's forward
and HF greedy decoding (the inference rule, inference_entropy="base") with the prefix-match router
and with the answer-key router, side by side against the base model, CPU fp32.

    python bench/router_cost.py [--threads 1] [--reps 5] [--out bench/results/router_cost]

Both routers run the same base pass (the inference rule's routing entropies); the answer-key
router adds the base model's greedy next token at every position (a blocked LM-head argmax,
alter_kernels/model/base_pass.py ``base_top``) and its key match. Round robin, medians; ratios are
medians of per-repetition paired ratios (bench/common.round_robin, after one warm-up). Adapters are random (B != 0),
16 keys per router, 2 forget experts: the routing decisions do not change the cost.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import alter_kernels as ak  # noqa: E402
from alter_kernels.model.state import layer_routers  # noqa: E402
from bench.common import machine, md_table, round_robin, write_results  # noqa: E402
from bench.real_model import load_model  # noqa: E402

KEYS = 16


def patched(base, router_input: str):
    import copy
    m = copy.deepcopy(base)
    ak.patch(m, ak.AlterConfig(router_input=router_input, router_keys=KEYS, init_seed=0))
    g = torch.Generator().manual_seed(0)
    emb = m.get_input_embeddings().weight.detach()
    with torch.no_grad():
        for _, p in ak.adapter_state_dict(m).items():
            if p.dim() == 3 or (p.dim() == 2 and p.shape[0] != KEYS + 1 and p.shape[0] != KEYS):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        ids = torch.randint(100, emb.shape[0], (KEYS,), generator=g)
        for r in layer_routers(m).values():
            if router_input == "answer_keys":
                r.keys.copy_(ids.float())
            else:
                v = emb[ids].float()
                r.keys.copy_((v / v.norm(dim=1, keepdim=True)).to(r.keys.dtype))
            r.weight.zero_()
            r.weight[:KEYS, 1] = 40.0
            r.weight[-1, 0] = 20.0
    return m.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--out", default=os.path.join("bench", "results", "router_cost"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, _ = load_model()
    models = {"base": base, "prefix_match": patched(base, "prefix_match"), "answer_keys": patched(base, "answer_keys")}
    ids = torch.randint(100, 40000, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=2)

    def fwd(m):
        return lambda: m(input_ids=ids, use_cache=False)

    def gen(m):
        return lambda: m.generate(ids, attention_mask=torch.ones_like(ids), **kw)

    rows = []
    with torch.inference_mode():
        for part, make, per in (("forward", fwd, args.prompt), ("generate", gen, args.new)):
            times = round_robin({name: make(m) for name, m in models.items()}, reps=args.reps)
            for name, ts in times.items():
                med = statistics.median(ts)
                ratio = statistics.median(t / b for t, b in zip(ts, times["base"]))
                rows.append({"part": part, "variant": name, "tokens": per, "median_s": med,
                             "x_base_time": ratio, "ms_per_token": 1000 * med / per})
    out = {"machine": machine(), "load_avg": os.getloadavg(), "prompt_tokens": args.prompt, "new_tokens": args.new, "keys": KEYS,
           "rows": rows}
    md = (f"# Router cost on SmolLM2-135M-Instruct (bench/router_cost.py)\n\n{out['machine']}, load averages "
          f"{out['load_avg']}\n\n"
          f"Prompt {args.prompt} tokens; greedy decoding of {args.new} tokens through HF generate (the inference "
          f"rule); medians of {args.reps} round-robin repetitions; x_base_time: median paired ratio to the base "
          "model.\n\n" + md_table(rows, ["part", "variant", "tokens", "median_s", "x_base_time", "ms_per_token"]))
    write_results(args.out, out, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
