"""ALTER through transformers.Trainer (alter_kernels.integrations.hf_trainer; the runnable example is
python/hf_trainer_unlearn.py) on a tiny Llama (issue 8)."""

import pytest
import torch

import alter_kernels as ak
from alter_kernels.integrations.hf_trainer import AlterTrainer, build
from alter_kernels.unlearn import DEFAULTS, alter_loss
from alter_kernels.unlearn.data import collate
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
from alter_kernels.ops.losses import token_nll

FORGET, RETAIN = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN)
LR = 3e-2


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@torch.no_grad()
def scores(model, data):
    """Training-routing scores of all rows: the ALTER logs, and the forget / retain answer NLL."""
    b = data.batch(range(len(data.forget)), range(len(data.retain)))
    _, logs = alter_loss(model, b, {**DEFAULTS})
    route = torch.where(b["attention_mask"].bool(), b["domain"][:, None].expand_as(b["input_ids"]), -1)
    with ak.routing_inputs(model, entropy=b["entropy"], labels=route):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    f = b["is_forget"]
    return logs, float(token_nll(logits[f], b["labels"][f])), float(token_nll(logits[~f], b["labels"][~f]))


def learned_model():
    """The toy Llama after it memorised the rows (a random model has nothing to unlearn)."""
    from alter_kernels.unlearn.data import prepare
    model = toy_model(len(TOK), seed=0)
    _, exs = prepare(FORGET + RETAIN, TOK, "train")
    ids, att, lab = collate(exs, TOK.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        token_nll(model(input_ids=ids, attention_mask=att).logits, lab).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_trainer_unlearns_with_alter_and_saves_a_reloadable_adapter(tmp_path):
    model = learned_model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, data = build(model, TOK, FORGET, RETAIN, str(tmp_path / "run"), max_steps=12, batch_size=2,
                          lr_A=LR, lr_B=LR, lr_router=LR, threshold_quantile=0.5)
    assert isinstance(trainer, AlterTrainer) and ak.is_patched(model) and 0 < len(data.forget)
    logs0, f0, r0 = scores(model, data)
    assert logs0["ihl"] > 0 and 0 < logs0["high_entropy_share"] < 1      # both entropy paths in use

    trainer.train()

    # the optimizer: ALTER's three groups and learning rates, adapter parameters only
    groups = ak.adapter_parameters(model)
    opt = trainer.optimizer
    assert [g["lr"] for g in opt.param_groups] == [LR, LR, LR]
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for k in ("A", "B", "router") for p in groups[k]}
    # the Trainer's loss is the engine's objective: one call per step, 12 logged losses
    assert len(trainer.alter_logs) == 12 and all("ihl" in h for h in trainer.alter_logs)
    # base weights bit-identical, the adapter trained
    for n, p in model.named_parameters():
        if "lora_" not in n and "alter_router" not in n:
            assert torch.equal(p.detach(), base[n.replace("base_layer.", "")]), n
    assert all(float(b.detach().abs().max()) > 1e-3 for b in groups["B"])
    # unlearning moved the right way: IHL on low-entropy forget tokens down, forget NLL up
    logs1, f1, r1 = scores(model, data)
    assert logs1["ihl"] < 0.5 * logs0["ihl"], (logs0, logs1)            # measured: 3.97 -> 0.86
    assert f1 > f0 + 1.0 and f1 > r1 + 1.0, (f0, f1, r0, r1)             # measured: forget 0.31 -> 5.3, retain 0.36 -> 0.94

    # save_model writes the adapter (ak.save_adapter); it reloads onto the base model and gives the same logits
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    cfg, _ = ak.read_adapter_config(out)
    assert cfg.threshold == data.config.threshold
    fresh = toy_model(len(TOK), seed=0)
    fresh.load_state_dict(base)
    fresh = ak.patch(fresh, cfg)
    ak.load_adapter(fresh, out)
    ids_, att, _ = collate(data.forget + data.retain, data.pad_id)
    ent = ak.token_entropy(fresh, ids_, att)
    outs = []
    for m in (model, fresh):
        m.eval()
        with torch.no_grad(), ak.routing_inputs(m, entropy=ent):          # inference: the router decides
            outs.append(m(input_ids=ids_, attention_mask=att).logits)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    with torch.no_grad(), ak.disable_adapters(fresh):
        plain = fresh(input_ids=ids_, attention_mask=att).logits
    assert float((plain - outs[0]).abs().max()) > 1e-3                   # and the adapter does something
