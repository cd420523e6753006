"""ak.unlearn end to end on a tiny random Llama: every method, resume == uninterrupted,
sequential unlearning, sub-domains, NaN handling and bad input."""
import json
import math
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels.unlearn import DataError, UnlearnDivergedError, kmeans
from alter_kernels.unlearn import objectives as obj
from alter_kernels.unlearn.checkpoint import load_checkpoint
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

FORGET = toy_rows(6, seed=1)
RETAIN = toy_rows(6, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN + toy_rows(4, seed=3, offset=3))
FAST = dict(progress=False, eval_each_epoch=False)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def model():
    return toy_model(len(TOK), seed=0)


def snapshot(m):
    return {k: v.detach().clone() for k, v in ak.adapter_state_dict(m).items()}


@pytest.mark.parametrize("method", ["alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain"])
def test_every_method_trains(method):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = ak.unlearn(m, FORGET, RETAIN, method=method, tokenizer=TOK, max_steps=2, batch_size=3,
                     threshold_quantile=0.5 if method == "alter" else None, **FAST)
    assert res.method == method and res.model is m and len(res.history) == 2 and res.steps == 2
    assert all(math.isfinite(h["loss"]) and h["tokens_per_s"] > 0 for h in res.history)
    assert res.metrics and res.metrics[-1]["epoch"] == 1 and res.seconds > 0
    if method in ("alter", "asymlora", "lora"):
        assert ak.is_patched(m)
        assert any(float(v.detach().abs().sum()) > 0 for k, v in ak.adapter_state_dict(m).items() if "lora_B" in k)
        for k, v in ak.unpatch(m).state_dict().items():
            assert torch.equal(v, before[k]), f"{method} changed base weight {k}"
    else:
        assert not ak.is_patched(m)
        assert any(not torch.equal(v, before[k]) for k, v in m.state_dict().items())
    if method == "alter":
        assert 0.0 < res.high_entropy_share < 1.0
        assert {"ihl", "retain_nll", "struct", "router_ce", "high_entropy_share"} <= set(res.history[0])
    if method == "lora":
        assert res.config.num_forget_experts == 0


def test_ga_and_npo_run_without_retain():
    res = ak.unlearn(model(), FORGET, None, method="npo", tokenizer=TOK, max_steps=1, **FAST)
    assert len(res.history) == 1
    with pytest.raises(DataError, match="retain"):
        ak.unlearn(model(), FORGET, None, method="graddiff", tokenizer=TOK, max_steps=1, **FAST)


def memorised_model():
    """The toy model after a few full fine-tuning steps on forget + retain (something to forget)."""
    from alter_kernels.unlearn.data import collate, prepare
    m = model()
    _, ex = prepare(FORGET + RETAIN, TOK, "train")
    ids, att, lab = collate(ex, TOK.pad_token_id)
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    for _ in range(20):
        m(input_ids=ids, attention_mask=att, labels=lab).loss.backward()
        opt.step()
        opt.zero_grad()
    return m


def test_alter_learns_to_forget():
    m = memorised_model()
    res = ak.unlearn(m, FORGET, RETAIN, method="alter", tokenizer=TOK, epochs=3, batch_size=3, lr_B=1e-2,
                     lr_A=1e-3, threshold_quantile=0.5, progress=False)
    assert len(res.metrics) == 3
    # the forget answers' NLL (inference routing: the router decides) goes up epoch after epoch
    nll = [m_["eval_forget_nll"] for m_ in res.metrics]
    assert nll[0] < nll[1] < nll[2] and nll[2] > nll[0] + 0.1


def run_alter(out, **kw):
    return ak.unlearn(model(), FORGET, RETAIN, method="alter", tokenizer=TOK, epochs=2, batch_size=2,
                      out_dir=str(out), checkpoint_every=2, threshold_quantile=0.5, lr_A=1e-3, lr_B=1e-2, **FAST, **kw)


def test_resume_equals_uninterrupted(tmp_path):
    full = run_alter(tmp_path / "full")                 # 3 steps per epoch, 6 steps
    ref = snapshot(full.model)

    class Stop(Exception):
        pass

    def stop_at_5(rec):
        if rec["step"] == 5:
            raise Stop()
    with pytest.raises(Stop):
        run_alter(tmp_path / "cut", callback=stop_at_5)  # checkpoints at 2 and 4, dies after step 5
    ck = load_checkpoint(str(tmp_path / "cut"))
    assert ck["step"] == 4
    resumed = run_alter(tmp_path / "cut", resume=True)
    got = snapshot(resumed.model)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    # outputs: adapter (loads onto a fresh patch), per-epoch metrics, history
    fresh = ak.patch(model(), resumed.config)
    ak.load_adapter(fresh, resumed.adapter_dir)
    for k, v in snapshot(fresh).items():
        assert torch.equal(v, ref[k])
    metrics = json.load(open(tmp_path / "cut" / "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2]
    # a different run refuses the checkpoint
    with pytest.raises(ak.UnlearnError, match="different run"):
        ak.unlearn(model(), FORGET[:4], RETAIN, method="alter", tokenizer=TOK, epochs=2, batch_size=2,
                   out_dir=str(tmp_path / "cut"), resume=True, **FAST)


def test_full_parameter_resume(tmp_path):
    kw = dict(method="graddiff", tokenizer=TOK, epochs=1, batch_size=2, out_dir=None, lr=1e-3, **FAST)
    full = ak.unlearn(model(), FORGET, RETAIN, **{**kw, "out_dir": str(tmp_path / "a")})
    with pytest.raises(KeyError):
        ak.unlearn(model(), FORGET, RETAIN, checkpoint_every=1,
                   callback=lambda r: (_ for _ in ()).throw(KeyError()) if r["step"] == 2 else None,
                   **{**kw, "out_dir": str(tmp_path / "b")})
    res = ak.unlearn(model(), FORGET, RETAIN, resume=True, **{**kw, "out_dir": str(tmp_path / "b")})
    for (k, v), (k2, v2) in zip(full.model.state_dict().items(), res.model.state_dict().items()):
        assert torch.equal(v, v2), k
    assert os.path.isfile(tmp_path / "b" / "model" / "config.json")


def test_sequential_unlearning_keeps_earlier_experts():
    m = model()
    first = ak.unlearn(m, toy_rows(4, seed=5, domain="authors-a"), RETAIN, method="alter", tokenizer=TOK,
                       epochs=1, batch_size=2, threshold_quantile=0.5, lr_A=1e-2, lr_B=1e-2, **FAST)
    assert first.config.num_forget_experts == 1 and first.domain_map == {"authors-a": 1}
    before = snapshot(m)
    new = ak.add_forget_experts(m, 1)
    assert new == [2]
    grown = snapshot(m)
    for k, v in before.items():                          # growing changes nothing that existed
        old = grown[k][:2] if "lora_B" in k else (grown[k][:, :2] if "router.weight" in k else grown[k])
        assert torch.equal(old, v)
    n_keys = first.config.router_keys                    # prefix-match router: keys, then the bias row of W_g
    assert n_keys >= 1
    second = ak.unlearn(m, toy_rows(4, seed=6, domain="authors-b", offset=4), RETAIN, method="alter",
                        tokenizer=TOK, epochs=2, batch_size=2, lr_A=1e-2, lr_B=1e-2, **FAST)
    assert second.config.threshold == first.config.threshold
    assert second.domain_map == {"authors-b": 2} and second.trained_experts == [2]
    after = snapshot(m)
    changed_new = False
    for k, v in before.items():
        if "lora_B" in k:
            assert torch.equal(after[k][:2], v), k       # retain expert and first forget expert
            changed_new |= bool(after[k][2].abs().sum() > 0)
        elif "router.weight" in k:                       # old key rows and the bias row keep their columns
            assert torch.equal(torch.cat([after[k][:n_keys], after[k][-1:]])[:, :2], v), k
            assert after[k].shape[0] > v.shape[0]        # the second request's keys were appended
        elif "router.keys" in k:
            assert torch.equal(after[k][:n_keys], v), k
        else:
            assert torch.equal(after[k], v), k           # shared A frozen
    assert changed_new
    assert all(p.requires_grad for p in ak.adapter_parameters(m)["A"])   # flags restored


def test_domain_labels_take_priority_and_init_router():
    rows = toy_rows(3, seed=1, domain="x") + toy_rows(3, seed=2, domain="y", offset=3)
    m = model()
    with pytest.warns(UserWarning, match="every answer token was high-entropy"):   # theta 1.2 vs a random model
        res = ak.unlearn(m, rows, RETAIN, method="alter", tokenizer=TOK, max_steps=1, batch_size=2,
                         base_config=ak.AlterConfig(router_input="token"), threshold_auto=None, **FAST)
    assert res.domain_map == {"x": 1, "y": 2} and res.config.num_forget_experts == 2
    ws = [p for p in ak.adapter_parameters(m)["router"]]
    assert len(ws) == 2
    for w in ws:                                          # columns start at unit-norm centroids (one step later)
        assert torch.allclose(w.detach().norm(dim=0), torch.ones(3), atol=0.05)
    assert not torch.allclose(ws[0], ws[1])              # each layer its own input features
    with pytest.raises(ValueError, match="some rows have a 'domain'"):
        ak.unlearn(model(), rows + toy_rows(1), RETAIN, method="alter", tokenizer=TOK, max_steps=1, **FAST)


@pytest.mark.filterwarnings("ignore:unlearn.alter.. every answer token")
def test_kmeans_subdomains():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 4, generator=g) + 8, torch.randn(12, 4, generator=g) - 8])
    assign, cent = kmeans(x, 2, seed=0)
    assert len(set(assign[:10].tolist())) == 1 and len(set(assign[10:].tolist())) == 1
    assert assign[0] != assign[10]
    from alter_kernels.unlearn.subdomains import choose_k
    x3 = torch.cat([x, torch.randn(9, 4, generator=g) + torch.tensor([8.0, -8, 8, -8])])
    assert choose_k(x3, max_k=5) == 3
    m = model()
    res = ak.unlearn(m, FORGET, RETAIN, method="alter", tokenizer=TOK, max_steps=1, num_forget_experts=3, **FAST)
    assert res.config.num_forget_experts == 3 and set(res.domain_map.values()) <= {1, 2, 3}
    res = ak.unlearn(model(), FORGET, RETAIN, method="alter", tokenizer=TOK, max_steps=1,
                     num_forget_experts="auto", **FAST)
    assert 1 <= res.config.num_forget_experts <= 5


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = obj.masked_mean          # the retain term of alter_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 3 else out
    monkeypatch.setattr(obj, "masked_mean", flaky)
    m = model()
    with pytest.raises(UnlearnDivergedError, match="non-finite loss .* at step 3") as ei:
        ak.unlearn(m, FORGET, RETAIN, method="alter", tokenizer=TOK, epochs=2, batch_size=2, out_dir=str(tmp_path),
                   checkpoint_every=1, **FAST)
    assert ei.value.checkpoint == str(tmp_path / "checkpoint.pt") and "last good checkpoint" in str(ei.value)
    ck = load_checkpoint(str(tmp_path))
    assert ck["step"] == 2
    for k, v in ak.adapter_state_dict(m).items():         # the model keeps the last good weights
        assert torch.equal(v.detach(), ck["trainable"][k]), k


# ------------------------------------------------------------------------------- bad input
def test_empty_forget(tmp_path):
    with pytest.raises(DataError, match="forget.*no rows"):
        ak.unlearn(model(), [], RETAIN, tokenizer=TOK, **FAST)
    p = tmp_path / "empty.json"
    p.write_text("[]")
    with pytest.raises(DataError, match=str(p)):
        ak.unlearn(model(), str(p), RETAIN, tokenizer=TOK, **FAST)


def test_missing_and_illtyped_fields_name_file_and_row(tmp_path):
    rows = toy_rows(3)
    del rows[1]["answer"]
    p = tmp_path / "forget.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=rf"{p} row 1: missing field 'answer'"):
        ak.unlearn(model(), str(p), RETAIN, tokenizer=TOK, **FAST)
    rows = toy_rows(3)
    rows[2]["question"] = 42
    p = tmp_path / "retain.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=rf"retain: {p} row 2: field 'question' must be a string, got int"):
        ak.unlearn(model(), FORGET, str(p), tokenizer=TOK, **FAST)
    with pytest.raises(DataError, match="row 0: field 'domain' must be an int or a string"):
        ak.unlearn(model(), [dict(toy_rows(1)[0], domain=1.5)], RETAIN, tokenizer=TOK, **FAST)
    with pytest.raises(DataError, match="row 0: expected an object"):
        ak.unlearn(model(), ["just a string"], RETAIN, tokenizer=TOK, **FAST)
    with pytest.raises(DataError, match="not found"):
        ak.unlearn(model(), str(tmp_path / "nope.json"), RETAIN, tokenizer=TOK, **FAST)


def test_model_without_target_modules_gets_patch_error():
    cfg = ak.AlterConfig(target_modules=("c_attn",))
    with pytest.raises(ak.PatchError, match="none of the target modules"):
        ak.unlearn(model(), FORGET, RETAIN, tokenizer=TOK, alter_config=cfg, **FAST)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown method"):
        ak.unlearn(model(), FORGET, RETAIN, method="magic", tokenizer=TOK, **FAST)
    with pytest.raises(TypeError, match="unknown option"):
        ak.unlearn(model(), FORGET, RETAIN, tokenizer=TOK, learning_rate=1.0, **FAST)


@pytest.mark.filterwarnings("ignore:unlearn.alter.. every answer token")
def test_text_passages(tmp_path):
    p = tmp_path / "book.txt"
    long = " ".join(["Basil Orne lives in Lisbon and writes poetry ."] * 3)
    p.write_text(f"Ada Vale writes mystery novels .\n\n{long}\n\n\n")
    from alter_kernels.unlearn.data import prepare
    rows, ex = prepare(str(p), TOK, "forget", max_length=12)
    assert len(rows) == 2 and [len(e.input_ids) for e in ex] == [8, 12, 12, 5]     # 6+2 tokens; 27+2 -> 3 windows
    assert all(e.labels == e.input_ids for e in ex)                                 # every token a target
    res = ak.unlearn(model(), str(p), RETAIN, method="alter", tokenizer=TOK, max_steps=2, max_length=12, **FAST)
    assert len(res.history) == 2


def test_chat_template_and_prompt_masking():
    from alter_kernels.unlearn.data import prepare
    tok = toy_tokenizer(FORGET + RETAIN)
    tok.chat_template = ("{% for m in messages %}[BOS] Question : {{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} Answer :{% endif %}")
    _, ex = prepare(FORGET[:1], tok, "forget", chat_template=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": FORGET[0]["question"]}],
                                     add_generation_prompt=True, tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    e = ex[0]
    assert e.labels[:n_prompt] == [-100] * n_prompt                     # the question is masked
    answer = tok(" " + FORGET[0]["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert e.labels[n_prompt:] == answer and e.input_ids[n_prompt:] == answer
    _, plain = prepare(FORGET[:1], tok, "forget")
    assert plain[0].input_ids[0] == tok.bos_token_id and plain[0].labels[-len(answer):] == answer
    with pytest.raises(DataError, match="no chat template"):
        prepare(FORGET[:1], TOK, "forget", chat_template=True)


def test_hf_dataset_names_need_datasets():
    pytest.importorskip("scipy")
    try:
        import datasets  # noqa: F401
        pytest.skip("datasets is installed; loading needs the network")
    except ImportError:
        pass
    with pytest.raises(DataError, match="optional `datasets` package"):
        ak.unlearn(model(), "hf:locuslab/TOFU:forget10@train", RETAIN, tokenizer=TOK, **FAST)


def test_router_learns_the_labels():
    """The per-token router (ALTER_SPEC's form) learns from its cross-entropy alone. (The engine's
    default prefix-match router starts at its fitted solution: its CE is ~0 from the first step.)"""
    res = ak.unlearn(model(), FORGET, RETAIN, method="alter", tokenizer=TOK, epochs=5, batch_size=3,
                     threshold_quantile=0.5, lr_router=0.1, router_input="token", **FAST)
    ce = [m["mean_router_ce"] for m in res.metrics]
    assert all(b < a for a, b in zip(ce, ce[1:])), ce


def test_frozen_retain_expert_keeps_b0_and_trains_the_rest():
    """retain_expert="frozen": B_0 stays exactly zero (retain-routed tokens compute the base model)
    while A, the forget experts and the router train; a bad value is refused before any work."""
    res = ak.unlearn(model(), FORGET, RETAIN, method="alter", tokenizer=TOK, epochs=2, batch_size=3,
                     retain_expert="frozen", **FAST)
    params = ak.adapter_parameters(res.model)
    assert all(float(b.detach()[0].abs().max()) == 0.0 for b in params["B"])
    assert any(float(b.detach()[1:].abs().max()) > 0 for b in params["B"])
    with pytest.raises(ValueError, match="retain_expert"):          # OptionError
        ak.unlearn(model(), FORGET, RETAIN, method="alter", tokenizer=TOK, retain_expert="freeze", **FAST)
