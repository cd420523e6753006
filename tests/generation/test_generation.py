"""Gated decoding (alter_kernels.generation): ak.generate and HF generate with ak.gated_decoding."""
from __future__ import annotations

import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels.generation import prompt_entropy, sample_next_token
from alter_kernels.model.hf import position_ids_from_mask

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tiny_llama import VOCAB, left_pad, patched_model, prompts, tiny_llama  # noqa: E402,F401  (tests/tiny_llama.py)


# --------------------------------------------------------------------------- zero B == base model
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("entropy", ["base", "self", "none"])
def test_zero_b_equals_base_model(fast, entropy):
    base = tiny_llama(3)
    ids = prompts()
    with torch.no_grad():
        want = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    plain = ak.generate(base, ids, 12)                         # unpatched model through the fast loop
    assert torch.equal(plain, want)
    m = patched_model(3, zero_b=True)
    ak.set_inference_entropy(m, entropy)
    out = ak.generate(m, ids, 12, fast=fast, return_dict=True)
    assert out.inference_entropy == entropy
    assert torch.equal(out.sequences, want)
    if entropy != "none":   # the routing did run on both sides of theta (so the test would see a wrong path),
        # in the decode steps and in the prompt alike
        assert 0.0 < out.high_fraction < 1.0
        assert 0.0 < float((out.prompt_entropy[:, 1:] > ak.get_state(m).config.threshold).float().mean()) < 1.0
    with torch.no_grad():    # HF generate with nothing but the patched model
        hf = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                        pad_token_id=0, eos_token_id=None)
    assert torch.equal(hf, want)


def test_adapters_change_generation():
    """Sanity check that the tests below can fail: random B experts change the tokens."""
    ids = prompts()
    m = patched_model(4)
    gated = ak.generate(m, ids, 12)
    with ak.disable_adapters(m):
        with torch.no_grad():
            base = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    assert not torch.equal(gated, base)


# --------------------------------------------------------------------------- step-by-step == full forward
@pytest.mark.parametrize("fast,top_k,native,entropy", [
    (True, 3, None, "base"), (True, 3, False, "base"), (False, 3, None, "base"), (True, 1, None, "base"),
    (True, 1, False, "base"), (True, 3, None, "self"), (True, 3, False, "self"), (False, 3, None, "self"),
    (True, 1, None, "self")])
def test_step_routing_equals_full_forward(fast, top_k, native, entropy):
    """Scoring a sequence and generating it route every token the same way."""
    m = patched_model(1, top_k=top_k, num_forget=3 if top_k == 1 else 2)
    ak.set_inference_entropy(m, entropy)
    ids, mask = left_pad([[5, 17, 33, 9, 41, 60], [8, 70, 12]])
    out = ak.generate(m, ids, 10, attention_mask=mask, fast=fast, native=native, record_plans=True,
                      return_dict=True)
    seq = out.sequences
    n = out.entropy.shape[1]
    # routing entropies of the finished sequence: prompt ones + the entropies that produced each token
    ent = torch.cat([out.prompt_entropy, out.entropy[:, :n - 1]], dim=1)
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], n - 1, dtype=mask.dtype)], dim=1)
    x = seq[:, :-1]
    q = ak.get_state(m).config.q_route
    bsz, t_prompt = ids.shape
    real = full_mask.bool()
    if entropy == "base":
        # a plain teacher-forced forward (no routing inputs: the model's own rule) routes as decoding did
        with torch.no_grad():
            logits = m(input_ids=x, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)).logits
        base_e = ak.token_entropy(m, seq, torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1))
        torch.testing.assert_close(out.entropy, base_e[:, t_prompt:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ent[real], base_e[:, :-1][real], rtol=1e-4, atol=1e-4)
    else:
        with torch.no_grad(), ak.routing_inputs(m, entropy=ent):
            logits = m(input_ids=x, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)).logits
        # the entropies recorded during decoding are those of the full forward's raw logits
        full_ent = ak.tsallis_entropy(logits, q)
        torch.testing.assert_close(out.entropy, full_ent[:, t_prompt - 1:], rtol=1e-4, atol=1e-4)
    plans = ak.last_plans(m)
    theta = ak.get_state(m).config.threshold
    hi = ~(ent <= theta)
    assert 0 < hi[real].float().mean() < 1, "routing must see both branches"
    for layer, plan in plans.items():
        w_full = plan.expert_weights.view(bsz, x.shape[1], -1)
        assert torch.equal(plan.high.view(bsz, -1), hi)
        # prefill forward: prompt positions
        w_pre = out.plans[0][layer].view(bsz, t_prompt, -1)
        torch.testing.assert_close(w_pre[real[:, :t_prompt]], w_full[:, :t_prompt][real[:, :t_prompt]],
                                   rtol=1e-4, atol=1e-5)
        # decode steps: one token per row each
        for s in range(1, n):
            w_step = out.plans[s][layer].view(bsz, -1)
            torch.testing.assert_close(w_step, w_full[:, t_prompt + s - 1], rtol=1e-4, atol=1e-5)
    # and the generated tokens are the greedy choices of the full forward
    assert torch.equal(logits[:, t_prompt - 1:].argmax(-1), seq[:, t_prompt:])


# --------------------------------------------------------------------------- padded batch == rows alone
@pytest.mark.parametrize("prefill,entropy", [("base", "base"), ("high", "base"), ("base", "self"),
                                             ("high", "self")])
def test_left_padded_batch_equals_rows_alone(prefill, entropy):
    m = patched_model(2)
    ak.set_inference_entropy(m, entropy)
    rows = [[5, 17, 33, 9, 41, 60, 22, 13], [8, 70, 12], [44, 3, 91, 16, 29]]
    ids, mask = left_pad(rows)
    batch = ak.generate(m, ids, 10, attention_mask=mask, prefill=prefill, return_dict=True)
    for i, r in enumerate(rows):
        alone = ak.generate(m, torch.tensor([r]), 10, prefill=prefill, return_dict=True)
        assert torch.equal(batch.sequences[i, ids.shape[1]:], alone.sequences[0, len(r):]), i
        torch.testing.assert_close(batch.entropy[i], alone.entropy[0], rtol=1e-4, atol=1e-5)
        if prefill == "base":
            pe = batch.prompt_entropy[i, ids.shape[1] - len(r):]
            torch.testing.assert_close(pe, alone.prompt_entropy[0], rtol=1e-4, atol=1e-5)
            assert torch.isinf(batch.prompt_entropy[i, :ids.shape[1] - len(r) + 1]).all()


def test_prompt_entropy_modes_differ_and_base_matches_token_entropy():
    m = patched_model(2)
    ids = prompts(2, 9)
    pe = prompt_entropy(m, ids)
    torch.testing.assert_close(pe, ak.token_entropy(m, ids))
    a = ak.generate(m, ids, 8, prefill="base")
    b = ak.generate(m, ids, 8, prefill="high")
    c = ak.generate(m, ids, 8, prefill=pe)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)          # the prefill routing matters for this model


# --------------------------------------------------------------------------- HF generate == ak.generate
@pytest.mark.parametrize("prefill,entropy", [("base", "base"), ("high", "base"), ("base", "self"),
                                             ("high", "self"), ("high", "none")])
def test_hf_generate_agrees_with_ak_generate(prefill, entropy):
    m = patched_model(6)
    ids, mask = left_pad([[5, 17, 33, 9, 41, 60], [8, 70, 12], [44, 3, 91, 16, 29]])
    ours = ak.generate(m, ids, 10, attention_mask=mask, prefill=prefill, entropy=entropy, return_dict=True)
    slow = ak.generate(m, ids, 10, attention_mask=mask, prefill=prefill, entropy=entropy, fast=False)
    assert torch.equal(ours.sequences, slow)
    with ak.gated_decoding(m, prefill=prefill, entropy=entropy) as gd:
        hf = m.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                        eos_token_id=None)
    assert torch.equal(hf, ours.sequences)
    if entropy != "none":       # "none": no entropy is computed at all
        torch.testing.assert_close(torch.cat(gd.step_entropies, 1), ours.entropy, rtol=1e-4, atol=1e-5)
    assert ak.get_state(m).entropy is None          # routing inputs restored


def test_hf_routes_with_raw_logits_not_processed_scores():
    """Temperature / top-k and a repetition penalty change the scores HF samples from; routing must
    still use S_q of the model's raw logits."""
    m = patched_model(7)
    ids = prompts(2, 6)
    torch.manual_seed(0)
    with ak.gated_decoding(m, entropy="self") as gd:
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=True,
                         temperature=0.5, top_k=5, repetition_penalty=1.5, pad_token_id=0, eos_token_id=None,
                         output_logits=True, return_dict_in_generate=True)
    raw = torch.stack(out.logits, 1)                      # [B, n, V] raw logits of each step
    want = ak.tsallis_entropy(raw, ak.get_state(m).config.q_route)
    torch.testing.assert_close(torch.cat(gd.step_entropies, 1), want, rtol=1e-5, atol=1e-6)
    # and these routed the decode steps: replay the finished sequence with them through ak.generate's
    # step-by-step equivalence: a full forward with those entropies predicts the same raw logits
    seq = out.sequences
    n = raw.shape[1]
    ent = torch.cat([gd.prompt_entropy, want[:, :n - 1]], 1)
    with torch.no_grad(), ak.routing_inputs(m, entropy=ent):
        full = m(seq[:, :-1]).logits
    torch.testing.assert_close(full[:, ids.shape[1] - 1:], raw, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- sampling, eos
def test_sampling_seeded_and_topk1_is_greedy():
    m = patched_model(8)
    ids = prompts(2, 5)
    g1 = torch.Generator().manual_seed(123)
    g2 = torch.Generator().manual_seed(123)
    a = ak.generate(m, ids, 10, do_sample=True, temperature=0.8, top_p=0.9, generator=g1)
    b = ak.generate(m, ids, 10, do_sample=True, temperature=0.8, top_p=0.9, generator=g2)
    assert torch.equal(a, b)
    greedy = ak.generate(m, ids, 10)
    k1 = ak.generate(m, ids, 10, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(k1, greedy)
    tiny_p = ak.generate(m, ids, 10, do_sample=True, top_p=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tiny_p, greedy)


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = sample_next_token(logits, True, top_k=2, generator=g)
        assert t[0] in (2, 3) and t[1] in (0, 1)
        # softmax([0,1,2,3]) = [.03,.09,.24,.64]: top_p 0.7 keeps {3, 2}
        t = sample_next_token(logits, True, top_p=0.7, generator=g)
        assert t[0] in (2, 3) and t[1] in (0, 1)


def test_eos_stops_and_pads():
    m = patched_model(9)
    ids = prompts(3, 5)
    free = ak.generate(m, ids, 12)
    eos = int(free[0, 5 + 2])            # row 0 emits this token at its third step
    out = ak.generate(m, ids, 12, eos_token_id=eos, pad_token_id=0)
    gen = out[:, 5:]
    for i in range(3):
        row = free[i, 5:]
        hit = (row == eos).nonzero()
        if len(hit):
            k = int(hit[0])
            assert torch.equal(gen[i, :k + 1], row[:k + 1])
            assert (gen[i, k + 1:] == 0).all()
        else:
            assert torch.equal(gen[i], row[:gen.shape[1]])
    stop_all = ak.generate(m, ids[:1], 12, eos_token_id=eos)
    assert stop_all.shape[1] == 5 + 3 and int(stop_all[0, -1]) == eos


def test_bad_inputs():
    m = patched_model(0)
    ids = prompts(2, 4)
    with pytest.raises(ValueError, match="left"):
        ak.generate(m, ids, 3, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="prefill"):
        ak.generate(m, ids, 3, prefill="nope")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        ak.generate(m, ids, 3, prefill=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="input_ids"):
        ak.generate(m, ids.float(), 3)
    with pytest.raises(ValueError, match="temperature"):
        ak.generate(m, ids, 3, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="not patched"):
        ak.gated_decoding(tiny_llama(0))


def test_fast_path_restores_model():
    """generate's fast path swaps decode-shaped forwards in and must put the model back: the same
    routed forward gives the same logits before and after a generate call."""
    m = patched_model(0)
    ids = prompts(1, 4)
    lin = ak.get_state(m).replaced[0][1]

    def routed_logits():
        with torch.no_grad(), ak.routing_inputs(m, entropy=torch.full((1, 4), math.inf)):
            return m(ids).logits

    before = routed_logits()
    ak.generate(m, ids, 3)
    assert "forward" not in lin.__dict__
    after = routed_logits()
    assert torch.equal(before, after), f"logits changed by generate: max diff {(after - before).abs().max():.3g}"


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("entropy", ["base", "self"])
def test_bf16_generation_matches_a_teacher_forced_bf16_forward(fast, entropy):
    """bf16 model and adapter: each generated token is the greedy choice (up to a bf16 near-tie) of a
    plain teacher-forced bf16 forward of the finished sequence routed by the recorded entropies, and
    the recorded entropies are that forward's ("self") or the base model's ("base") within bf16
    tolerance. (Measured here: gap <= 1 bf16 ulp, entropy error ~1e-3; a fast path that drops the
    adapter gives gaps of ~4 and entropy errors of ~0.08.)"""
    m = patched_model(0)
    m.to(torch.bfloat16)
    ak.set_inference_entropy(m, entropy)
    ids = prompts(2, 5)
    t_prompt = ids.shape[1]
    out = ak.generate(m, ids, 8, fast=fast, return_dict=True)
    seq, n = out.sequences, out.entropy.shape[1]
    assert seq.shape == (2, t_prompt + 8) and n == 8
    assert 0.0 < out.high_fraction < 1.0              # both routing branches ran in the decode steps
    ent = torch.cat([out.prompt_entropy, out.entropy[:, :n - 1]], dim=1)
    with torch.no_grad(), ak.routing_inputs(m, entropy=ent):
        logits = m(seq[:, :-1]).logits.float()[:, t_prompt - 1:]          # [B, n, V], the reference path
    chosen = logits.gather(-1, seq[:, t_prompt:, None])[..., 0]
    gap = logits.max(-1).values - chosen
    assert float(gap.max()) <= 0.05, f"generated tokens are not the reference's greedy choices: gaps {gap}"
    if entropy == "self":
        want = ak.tsallis_entropy(logits, ak.get_state(m).config.q_route)
    else:
        want = ak.token_entropy(m, seq)[:, t_prompt:]    # base S_q of the distribution before each token
    torch.testing.assert_close(out.entropy, want.float(), rtol=0, atol=1e-2)


# --------------------------------------------------------------------------- native decode ops
def _native(name):
    from alter_kernels import kernels
    op = kernels.native_op(name)
    if op is None:
        pytest.skip(f"extension without {name} (build with `python setup.py build_ext --inplace`)")
    return op


@pytest.mark.parametrize("n,e,top_k", [(0, 3, 3), (1, 1, 3), (3, 3, 3), (5, 4, 2), (7, 5, 1), (4, 3, 0)])
def test_native_decode_route_matches_reference(n, e, top_k):
    from alter_kernels.kernels.reference.routing import route_ref
    op = _native("decode_route")
    g = torch.Generator().manual_seed(n * 10 + e)
    h = torch.randn(n, 19, generator=g)
    wg = torch.randn(19, e, generator=g)
    ent = torch.rand(n, generator=g) * 2
    if n >= 3:
        ent[0], ent[1] = math.inf, float("nan")
    want = route_ref(h, wg, ent, 1.0, 0.8, 0.01, top_k).expert_weights
    got = op(h, wg, ent, 1.0, 0.8, 0.01, top_k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # ties (zero router): low rows go to expert 0 like argmax; bf16 hidden states accepted. (Ties
    # inside a partial top-k selection are broken by the lowest index here; torch.topk's order
    # for ties is unspecified, so that case is compared only where every forget expert is chosen.)
    if top_k == 0 or top_k >= e - 1:
        z = torch.zeros(19, e)
        torch.testing.assert_close(op(h.bfloat16(), z, ent, 1.0, 0.8, 0.01, top_k),
                                   route_ref(h.bfloat16(), z, ent, 1.0, 0.8, 0.01, top_k).expert_weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d_in,d_outs,r,e,bias", [(1, 13, [7, 5, 5], 3, 3, False), (4, 8, [11], 1, 2, True),
                                                     (0, 6, [4, 4], 2, 3, True), (3, 17, [9, 3], 4, 1, False),
                                                     (2, 40, [33, 6], 2, 3, True), (5, 21, [9], 2, 2, False)])
def test_native_decode_group_linear_matches_reference(dtype, n, d_in, d_outs, r, e, bias):
    from alter_kernels.kernels.reference.asym_lora import asym_lora_ref
    op = _native("decode_group_linear")
    g = torch.Generator().manual_seed(n + d_in)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    w = torch.rand(n, e, generator=g, dtype=torch.float64)
    w[w < 0.3] = 0
    scale = 1.7
    Ws, bs, As, Bs = [], [], [], []
    for d_out in d_outs:
        Ws.append(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
        bs.append(torch.randn(d_out, generator=g, dtype=torch.float64) if bias else None)
        As.append(torch.randn(r, d_in, generator=g, dtype=torch.float64))
        Bs.append(torch.randn(e, d_out, r, generator=g, dtype=torch.float64))
    got = op(x.to(dtype), [W.to(dtype) for W in Ws], [b.to(dtype) if b is not None else None for b in bs],
             torch.cat(As).to(dtype), [(B * scale).permute(0, 2, 1).contiguous().to(dtype) for B in Bs], w.float())
    for k in range(len(d_outs)):
        truth = asym_lora_ref(x, Ws[k], As[k], Bs[k], w.float().double(), scale, bias=bs[k])
        same = asym_lora_ref(x.to(dtype), Ws[k].to(dtype), As[k].to(dtype), Bs[k].to(dtype), w.float(), scale,
                             bias=bs[k].to(dtype) if bias else None)
        assert got[k].dtype == dtype and got[k].shape == (n, d_outs[k])
        err = (got[k].double() - truth).abs()
        ref_err = (same.double() - truth).abs()
        assert bool((err <= ref_err + (1e-5 if dtype == torch.float32 else 1e-12)).all())


def test_native_decode_ops_bad_input():
    op = _native("decode_group_linear")
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="weights\\[0\\] must be"):
        op(x, [torch.randn(3, 5)], [None], torch.randn(2, 4), [torch.randn(2, 2, 3)], torch.rand(2, 2))
    with pytest.raises(RuntimeError, match="b_t\\[0\\] must be"):
        op(x, [torch.randn(3, 4)], [None], torch.randn(2, 4), [torch.randn(2, 3, 3)], torch.rand(2, 2))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(x.bfloat16(), [torch.randn(3, 4)], [None], torch.randn(2, 4), [torch.randn(2, 2, 3)], torch.rand(2, 2))
    route = _native("decode_route")
    with pytest.raises(RuntimeError, match="entropy must be"):
        route(x, torch.randn(4, 3), torch.rand(3), 1.0, 0.8, 0.01, 2)


@pytest.mark.parametrize("native", [True, False])
def test_native_and_python_fast_paths_agree(native):
    if native:
        _native("decode_group_linear")
    m = patched_model(11, layers=2)
    ids, mask = left_pad([[5, 17, 33, 9, 41, 60], [8, 70, 12]])
    want = ak.generate(m, ids, 10, attention_mask=mask, fast=False, return_dict=True)
    got = ak.generate(m, ids, 10, attention_mask=mask, native=native, return_dict=True)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the decode path's routing rule and hook
@pytest.mark.parametrize("n,e,top_k", [(1, 1, 3), (5, 3, 3), (7, 4, 2), (6, 5, 1), (4, 3, 0), (9, 4, 7), (0, 3, 2)])
def test_python_decode_routing_rule_matches_reference(n, e, top_k):
    """The decode path's Python rule (generation/routing.py) is route_ref's, NaN / +-inf / theta included."""
    from alter_kernels.generation.routing import route_weights
    from alter_kernels.kernels.reference.routing import route_ref
    g = torch.Generator().manual_seed(100 * n + 10 * e + top_k)
    h = torch.randn(n, 19, generator=g)
    wg = torch.randn(19, e, generator=g)
    ent = torch.rand(n, generator=g) * 2
    for i, v in enumerate((math.inf, float("nan"), -math.inf, 1.0)):     # 1.0 == theta: low
        if i < n:
            ent[i] = v
    want = route_ref(h, wg, ent, 1.0, 0.8, 0.01, top_k).expert_weights
    got = route_weights(h, wg, ent, 1.0, 0.8, 0.01, top_k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if n >= 3:
        assert bool((got[:2, 0] == 1).all()) and int((got[2] != 0).sum()) == 1     # inf/NaN high, -inf low


def test_decode_hook_is_installed_through_the_model_state():
    """install_decode_hook routes every layer through the hook and every AlterLinear through its forward,
    leaves the layers' own pre-hooks alone, refuses a second hook and restores the model on remove()."""
    from alter_kernels.model.state import install_decode_hook
    m = patched_model(0)
    st = ak.get_state(m)
    ids = prompts(1, 4)
    pre_hooks = {p: dict(m.get_submodule(p)._forward_pre_hooks) for p in st.routers}
    seen = []

    class Probe:                      # adapters off through the hook: the model computes the base model
        def route_layer(self, router, hidden):
            seen.append((router.layer_name, tuple(hidden.shape)))

        def linear_forward(self, alin):
            base = alin.base_layer
            return lambda x, plan=None: base(x)

    handle = install_decode_hook(m, Probe())
    with pytest.raises(RuntimeError, match="already installed"):
        install_decode_hook(m, Probe())
    with torch.no_grad():
        hooked = m(ids).logits
        with ak.disable_adapters(m):
            base = m(ids).logits
    assert torch.equal(hooked, base)
    assert [s[0] for s in seen] == st.routers and all(s[1] == (1, 4, 32) for s in seen)
    assert {p: dict(m.get_submodule(p)._forward_pre_hooks) for p in st.routers} == pre_hooks
    handle.remove()
    assert st.decode_hook is None and all("forward" not in alin.__dict__ for _, alin in st.replaced)
    with torch.no_grad():
        assert not torch.equal(m(ids).logits, base)          # the generic adapter path is back
