"""Spec 4 in one real training step of a patched tiny Llama (the trainer's own ALTER loss):
only the parameters that may learn from a token get gradient from it."""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels.unlearn import methods as M
from alter_kernels.unlearn.data import collate, prepare
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
from alter_kernels.unlearn.options import DEFAULTS


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    rows_f, rows_r = toy_rows(1, seed=1), toy_rows(1, seed=2, offset=5)
    tok = toy_tokenizer(rows_f + rows_r)
    _, f_ex = prepare(rows_f, tok, "forget")
    _, r_ex = prepare(rows_r, tok, "retain")
    ids, att, lab = collate(f_ex + r_ex, tok.pad_token_id)
    return tok, ids, att, lab


def fresh_model(tok):
    model = toy_model(len(tok), seed=3)
    ak.patch(model, ak.AlterConfig(rank=4, num_forget_experts=2, init_seed=0, threshold=1.2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # mid-training state: non-zero B (else dA = 0 trivially) and router
        for p in ak.adapter_parameters(model)["B"] + ak.adapter_parameters(model)["router"]:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def step_grads(tok, batch, ent, **hp):
    model = fresh_model(tok)
    ids, att, lab = batch
    b = {"input_ids": ids, "attention_mask": att, "labels": lab, "is_forget": torch.tensor([True, False]),
         "domain": torch.tensor([1, 0]), "entropy": ent,
         "base_sq": torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))}
    loss, logs = M.alter_loss(model, b, {**DEFAULTS, **hp})
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in model.named_parameters():
        if "lora_" not in n and "alter_router" not in n:
            assert p.grad is None, f"base parameter {n} got a gradient"
    g = ak.adapter_parameters(model)
    A = sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in g["A"])
    B = [sum(float(p.grad[e].abs().sum()) if p.grad is not None else 0.0 for p in g["B"]) for e in range(3)]
    R = sum(float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in g["router"])
    return A, B, R, logs


def ent_rows(att, forget_high, retain_high):
    """Routing entropies per row: every token high (+2.0 > theta) or low (0.5)."""
    e = torch.empty(att.shape)
    e[0] = 2.0 if forget_high else 0.5
    e[1] = 2.0 if retain_high else 0.5
    e[:, 0] = math.inf
    return torch.where(att.bool(), e, torch.full_like(e, math.inf))


def test_mixed_step_masks(setup):
    tok, ids, att, lab = setup
    ent = torch.where(torch.arange(ids.shape[1]) % 2 == 0, 2.0, 0.5).expand(ids.shape).clone()
    ent[:, 0] = math.inf
    A, B, R, logs = step_grads(tok, (ids, att, lab), ent)
    assert A > 0 and B[0] > 0 and B[1] > 0 and R > 0
    assert B[2] == 0.0                                  # no domain-2 token in the batch
    assert 0.0 < logs["high_entropy_share"] < 1.0


def test_forget_low_retain_high(setup):
    tok, ids, att, lab = setup
    A, B, R, _ = step_grads(tok, (ids, att, lab), ent_rows(att, forget_high=False, retain_high=True))
    assert B[1] > 0                                     # forget domain 1 learns from its low tokens
    assert B[0] == 0.0 and B[2] == 0.0                  # retain tokens are all high: B_0 learns nothing
    assert A > 0                                        # from the high (retain, and position 0) tokens


def test_forget_high_retain_low(setup):
    tok, ids, att, lab = setup
    A, B, R, _ = step_grads(tok, (ids, att, lab), ent_rows(att, forget_high=True, retain_high=False))
    assert B[0] > 0 and B[1] == 0.0 and B[2] == 0.0


def test_all_low_freezes_A(setup):
    tok, ids, att, lab = setup
    ent = torch.full(ids.shape, 0.5)                    # even position 0 low: no high token at all
    A, B, R, _ = step_grads(tok, (ids, att, lab), ent)
    assert A == 0.0 and B[0] > 0 and B[1] > 0 and B[2] == 0.0


def test_all_high_freezes_every_B(setup):
    tok, ids, att, lab = setup
    A, B, R, _ = step_grads(tok, (ids, att, lab), torch.full(ids.shape, math.inf))
    assert A > 0 and B == [0.0, 0.0, 0.0]


def test_router_learns_from_router_loss_only(setup):
    tok, ids, att, lab = setup
    ent = ent_rows(att, forget_high=False, retain_high=False)
    _, _, R0, _ = step_grads(tok, (ids, att, lab), ent, rho=0.0)
    _, _, R1, _ = step_grads(tok, (ids, att, lab), ent, rho=1.0)
    assert R0 == 0.0 and R1 > 0


def test_grad_norm_struct_keeps_isolation(setup):
    tok, ids, att, lab = setup
    # forget low, retain high: the paper's ||grad_A S||^2 term must still leave B_0 / B_2 untouched
    A, B, R, logs = step_grads(tok, (ids, att, lab), ent_rows(att, forget_high=False, retain_high=True),
                               struct_mode="grad_norm", lam=1.0)
    assert logs["struct"] > 0
    assert A > 0 and B[1] > 0 and B[0] == 0.0 and B[2] == 0.0


def test_loss_is_the_weighted_sum(setup):
    tok, ids, att, lab = setup
    model = fresh_model(tok)
    ent = torch.where(torch.arange(ids.shape[1]) % 3 == 0, 2.0, 0.5).expand(ids.shape).clone()
    b = {"input_ids": ids, "attention_mask": att, "labels": lab, "is_forget": torch.tensor([True, False]),
         "domain": torch.tensor([1, 0]), "entropy": ent, "base_sq": torch.full(ids.shape, 0.7)}
    for route_labels in ("all", "content"):
        hp = {**DEFAULTS, "beta": 0.3, "gamma": 2.0, "lam": 5.0, "rho": 0.25, "route_labels": route_labels}
        loss, logs = M.alter_loss(model, b, hp)
        want = 0.3 * logs["ihl"] + 2.0 * logs["retain_nll"] + 5.0 * logs["struct"] + 0.25 * logs["router_ce"]
        assert loss.item() == pytest.approx(want, rel=1e-5)
        # router CE: mean over layers of CE(router logits, per-token labels) over the labelled tokens:
        # every real token ("all"), or the answer tokens and the token before each ("content")
        keep = att.bool()
        if route_labels == "content":
            keep = lab != -100
            keep[:, :-1] |= lab[:, 1:] != -100
        labels = torch.where(keep, torch.tensor([1, 0])[:, None].expand_as(ids), -1).reshape(-1)
        ces = [torch.nn.functional.cross_entropy(p.router_logits[labels >= 0], labels[labels >= 0])
               for p in ak.last_plans(model).values()]
        assert logs["router_ce"] == pytest.approx(float(torch.stack(ces).mean().detach()), rel=1e-5)
