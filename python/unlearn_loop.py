"""Embedding ak.unlearn in a plain PyTorch program (CPU, a few seconds, nothing downloaded).

A tiny random Llama first *learns* some invented author facts (an ordinary training loop), then
receives two forget requests in sequence:

1. ``ak.unlearn(..., method="alter")`` forgets the first group of authors; the model is patched
   with ALTER adapters and returned patched.
2. ``ak.add_forget_experts(model, 1)`` adds an expert for the second request; a second
   ``ak.unlearn`` call trains only that expert (and its router column); the first request's
   experts stay bit-identical.

After each step the script scores answer NLL on the forget and retain sets with the adapter's
own routing (entropies from the base model with ``ak.token_entropy``, the router decides).

    python python/unlearn_loop.py [--steps-per-request N]
"""
from __future__ import annotations

import argparse
import math

import torch

import alter_kernels as ak
from alter_kernels.unlearn.data import collate, prepare
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer


@torch.no_grad()
def answer_nll(model, tok, rows) -> float:
    """Mean NLL of the answer tokens (the question masked), with ALTER routing if patched."""
    _, ex = prepare(rows, tok, "eval")
    ids, att, lab = collate(ex, tok.pad_token_id)
    if ak.is_patched(model):
        ent = ak.token_entropy(model, ids, att)             # base-model routing entropies (adapters off)
        with ak.routing_inputs(model, entropy=ent):         # no labels: the router decides
            logits = model(input_ids=ids, attention_mask=att).logits
    else:
        logits = model(input_ids=ids, attention_mask=att).logits
    return float(ak.token_nll(logits, lab))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-per-request", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)

    request1 = toy_rows(4, seed=1, domain="first-authors")
    request2 = toy_rows(4, seed=2, domain="second-authors", offset=4)
    retain = toy_rows(4, seed=3, offset=8)
    tok = toy_tokenizer(request1 + request2 + retain)
    model = toy_model(len(tok), hidden_size=48)

    # 1. an ordinary PyTorch loop: the model memorises everything
    _, ex = prepare(request1 + request2 + retain, tok, "train")
    ids, att, lab = collate(ex, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = ak.token_nll(model(input_ids=ids, attention_mask=att).logits, lab)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()

    def report(stage):
        print(f"{stage:<28} NLL forget-1 {answer_nll(model, tok, request1):6.3f}   "
              f"forget-2 {answer_nll(model, tok, request2):6.3f}   retain {answer_nll(model, tok, retain):6.3f}")

    report("after training")

    # 2. first forget request: ALTER (entropy threshold at the median of the base entropies)
    steps = args.steps_per_request
    res = ak.unlearn(model, request1, retain, method="alter", tokenizer=tok, max_steps=steps, batch_size=2,
                     lr_B=1e-2, lr_A=1e-3, threshold_quantile=0.5, progress=False)
    print(f"request 1: {res.steps} steps in {res.seconds:.1f}s, domains {res.domain_map}, "
          f"high-entropy share {res.high_entropy_share:.2f}, last loss {res.history[-1]['loss']:.3f}")
    report("after forget request 1")
    snapshot = {k: v.detach().clone() for k, v in ak.adapter_state_dict(model).items()}

    # 3. second forget request: a new expert, trained alone
    new = ak.add_forget_experts(model, 1)
    res2 = ak.unlearn(model, request2, retain, method="alter", tokenizer=tok, max_steps=steps, batch_size=2,
                      lr_B=1e-2, lr_A=1e-3, progress=False)
    print(f"request 2: new expert(s) {new}, domains {res2.domain_map}")
    report("after forget request 2")
    same = all(torch.equal(earlier_part(ak.adapter_state_dict(model)[k], k, v), v) for k, v in snapshot.items())
    print(f"request-1 experts, A and router columns bit-identical after request 2: {same}")
    assert same and math.isfinite(res2.history[-1]["loss"])


def earlier_part(now: torch.Tensor, name: str, before: torch.Tensor) -> torch.Tensor:
    """The part of an adapter tensor that existed before the second request. Experts: the first
    rows of lora_B. The prefix-match router (the engine's default) appends the new request's keys
    before W_g's bias row: the old key rows plus the bias row, in the old expert columns."""
    if "lora_B" in name:
        return now[:before.shape[0]]
    if name.endswith("router.keys"):
        return now[:before.shape[0]]
    if "router" in name:
        if now.shape[0] == before.shape[0]:                  # per-token router: W_g [d, E]
            return now[:, :before.shape[1]]
        n_old = before.shape[0] - 1
        return torch.cat([now[:n_old], now[-1:]])[:, :before.shape[1]]
    return now


if __name__ == "__main__":
    main()
