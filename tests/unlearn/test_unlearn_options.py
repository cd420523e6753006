"""The engine's typed options (UnlearnOptions) and the set-up's values (issue 25): options are one
frozen dataclass validated once, its data is built by keyword, theta is returned (no config object a
caller holds is edited), and gated decoding replaces the model's config instead of editing it."""
import dataclasses

import pytest
import torch

import alter_kernels as ak
from alter_kernels.unlearn import (DEFAULTS, AlterData, OptionError, UnlearnData, UnlearnError, UnlearnOptions,
                                   prepare_alter)
from alter_kernels.unlearn import methods as M
from alter_kernels.unlearn.options import refuse_grad_norm_data_parallel
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FORGET, RETAIN = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN)


def test_options_are_frozen_typed_and_checked_on_construction():
    o = UnlearnOptions(lr_B=2e-3)
    assert o.lr_B == 2e-3 and o.lam == DEFAULTS["lam"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.lr_B = 1.0
    with pytest.raises(OptionError, match=r"^unlearn: lr: expected a finite number > 0, got -1$"):
        UnlearnOptions(lr=-1)
    with pytest.raises(OptionError, match="struct_mode: expected 'drift' or 'grad_norm', got 'x'"):
        dataclasses.replace(o, struct_mode="x")            # a changed copy is checked too
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['lr_b'\]"):
        UnlearnOptions.from_kwargs("unlearn", {"lr_b": 1e-3})


def test_defaults_are_a_read_only_view_of_the_dataclass():
    assert dict(DEFAULTS) == UnlearnOptions().as_dict()
    assert set(DEFAULTS) == {f.name for f in dataclasses.fields(UnlearnOptions)}
    with pytest.raises(TypeError):
        DEFAULTS["lr"] = 1.0


def test_unlearn_keeps_its_keyword_errors():
    with pytest.raises(OptionError, match="unlearn: warmup_steps: expected an int >= 0, got -2"):
        ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, tokenizer=TOK, warmup_steps=-2, progress=False)
    with pytest.raises(TypeError, match="unknown option"):
        ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, tokenizer=TOK, warmup=2, progress=False)


def test_grad_norm_refusal_has_one_home():
    refuse_grad_norm_data_parallel(UnlearnOptions(struct_mode="grad_norm", lam=0.0), "x")   # lam 0: no R_struct
    with pytest.raises(UnlearnError, match="^x: struct_mode='grad_norm' is not supported") as e:
        refuse_grad_norm_data_parallel(UnlearnOptions(struct_mode="grad_norm"), "x")
    assert isinstance(e.value, ValueError)                 # alter_loss raised ValueError before


def test_data_is_built_by_keyword():
    assert AlterData is UnlearnData
    with pytest.raises(TypeError):
        UnlearnData([], [], 0, [])
    d = UnlearnData(forget=[], retain=[], pad_id=0, forget_domain=[])
    assert d.config is None and d.forget_cache is None and d.domain_map == {}


@pytest.mark.parametrize("option", [dict(threshold_quantile=0.3), dict(threshold_auto=0.5)])
def test_theta_is_resolved_without_editing_a_callers_config(option):
    cfg = ak.AlterConfig(rank=4, num_forget_experts=2, threshold=50.0, init_seed=0)   # every token low: auto fires
    before = cfg.to_dict()
    model = toy_model(len(TOK))
    data = prepare_alter(
        model, FORGET, RETAIN, TOK, alter_config=cfg, batch_size=4, **option)
    assert cfg.to_dict() == before                          # the caller's object is untouched
    live = ak.get_state(model).config
    assert live.threshold != 50.0 and data.config is live   # theta changed on the model, one value
    res = ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, tokenizer=TOK, alter_config=cfg, max_steps=1,
                     batch_size=2, progress=False, eval_each_epoch=False, **option)
    assert cfg.to_dict() == before and res.threshold != 50.0 and res.config.threshold == res.threshold


def test_loss_takes_a_mapping_or_the_options():
    model = toy_model(len(TOK))
    data = prepare_alter(
        model, FORGET, RETAIN, TOK, batch_size=2)
    b = data.batch([0, 1], [0, 1])
    l1, logs1 = M.alter_loss(model, b, {"lam": 0.5})
    l2, logs2 = M.alter_loss(model, b, UnlearnOptions(lam=0.5))
    assert torch.equal(l1, l2) and logs1 == logs2
    l3, _ = M.alter_loss(model, b, UnlearnOptions(lam=0.5, beta=0.0))
    assert not torch.equal(l1, l3)                          # the options reach the loss


def test_gated_decoding_replaces_the_config_instead_of_editing_it():
    model = toy_model(len(TOK))
    ak.patch(model, ak.AlterConfig(rank=2, num_forget_experts=1, init_seed=0))
    held = ak.get_state(model).config
    ids = torch.tensor([[5, 6, 7]])
    with ak.gated_decoding(model, entropy="self"):
        assert ak.get_state(model).config.inference_entropy == "self" and held.inference_entropy == "base"
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                       pad_token_id=TOK.pad_token_id)
    assert held.inference_entropy == "base"                 # never edited in place
    assert ak.get_state(model).config.inference_entropy == "base"
    ak.set_inference_entropy(model, "none")
    assert held.inference_entropy == "base" and ak.get_state(model).config.inference_entropy == "none"


def test_method_variants_resolve_to_valid_engine_options():
    from alter_kernels.unlearn import METHODS
    from alter_kernels.unlearn.options import METHOD_VARIANTS, UnlearnOptions, resolve_variant
    assert resolve_variant("npo") == ("npo", {})
    assert resolve_variant("alter_answer_keys_frozen") == ("alter", {"router_input": "answer_keys",
                                                                     "retain_expert": "frozen"})
    for name in METHOD_VARIANTS:
        method, extra = resolve_variant(name)
        assert method in METHODS and name.startswith(method) and extra
        UnlearnOptions.from_kwargs(name, extra)          # every variant's options pass the checks
    extra = resolve_variant("alter_frozen")[1]
    extra["retain_expert"] = "train"                     # a copy: the table itself is never edited
    assert resolve_variant("alter_frozen")[1] == {"retain_expert": "frozen"}


def test_ihl_until_not_top_counts_only_tokens_the_model_still_ranks_first():
    model = toy_model(len(TOK))
    ak.finetune(model, FORGET + RETAIN, TOK, epochs=30, lr=3e-3, progress=False)   # now it knows some answers
    data = prepare_alter(model, FORGET, RETAIN, TOK, batch_size=2, threshold_quantile=0.9)
    b = data.batch([0, 1, 2, 3], [0, 1])
    hp = {"gamma": 0.0, "lam": 0.0, "rho": 0.0}
    with torch.no_grad():
        _, zero = M.alter_loss(model, b, UnlearnOptions(**hp))
        _, top = M.alter_loss(model, b, UnlearnOptions(ihl_until="not_top", **hp))
    assert 0 < top["forget_low_tokens"] < zero["forget_low_tokens"]
    # every counted token still has y on top (IHL >= 1; the loss sums one mean per forget domain)
    assert top["ihl"] >= 1.0 - 1e-6
    with pytest.raises(UnlearnError, match="ihl_until"):
        M.alter_loss(model, b, UnlearnOptions(ihl_until="not_top"), reduce=lambda t: t)
    with pytest.raises(OptionError, match="ihl_until"):
        UnlearnOptions(ihl_until="never")
