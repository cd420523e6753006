"""The patch layer on real (tiny, random-init) HF models: invariants and errors of issue 2."""
import json
import math
import os

import pytest
import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak

from alter_kernels.model import plan as plan_mod  # where each layer's routing plan is made (calls route)

VOCAB = 97


def tiny_llama(seed=0, layers=2):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def ids(b=2, t=10, seed=0):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ak.adapter_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# Tolerance of "fresh patch == base": B = 0 makes the adapter term exactly 0, and the reference
# adds 0.0 to the base GEMM's result, which is bit-exact. Kernel backends may fold the (zero)
# adapter into the base GEMM's accumulation and reorder fp32 sums, so the test allows a few
# fp32 ulps of the logits' magnitude (atol 1e-5 on O(1) logits), far below any real change.
FRESH_ATOL = 1e-5


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_fresh_patch_gives_the_base_logits(family):
    if family == "llama":
        model = tiny_llama()
    else:
        from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
        conf_cls, model_cls = {"mistral": (MistralConfig, MistralForCausalLM),
                               "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
        torch.manual_seed(0)
        model = model_cls(conf_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64)).eval()
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        ak.patch(model, ak.AlterConfig(num_forget_experts=2))
        n_alter = sum(isinstance(m, ak.AlterLinear) for m in model.modules())
        assert n_alter == 7 * 2
        torch.testing.assert_close(model(x).logits, base, rtol=0, atol=FRESH_ATOL)
        ent = torch.rand(2, 10) * 3                 # any routing: B = 0 keeps the base
        with ak.routing_inputs(model, entropy=ent, labels=torch.tensor([1, 0])):
            torch.testing.assert_close(model(x).logits, base, rtol=0, atol=FRESH_ATOL)


def test_unpatch_restores_the_exact_modules_state_dict_and_flags():
    model = tiny_llama()
    model.lm_head.weight.requires_grad_(False)      # a user-chosen flag must come back too
    originals = {n: m for n, m in model.named_modules()}
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ak.patch(model)
    randomise_adapters(model)
    model(ids())
    ak.unpatch(model)
    after = dict(model.named_modules())
    assert list(after) == list(originals)
    assert all(after[n] is originals[n] for n in originals)
    assert list(model.state_dict()) == list(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not ak.is_patched(model)
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


def test_only_adapter_and_router_parameters_require_grad():
    model = ak.patch(tiny_llama(), ak.AlterConfig(target_modules=("q_proj", "v_proj", "down_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = set()
    for layer in range(2):
        for mod in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            want |= {f"model.layers.{layer}.{mod}.lora_A", f"model.layers.{layer}.{mod}.lora_B"}
        want.add(f"model.layers.{layer}.alter_router.weight")
    assert trainable == want
    groups = ak.adapter_parameters(model)
    assert len(groups["A"]) == len(groups["B"]) == 6 and len(groups["router"]) == 2


def test_one_routing_plan_per_decoder_layer_per_forward(monkeypatch):
    calls = []
    real = plan_mod.route

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)
    monkeypatch.setattr(plan_mod, "route", counting)
    model = ak.patch(tiny_llama(layers=3))
    model(ids(b=2, t=5))
    assert len(calls) == 3 and all(s == (10, 32) for s in calls)     # per-token router: each layer's own input
    plans = ak.last_plans(model)
    assert set(plans) == {"model.layers.0", "model.layers.1", "model.layers.2"}


def test_inference_entropy_none_means_every_token_high_and_entropy_drives_routing():
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2, threshold=1.2, inference_entropy="none"))
    model(ids())
    assert ak.high_entropy_fraction(model) == 1.0
    ent = torch.tensor([[math.inf] + [0.1] * 4 + [2.0] * 5] * 2)
    with ak.routing_inputs(model, entropy=ent):
        model(ids())
    assert ak.high_entropy_fraction(model) == pytest.approx(12 / 20)
    with pytest.raises(RuntimeError, match=r"routing input entropy has shape \(3, 10\)"):
        with ak.routing_inputs(model, entropy=torch.zeros(3, 10)):
            model(ids())


def test_token_entropy_is_the_base_models_shifted_entropy():
    model = tiny_llama()
    x = ids(b=2, t=6)
    with torch.no_grad():
        logits = model(x).logits
    ak.patch(model)
    randomise_adapters(model)                         # adapters must be off for this pass
    e = ak.token_entropy(model, x)
    want = ak.tsallis_entropy(logits, 1.5)
    assert torch.isinf(e[:, 0]).all()
    torch.testing.assert_close(e[:, 1:], want[:, :-1], rtol=1e-5, atol=1e-5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    e = ak.token_entropy(model, x, attention_mask=mask)
    assert torch.isinf(e[0, :3]).all() and torch.isfinite(e[0, 3:]).all()


def train_steps(model, steps=3, seed=0):
    x = ids(b=4, t=8, seed=seed)
    ent = torch.rand(4, 8, generator=torch.Generator().manual_seed(seed)) * 2.4
    labels = torch.tensor([0, 1, 2, 1])
    groups = ak.adapter_parameters(model)
    opt = torch.optim.AdamW([{"params": groups["A"], "lr": 1e-2}, {"params": groups["B"], "lr": 1e-2},
                             {"params": groups["router"], "lr": 1e-2}])
    with ak.routing_inputs(model, entropy=ent, labels=labels):
        for _ in range(steps):
            out = model(x, labels=x)
            loss = out.loss + ak.router_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return loss


def test_patch_train_save_load_unpatch_roundtrip(tmp_path):
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2, init_seed=3))
    before = model(ids()).logits.detach()
    train_steps(model)
    x = ids(seed=5)
    ent = torch.rand(2, 10, generator=torch.Generator().manual_seed(9)) * 2.4
    with ak.routing_inputs(model, entropy=ent):
        want = model(x).logits.detach()
    assert not torch.allclose(model(ids()).logits, before)       # training changed something
    path = ak.save_adapter(model, tmp_path / "adapter")
    assert sorted(os.listdir(path)) == ["adapter_config.json", "adapter_model.safetensors"]

    fresh = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    ak.load_adapter(fresh, path)
    with ak.routing_inputs(fresh, entropy=ent):
        torch.testing.assert_close(fresh(x).logits, want, rtol=0, atol=0)
    ak.unpatch(fresh)
    torch.testing.assert_close(fresh(x).logits, tiny_llama()(x).logits, rtol=0, atol=0)


def test_one_expert_matches_peft_lora_in_outputs_and_gradients():
    peft = pytest.importorskip("peft")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    ours = ak.patch(tiny_llama(), ak.AlterConfig(rank=4, alpha=8, num_forget_experts=0, target_modules=targets))
    randomise_adapters(ours)
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                target_modules=list(targets)))
    with torch.no_grad():
        for path, alin in ak.get_state(ours).replaced:
            mod = theirs.base_model.model.get_submodule(path)
            mod.lora_A["default"].weight.copy_(alin.lora_A)
            mod.lora_B["default"].weight.copy_(alin.lora_B[0])
    x = ids(b=2, t=7)
    ent = torch.rand(2, 7) * 2.4                  # high and low tokens: E = 1 makes them equal
    with ak.routing_inputs(ours, entropy=ent):
        lo = ours(x, labels=x)
    lt = theirs(x, labels=x)
    torch.testing.assert_close(lo.logits, lt.logits, rtol=1e-5, atol=1e-5)
    lo.loss.backward()
    lt.loss.backward()
    for path, alin in ak.get_state(ours).replaced:
        mod = theirs.base_model.model.get_submodule(path)
        torch.testing.assert_close(alin.lora_A.grad, mod.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(alin.lora_B.grad[0], mod.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-6)


def _grads(model, x, ent, labels):
    for p in model.parameters():
        p.grad = None
    with ak.routing_inputs(model, entropy=ent, labels=labels):
        model(x, labels=x).loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if p.requires_grad and "router" not in n}


@pytest.mark.parametrize("case", ["no_high_tokens", "no_domain_1_tokens", "mixed"])
def test_gradient_isolation_on_a_real_model(case, monkeypatch):
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    randomise_adapters(model)
    x = ids(b=3, t=6)
    if case == "no_high_tokens":
        ent, labels = torch.zeros(3, 6), torch.tensor([0, 1, 2])
    elif case == "no_domain_1_tokens":
        ent, labels = torch.rand(3, 6) * 2.4, torch.tensor([0, 2, 2])
    else:
        ent, labels = torch.rand(3, 6) * 2.4, torch.tensor([0, 1, 2])
    masked = _grads(model, x, ent, labels)

    # the same forward without gradient masks: what every gradient would be without isolation
    real = plan_mod.route

    def unmasked(*a, **k):
        plan = real(*a, **k)
        plan.a_grad_mask = plan.b_grad_mask = None
        return plan
    monkeypatch.setattr(plan_mod, "route", unmasked)
    free = _grads(model, x, ent, labels)

    low = (ent <= 1.2)
    for name, g in masked.items():
        if name.endswith("lora_A"):
            if case == "no_high_tokens":
                assert (g == 0).all(), name
            else:
                assert g.abs().sum() > 0, name
        else:
            for e in range(3):
                rows = low & (labels[:, None] == e)
                if not rows.any():
                    assert (g[e] == 0).all(), (name, e)
                else:
                    assert g[e].abs().sum() > 0, (name, e)
                    if case == "no_high_tokens":
                        # every row of this sample may update B_e: no isolation at work, same grad
                        torch.testing.assert_close(g[e], free[name][e], rtol=1e-5, atol=1e-7)
            if case == "no_high_tokens":
                torch.testing.assert_close(free[name.replace("lora_B", "lora_A")] * 0,
                                           masked[name.replace("lora_B", "lora_A")])


def test_router_learns_from_the_router_loss_only():
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    randomise_adapters(model)
    x = ids()
    with ak.routing_inputs(model, entropy=torch.rand(2, 10) * 2.4, labels=torch.tensor([1, 2])):
        model(x, labels=x).loss.backward()
    assert all(p.grad is None for p in ak.adapter_parameters(model)["router"])
    with ak.routing_inputs(model, entropy=torch.rand(2, 10) * 2.4, labels=torch.tensor([1, 2])):
        model(x)
        ak.router_loss(model).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ak.adapter_parameters(model)["router"])
    # and the router loss reaches nothing else
    for p in model.parameters():
        p.grad = None
    with ak.routing_inputs(model, entropy=torch.rand(2, 10) * 2.4, labels=torch.tensor([1, 2])):
        model(x)
        ak.router_loss(model).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "alter_router" not in n)


def test_disable_adapters_gives_the_base_model():
    model = tiny_llama()
    x = ids()
    base = model(x).logits.detach()
    ak.patch(model)
    randomise_adapters(model)
    assert not torch.allclose(model(x).logits, base)
    with ak.disable_adapters(model):
        torch.testing.assert_close(model(x).logits, base, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ bad input
def test_model_without_target_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4))])
    with pytest.raises(ak.PatchError, match=r"none of the target modules .*'q_proj'.* its linear layers are named \['0'\]"):
        ak.patch(Net())
    with pytest.raises(ak.PatchError, match="none of the target modules"):
        ak.patch(tiny_llama(), ak.AlterConfig(target_modules=("c_attn",)))


def test_patching_twice():
    model = ak.patch(tiny_llama())
    with pytest.raises(ak.PatchError, match="already patched"):
        ak.patch(model)
    with pytest.raises(ak.PatchError, match="not patched"):
        ak.unpatch(tiny_llama())


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"AlterConfig.rank: got 0, expected an int >= 1"):
        ak.AlterConfig(rank=0)
    with pytest.raises(ValueError, match="AlterConfig.q_route"):
        ak.AlterConfig(q_route=-1)
    with pytest.raises(ValueError, match="unknown field"):
        ak.AlterConfig.from_dict({"rank": 8, "ranks": 4})


def test_adapter_with_mismatching_config(tmp_path):
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    ak.save_adapter(model, tmp_path / "a")
    other = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=3))
    with pytest.raises(ak.AdapterError, match="'num_forget_experts' is 2 in .* patched with 3"):
        ak.load_adapter(other, tmp_path / "a")
    other = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2, rank=4))
    with pytest.raises(ak.AdapterError, match="'rank' is 8"):
        ak.load_adapter(other, tmp_path / "a")


def test_adapter_with_a_mismatching_tensor_shape_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    path = ak.save_adapter(model, tmp_path / "a")
    cfg = os.path.join(path, "adapter_config.json")           # the tensors are edited by hand below: a config
    meta = json.load(open(cfg))                                # without the weights' digest (as older saves)
    del meta["weights_sha256"]
    json.dump(meta, open(cfg, "w"))
    f = os.path.join(path, "adapter_model.safetensors")
    t = load_file(f)
    t["model.layers.1.mlp.up_proj.lora_B"] = torch.zeros(3, 48, 7)
    save_file(t, f)
    target = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    snapshot = {k: v.clone() for k, v in ak.adapter_state_dict(target).items()}
    with pytest.raises(ak.AdapterError, match=r"'model.layers.1.mlp.up_proj.lora_B' has shape \(3, 48, 7\).*"
                                              r"expected \(3, 48, 8\)"):
        ak.load_adapter(target, path)
    # nothing was half-loaded
    assert all(torch.equal(v, snapshot[k]) for k, v in ak.adapter_state_dict(target).items())
    del t["model.layers.1.mlp.up_proj.lora_B"]
    save_file(t, f)
    with pytest.raises(ak.AdapterError, match=r"missing \['model.layers.1.mlp.up_proj.lora_B'\]"):
        ak.load_adapter(target, path)


@pytest.mark.parametrize("damage", ["truncate", "corrupt_header", "empty"])
def test_damaged_safetensors_file(tmp_path, damage):
    model = ak.patch(tiny_llama())
    path = ak.save_adapter(model, tmp_path / "a")
    f = os.path.join(path, "adapter_model.safetensors")
    data = open(f, "rb").read()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "corrupt_header":
        data = data[:8] + b"{not json" + data[17:]
    else:
        data = b""
    open(f, "wb").write(data)
    with pytest.raises(ak.AdapterError, match="truncated or corrupted"):
        ak.load_adapter(ak.patch(tiny_llama()), path)


def test_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    from alter_kernels.common import fsio as _fsio
    model = ak.patch(tiny_llama())

    def boom(fd):                      # the data is written, the flush to disk fails
        raise OSError("disk full")
    monkeypatch.setattr(_fsio.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        ak.save_adapter(model, tmp_path / "a")
    assert os.listdir(tmp_path / "a") == []


def test_bad_routing_inputs():
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    with pytest.raises(ValueError, match="label 3 out of range; this adapter has 3 experts"):
        ak.set_routing_inputs(model, labels=torch.tensor([3, 0]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ak.set_routing_inputs(model, labels=torch.tensor([1.0, 0.0]))


def test_plan_hooks_edit_every_plan_and_can_be_removed():
    model = ak.patch(tiny_llama(), ak.AlterConfig(num_forget_experts=2))
    randomise_adapters(model)
    x = ids()
    seen = []

    def open_a(plan, layer_name):
        seen.append(layer_name)
        plan.a_grad_mask = None
    handle = ak.add_plan_hook(model, open_a)
    with ak.routing_inputs(model, entropy=torch.zeros(2, 10), labels=torch.tensor([0, 1])):   # all low
        model(x, labels=x).loss.backward()
        assert seen == ["model.layers.0", "model.layers.1"]
        assert all(p.grad.abs().sum() > 0 for p in ak.adapter_parameters(model)["A"])
        handle.remove()
        for p in model.parameters():
            p.grad = None
        model(x, labels=x).loss.backward()
        assert all(p.grad.abs().sum() == 0 for p in ak.adapter_parameters(model)["A"])
    assert len(seen) == 2
