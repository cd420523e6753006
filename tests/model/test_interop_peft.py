"""init_from_peft: ALTER starts from a PEFT LoRA adapter and computes what it computes."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak
from alter_kernels.model.peft import init_from_peft

peft = pytest.importorskip("peft")
TARGETS = ["q_proj", "v_proj", "up_proj"]


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def trained_peft(alpha=8, rslora=False):
    m = peft.get_peft_model(tiny(), peft.LoraConfig(r=4, lora_alpha=alpha, lora_dropout=0.0, use_rslora=rslora,
                                                    target_modules=TARGETS))
    x = torch.randint(0, 61, (2, 9))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        m(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return m


@pytest.mark.parametrize("alpha,rslora,from_dir", [(8, False, True), (8, False, False), (12, True, True)])
def test_alter_from_peft_reproduces_the_peft_model(tmp_path, alpha, rslora, from_dir):
    pm = trained_peft(alpha, rslora)
    x = torch.randint(0, 61, (3, 7), generator=torch.Generator().manual_seed(4))
    want = pm(x).logits.detach()
    src = pm
    if from_dir:
        pm.save_pretrained(tmp_path / "lora")
        src = tmp_path / "lora"
    ours = ak.patch(tiny(), ak.AlterConfig(rank=4, alpha=16, num_forget_experts=2, target_modules=TARGETS))
    init_from_peft(ours, src)
    for ent in (None, torch.rand(3, 7) * 3):           # any routing: the forget experts are zero
        with ak.routing_inputs(ours, entropy=ent):
            torch.testing.assert_close(ours(x).logits, want, rtol=1e-5, atol=1e-5)


def test_rank_and_target_mismatches_are_named(tmp_path):
    pm = trained_peft()
    pm.save_pretrained(tmp_path / "lora")
    with pytest.raises(ak.AdapterError, match="rank r=4, the model is patched with rank=8"):
        init_from_peft(ak.patch(tiny(), ak.AlterConfig(target_modules=TARGETS)), tmp_path / "lora")
    with pytest.raises(ak.AdapterError, match="targets differ"):
        init_from_peft(ak.patch(tiny(), ak.AlterConfig(rank=4, target_modules=["q_proj", "k_proj"])),
                       tmp_path / "lora")
    with pytest.raises(ak.AdapterError, match="not found"):
        init_from_peft(ak.patch(tiny(), ak.AlterConfig(rank=4, target_modules=TARGETS)), tmp_path / "nothing")
