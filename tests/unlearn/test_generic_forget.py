"""forget_loss="generic" (issue 24, docs/unlearning.md "Fluent forgetting"): the forget experts
match what the base model says about an entity it does not know (the row with its entity tokens
swapped for retain-only ones), plus a weighted IHL on the answer tokens the prompt does not state.
Checked against brute force: the KL against float64, the fused logits against materialised ones,
the cached targets against the base model run on the swapped row by hand; the swap pairs
forget-only with retain-only tokens; theta for the key-token router comes from the key tokens;
training moves the loss and leaves retain rows exactly as the base model had them."""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels.unlearn import OptionError, UnlearnError, UnlearnOptions, prepare_alter
from alter_kernels.unlearn import caches, heads
from alter_kernels.unlearn import methods as M
from alter_kernels.unlearn import objectives as obj
from alter_kernels.unlearn.data import prepare
from alter_kernels.unlearn.subdomains import entity_swap, entity_tokens
from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FORGET, RETAIN = toy_rows(6, seed=1), toy_rows(6, seed=2, offset=6)
TOK = toy_tokenizer(FORGET + RETAIN)


def test_generic_kl_equals_a_float64_brute_force():
    g = torch.Generator().manual_seed(0)
    n, k, v = 5, 4, 11
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    tgt = torch.randn(n, k, generator=g, dtype=torch.float64)
    tgt[1, -1] = -math.inf                                   # a position without its own token
    tgt[3] = -math.inf                                       # no target at all
    z = logits.gather(1, ids)
    got = obj.generic_kl(z.float(), torch.logsumexp(logits, -1).float(), ids, tgt.float())
    lq = torch.log_softmax(logits, -1).gather(1, ids)
    for i in range(n):
        ok = torch.isfinite(tgt[i])
        if not ok.any():
            assert float(got[i]) == 0.0
            continue
        p = torch.softmax(tgt[i][ok], -1)
        want = float((p * (p.log() - lq[i][ok])).sum())
        assert float(got[i]) == pytest.approx(want, rel=1e-5, abs=1e-6), i
    assert (got[[0, 2, 4]] > 0).all()


def test_fused_logits_at_equal_the_materialised_ones():
    g = torch.Generator().manual_seed(1)
    model = toy_model(len(TOK))
    head = model.get_output_embeddings()
    hidden = torch.randn(2, 6, head.weight.shape[1], generator=g)
    labels = torch.randint(0, head.weight.shape[0], (2, 6), generator=g)
    labels[0, :2] = -100
    mask = labels != -100
    ids = torch.randint(0, head.weight.shape[0], (int(mask.sum()), 5), generator=g)
    fused = heads.head_terms(model, hidden, labels)
    plain = heads.logit_terms(head(hidden), labels)
    for a, b in zip(heads.logits_at(model, fused, mask, ids), heads.logits_at(model, plain, mask, ids)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_swap_pairs_forget_only_with_retain_only_prompt_tokens_once_each():
    _, f = prepare(FORGET, TOK, "forget")
    _, r = prepare(RETAIN, TOK, "retain")
    swap = entity_swap(toy_model(len(TOK)), f, r)
    r_all = {t for ex in r for t in ex.input_ids}
    f_all = {t for ex in f for t in ex.input_ids}
    r_prompt = {t for ex in r for t, y in zip(ex.input_ids, ex.labels) if y == -100}
    assert swap and len(set(swap.values())) == len(swap)
    assert set(swap) <= {t for ex in f for t in entity_tokens(ex, r_all)}
    assert set(swap.values()) <= r_prompt - f_all


def test_cached_targets_are_the_base_model_on_the_swapped_row_mapped_back():
    model = toy_model(len(TOK))
    ak.patch(model, ak.AlterConfig(rank=4, alpha=8))
    _, f = prepare(FORGET, TOK, "forget")
    _, r = prepare(RETAIN, TOK, "retain")
    swap = entity_swap(model, f, r)
    k = 6
    cached = caches.generic_cache(model, f, 0, 4, "cpu", k, swap)
    perm = list(range(len(TOK)))
    for a, b in swap.items():
        perm[a], perm[b] = b, a
    for ex, (ids, lp, stated) in zip(f, cached):
        x = torch.tensor([[perm[t] for t in ex.input_ids]])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
        n = len(ex.input_ids)
        assert ids.shape == (n, k + 1) and bool(torch.isinf(lp[-1, -1]))
        for t in range(n - 1):
            nxt = ex.input_ids[t + 1]
            assert int(ids[t, -1]) == nxt
            want = ref[t][torch.tensor(perm)]                 # the swapped row's prediction, mapped back
            assert float(lp[t, -1]) == pytest.approx(float(want[nxt]), abs=1e-4)
            others = want.clone()
            others[nxt] = -math.inf
            torch.testing.assert_close(lp[t, :-1].double(), others.topk(k).values, rtol=0, atol=1e-4)
            prompt = {tok for tok, y in zip(ex.input_ids, ex.labels) if y == -100}
            assert bool(stated[t]) == (nxt in prompt)
    # the swap is what changes the target: without it the cache is the base model on the row itself
    plain = caches.generic_cache(model, f, 0, 4, "cpu", k, {})
    assert not all(torch.allclose(a[1][:-1], b[1][:-1]) for a, b in zip(plain, cached))


def test_key_token_theta_comes_from_the_key_tokens():
    model = toy_model(len(TOK))
    d = prepare_alter(model, FORGET, RETAIN, TOK, batch_size=2, router_input="key_tokens", forget_loss="generic",
                      retain_expert="frozen", threshold_quantile=0.5)
    sel = caches.key_token_positions(d.forget, d.retain, [d.pad_id])
    assert sum(int(m.sum()) for m in sel) > 0
    want = caches.quantile_threshold(d.forget, d.forget_cache[0], 0.5, sel)
    answer = caches.quantile_threshold(d.forget + d.retain, d.forget_cache[0] + d.retain_cache[0], 0.5)
    assert d.config.threshold == pytest.approx(want) and want != pytest.approx(answer)


def _train(method="alter", steps=12, fused="auto", lr=3e-2, **hp):
    torch.manual_seed(0)
    model = toy_model(len(TOK))
    ak.finetune(model, FORGET + RETAIN, TOK, epochs=20, lr=3e-3, progress=False)
    base = [model(input_ids=torch.tensor([ex])).logits for ex in _retain_ids()]
    recs = []
    kw = dict(threshold_quantile=0.5) if method == "alter" else {}
    kw.update(hp)
    ak.unlearn(model, FORGET, RETAIN, method=method, tokenizer=TOK, max_steps=steps, batch_size=4, seed=0,
               progress=False, eval_each_epoch=False, router_eval=False, forget_loss="generic", retain_expert="frozen",
               router_input="key_tokens", lr_B=lr, lr_A=lr, fused_loss=fused, callback=recs.append, **kw)
    return model, base, recs


def _retain_ids():
    _, r = prepare(RETAIN, TOK, "retain")
    return [ex.input_ids for ex in r]


@pytest.mark.parametrize("method", ["alter", "asymlora"])
def test_training_lowers_the_generic_loss_and_leaves_retain_rows_as_the_base_model(method):
    model, base, recs = _train(method)
    assert all("generic" in h and "ihl" not in h for h in recs)
    first, last = recs[0]["generic"], min(h["generic"] for h in recs[-4:])
    assert last < first
    model.eval()
    # retain rows hold no key token and B_0 stays zero: the base model's logits exactly
    for ids, want in zip(_retain_ids(), base):
        torch.testing.assert_close(model(input_ids=torch.tensor([ids])).logits, want, rtol=0, atol=1e-5)


def test_key_token_routing_accuracy_counts_rows():
    """With key_tokens only the entity's tokens route, so the held-out figure is per row: every
    forget row has a key token, no retain row has one."""
    model = toy_model(len(TOK))
    r = ak.unlearn(model, FORGET, RETAIN, method="asymlora", tokenizer=TOK, epochs=1, batch_size=4, seed=0,
                   progress=False, eval_each_epoch=True, router_eval=True, router_input="key_tokens",
                   retain_expert="frozen", forget_loss="generic")
    ra = r.router_accuracy
    assert ra["forget"] == 1.0 and ra["retain"] == 1.0
    assert ra["tokens"]["forget"] <= len(FORGET)           # rows, not tokens


def test_fused_and_materialised_generic_losses_train_alike():
    _, _, fused = _train("asymlora", steps=8, lr=1e-3)
    _, _, plain = _train("asymlora", steps=8, fused="off", lr=1e-3)
    assert fused[-1]["generic"] != pytest.approx(fused[0]["generic"], rel=1e-3)     # it trained
    for a, b in zip(fused, plain):
        assert a["generic"] == pytest.approx(b["generic"], rel=1e-4, abs=1e-5)


def test_options_refuse_what_the_generic_loss_cannot_do():
    with pytest.raises(OptionError, match="forget_loss"):
        UnlearnOptions(forget_loss="refusal")
    with pytest.raises(OptionError, match="ihl_until"):
        UnlearnOptions(forget_loss="generic", ihl_until="not_top")
    with pytest.raises(OptionError, match="forget_ihl"):
        UnlearnOptions(forget_ihl=-1.0)
    with pytest.raises(OptionError, match="forget_loss.*alter, asymlora.*'graddiff'"):
        ak.unlearn(toy_model(len(TOK)), FORGET, RETAIN, method="graddiff", tokenizer=TOK, max_steps=1,
                   progress=False, forget_loss="generic")
    model = toy_model(len(TOK))
    d = prepare_alter(model, FORGET, RETAIN, TOK, batch_size=2)
    with pytest.raises(UnlearnError, match="generic targets"):
        M.alter_loss(model, d.batch([0, 1], [0]), UnlearnOptions(forget_loss="generic"))


def test_degenerate_routing_warning_reads_the_key_tokens_for_the_key_token_router():
    """The key-token router sends only the entity's tokens to a forget expert and theta is chosen
    from them: the warning judges those, not the answer tokens (all low here, which would say
    'ALTER degrades into AsymLoRA' while the key tokens straddle theta)."""
    import warnings
    from types import SimpleNamespace

    from alter_kernels.unlearn.data import Example
    from alter_kernels.unlearn.evaluation import warn_degenerate_routing
    # prompt [1, 7, 8 | answer 3, 4]; 7 and 8 occur in no retain row: the key tokens
    forget = [Example([1, 7, 8, 3, 4], [-100, -100, -100, 3, 4])]
    retain = [Example([1, 2, 3, 4], [-100, -100, 3, 4])]
    ents = [torch.tensor([0.1, 0.5, 2.0, 0.2, 0.1])]         # key tokens 0.5 (low) and 2.0 (high) at theta 1
    history = [{"high_entropy_share": 0.0}]                   # every answer token low
    data = SimpleNamespace(forget=forget, retain=retain, forget_cache=(ents,), pad_id=0)

    def run(router, theta):
        return SimpleNamespace(cfg=SimpleNamespace(router_input=router, threshold=theta, q_route=1.5), data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_degenerate_routing(run("key_tokens", 1.0), history)        # straddles: no warning
    with pytest.warns(UserWarning, match="every entity \\(key\\) token was low-entropy"):
        warn_degenerate_routing(run("key_tokens", 3.0), history)
    with pytest.warns(UserWarning, match="every entity \\(key\\) token was high-entropy"):
        warn_degenerate_routing(run("key_tokens", 0.3), history)
    with pytest.warns(UserWarning, match="every answer token was low-entropy"):   # other routers: the answer tokens
        warn_degenerate_routing(run("prefix_match", 1.0), history)
