"""ak.asym_lora backends against a float64 ground truth (spec 10), forward and backward; the
truth is written independently of the reference (tests/kernels/truth.py).

Criterion: |kernel - truth| <= |reference_same_dtype - truth| + tol, elementwise, for y and the
gradients of x, A, B and the expert weights. Every backend this machine runs is forced with
ak.use_backend; Triton runs interpreted (TRITON_INTERPRET=1, see conftest) at tiny shapes only.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

import alter_kernels as ak
from alter_kernels import kernels
from alter_kernels.kernels.reference.asym_lora import asym_lora_ref
from alter_kernels.kernels.reference.routing import route_ref
import truth as T  # noqa: E402

CPU = torch.device("cpu")
FAST = [b for b in kernels.available("asym_lora", CPU) if b not in ("reference", "triton")]
TRITON = "triton" in kernels.available("asym_lora", CPU)
ALL = FAST + (["triton"] if TRITON else [])


def make_case(n, d_in, d_out, r, E, routing="mixed", dtype=torch.float32, adapter_dtype=torch.float32,
              bias=True, masks=True, w_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g).to(dtype)
    W = (torch.randn(d_out, d_in, generator=g) / d_in ** 0.5).to(dtype)
    A = (torch.randn(r, d_in, generator=g) / d_in ** 0.5).to(adapter_dtype)
    B = torch.randn(E, d_out, r, generator=g).to(adapter_dtype)
    b = torch.randn(d_out, generator=g).to(dtype) if bias else None
    hidden = torch.randn(n, 16, generator=g)
    router = torch.randn(16, E, generator=g)
    ent = {"low": torch.zeros(n), "high": torch.full((n,), float("inf")),
           "mixed": torch.rand(n, generator=g) * 2.4}[routing]
    labels = torch.randint(-1, E, (n,), generator=g)
    plan = route_ref(hidden, router, ent, 1.2, 0.8, 0.01, 3, labels if masks else None)
    w = plan.expert_weights.clone()
    return dict(x=x, weight=W, A=A, B=B, expert_weights=w, scale=2.0, a_grad_mask=plan.a_grad_mask,
                b_grad_mask=plan.b_grad_mask, bias=b, w_grad=w_grad)


GRAD_NAMES = ("x", "A", "B", "expert_weights")


def run(fn, case, cast=None, seed=1):
    """y and the gradients of x, A, B, expert_weights (those that require grad) for a fixed dy."""
    t = {}
    for k in ("x", "weight", "A", "B", "expert_weights", "bias"):
        v = case[k]
        if v is not None and cast is not None:
            v = v.to(cast)
        if v is not None and k in GRAD_NAMES and (k != "expert_weights" or case["w_grad"]):
            v = v.detach().requires_grad_(True)
        t[k] = v
    y = fn(t["x"], t["weight"], t["A"], t["B"], t["expert_weights"], case["scale"], case["a_grad_mask"],
           case["b_grad_mask"], t["bias"])
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(device=y.device, dtype=y.dtype)
    wrt = [k for k in GRAD_NAMES if t[k].requires_grad]
    grads = torch.autograd.grad(y, [t[k] for k in wrt], gy, allow_unused=True) if y.numel() else \
        [torch.zeros_like(t[k]) for k in wrt]
    out = {"y": y.detach()}
    out.update({k: (gr if gr is not None else torch.zeros_like(t[k])).detach() for k, gr in zip(wrt, grads)})
    return out


def tol_for(dtype):
    return {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}[dtype]


def check(backend, case, out_dtype_tol=None):
    truth = run(T.asym_lora, case, cast=torch.float64)   # tests/kernels/truth.py, not the reference
    same = run(asym_lora_ref, case)
    with ak.use_backend(backend):
        got = run(ak.asym_lora, case)
    for k, tv in truth.items():
        gv, sv = got[k], same[k]
        assert gv.shape == tv.shape, (k, gv.shape, tv.shape)
        assert gv.dtype == sv.dtype and gv.device == tv.device, (k, gv.dtype, sv.dtype, gv.device)
        tol = (out_dtype_tol or tol_for(sv.dtype)) * (1.0 + tv.abs().max().item() if tv.numel() else 1.0)
        err = (gv.double() - tv).abs()
        bound = (sv.double() - tv).abs() + tol
        assert bool((err <= bound).all()), (
            f"{backend} {k}: max err {err.max().item():.3g}, same-dtype reference err "
            f"{(sv.double() - tv).abs().max().item():.3g}, tol {tol:.3g}")
    return got


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("E,r", list(itertools.product([1, 2, 5, 9], [1, 8, 16])))
@pytest.mark.parametrize("routing", ["low", "high", "mixed"])
def test_against_truth(backend, E, r, routing):
    check(backend, make_case(23, 37, 19, r, E, routing=routing, seed=E * 100 + r))


@pytest.mark.skipif(not TRITON, reason="triton not available")
@pytest.mark.parametrize("E,r,routing", [(1, 1, "mixed"), (2, 8, "low"), (5, 8, "mixed"), (9, 16, "high"),
                                          (5, 16, "mixed")])
def test_triton_against_truth(E, r, routing):
    check("triton", make_case(9, 21, 11, r, E, routing=routing, seed=E * 10 + r))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("n", [0, 1])
def test_tiny_token_counts(backend, n):
    check(backend, make_case(n, 13, 7, 8, 5))


@pytest.mark.parametrize("backend", ALL)
def test_no_masks_no_bias_frozen_weights(backend):
    check(backend, make_case(11, 13, 7, 8, 5, masks=False, bias=False, w_grad=False))


@pytest.mark.parametrize("backend", ALL)
def test_empty_masks_give_zero_adapter_grads(backend):
    case = make_case(10, 13, 9, 4, 3)
    case["a_grad_mask"] = torch.zeros(10, dtype=torch.bool)
    case["b_grad_mask"] = torch.zeros(10, 3, dtype=torch.bool)
    got = check(backend, case)
    assert bool((got["A"] == 0).all()) and bool((got["B"] == 0).all())
    assert got["x"].abs().sum() > 0   # dx flows from every row


@pytest.mark.parametrize("backend", ALL)
def test_masked_rows_do_not_reach_parameters(backend):
    """Changing dy on rows outside the masks changes dx but leaves dA / dB_e untouched."""
    n, E = 12, 3
    case = make_case(n, 13, 9, 4, E)
    am = torch.zeros(n, dtype=torch.bool)
    am[:5] = True
    bm = torch.zeros(n, E, dtype=torch.bool)
    bm[5:8, 1] = True
    bm[8:, 2] = True
    case["a_grad_mask"], case["b_grad_mask"] = am, bm
    grads = []
    for scale_rows in (1.0, 3.0):
        x = case["x"].clone().requires_grad_(True)
        A = case["A"].clone().requires_grad_(True)
        B = case["B"].clone().requires_grad_(True)
        with ak.use_backend(backend):
            y = ak.asym_lora(x, case["weight"], A, B, case["expert_weights"], 2.0, am, bm, case["bias"])
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        gy[~am] *= scale_rows           # rows 5.. are outside a_grad_mask
        gy[:5] *= 1.0
        y.backward(gy)
        grads.append((x.grad, A.grad, B.grad))
    (x1, A1, B1), (x2, A2, B2) = grads
    torch.testing.assert_close(A1, A2, rtol=0, atol=0)          # A sees only rows 0..4
    assert not torch.allclose(x1, x2)                              # dx sees every row
    assert bool((B1[0] == 0).all())                                # no row may update B_0
    assert not torch.allclose(B1[1], B2[1])                        # B_1 rows 5..7 were rescaled
    # B_e from exactly its rows: compare with the unmasked gradient restricted to those rows
    for e, rows in ((1, slice(5, 8)), (2, slice(8, n))):
        x = case["x"][rows]
        with ak.use_backend(backend):
            Bf = case["B"].clone().requires_grad_(True)
            y = ak.asym_lora(x, case["weight"], case["A"], Bf, case["expert_weights"][rows], 2.0, None, None,
                             case["bias"])
            gy = torch.randn((n,) + y.shape[1:], generator=torch.Generator().manual_seed(3))
            gy[~am] *= 1.0
            y.backward(gy[rows])
        torch.testing.assert_close(B1[e], Bf.grad[e], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("adapter_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [5, 13])   # 5: the C++ per-token gather path, 13: the cat GEMM
def test_bf16(backend, adapter_dtype, n):
    if backend == "triton" and n == 13:
        pytest.skip("interpreted Triton: one small shape is enough")
    case = make_case(n, 37, 19, 8, 5, dtype=torch.bfloat16, adapter_dtype=adapter_dtype)
    check(backend, case)


@pytest.mark.parametrize("backend", FAST)
def test_float64(backend):
    check(backend, make_case(9, 17, 11, 3, 4, dtype=torch.float64, adapter_dtype=torch.float64))


@pytest.mark.parametrize("backend", ALL)
def test_base_weight_and_bias_grads_when_trainable(backend):
    case = make_case(7, 13, 9, 4, 3)
    outs = []
    for be in ("reference", backend):
        W = case["weight"].clone().requires_grad_(True)
        b = case["bias"].clone().requires_grad_(True)
        with ak.use_backend(be):
            y = ak.asym_lora(case["x"], W, case["A"], case["B"], case["expert_weights"], 2.0,
                             case["a_grad_mask"], case["b_grad_mask"], b)
        y.square().sum().backward()
        outs.append((W.grad, b.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_saves_no_wide_tensors(backend):
    """Autograd keeps x, the parameters, the plan and u [N, r]; nothing [N, d_out] or [N, E*r]."""
    n, d_in, d_out, r, E = 31, 17, 29, 4, 5
    case = make_case(n, d_in, d_out, r, E)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    x = case["x"].clone().requires_grad_(True)
    A = case["A"].clone().requires_grad_(True)
    B = case["B"].clone().requires_grad_(True)
    with ak.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ak.asym_lora(x, case["weight"], A, B, case["expert_weights"], 2.0, case["a_grad_mask"],
                         case["b_grad_mask"], None)
    assert (n, d_out) not in shapes and (n, E * r) not in shapes, shapes
    assert (n, r) in shapes
    y.sum().backward()


def test_cpp_gather_and_cat_paths_agree():
    if "cpp" not in FAST:
        pytest.skip("C++ extension not built")
    op = torch.ops.alter_kernels.asym_lora_fwd
    for n in (1, 3, 8, 9, 40):
        c = make_case(n, 33, 21, 8, 5, seed=n)
        outs = [op(c["x"], c["weight"], c["A"], c["B"], c["expert_weights"], 2.0, c["bias"], m)[0]
                for m in (0, 1, 2)]
        truth = asym_lora_ref(*(c[k].double() for k in ("x", "weight", "A", "B", "expert_weights")), 2.0,
                              bias=c["bias"].double())
        for o in outs:
            torch.testing.assert_close(o.double(), truth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_no_grad_path(backend):
    c = make_case(5, 13, 9, 8, 5)
    with ak.use_backend(backend), torch.no_grad():
        y = ak.asym_lora(c["x"], c["weight"], c["A"], c["B"], c["expert_weights"], 2.0, bias=c["bias"])
    truth = asym_lora_ref(*(c[k].double() for k in ("x", "weight", "A", "B", "expert_weights")), 2.0,
                          bias=c["bias"].double())
    torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5)
    assert not y.requires_grad


def test_bad_input_errors():
    c = make_case(5, 13, 9, 8, 5)
    with pytest.raises(ValueError, match="expert_weights"):
        ak.asym_lora(c["x"], c["weight"], c["A"], c["B"], c["expert_weights"][:, :3], 2.0)
    with pytest.raises(TypeError, match="weight"):
        ak.asym_lora(c["x"], c["weight"].double(), c["A"], c["B"], c["expert_weights"], 2.0)
    with pytest.raises(TypeError, match="a_grad_mask"):
        ak.asym_lora(c["x"], c["weight"], c["A"], c["B"], c["expert_weights"], 2.0, a_grad_mask=torch.ones(5))


# --------------------------------------------------------------------------- PEFT parity (E = 1)
def _peft_pair(d_in, d_out, r, alpha, bias, dtype=torch.float32):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=bias).to(dtype)
    holder = nn.Sequential()
    holder.add_module("proj", base)
    model = peft.get_peft_model(holder, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"],
                                                        lora_dropout=0.0))
    lin = model.base_model.model.proj
    nn.init.normal_(lin.lora_B["default"].weight, std=0.5)
    return model, lin


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bias", [True, False])
def test_peft_parity_single_expert(backend, bias):
    d_in, d_out, r, alpha, n = 23, 17, 8, 16, 6
    model, lin = _peft_pair(d_in, d_out, r, alpha, bias)
    A_p, B_p = lin.lora_A["default"].weight, lin.lora_B["default"].weight
    scale = lin.scaling["default"]
    x = torch.randn(n, d_in)
    gy = torch.randn(n, d_out)

    xp = x.clone().requires_grad_(True)
    model(xp).backward(gy)

    xa = x.clone().requires_grad_(True)
    A = A_p.detach().clone().requires_grad_(True)
    B = B_p.detach().clone()[None].requires_grad_(True)
    with ak.use_backend(backend):
        y = ak.asym_lora(xa, lin.base_layer.weight, A, B, torch.ones(n, 1), scale, bias=lin.base_layer.bias)
    y.backward(gy)
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xp.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(A.grad, A_p.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(B.grad[0], B_p.grad, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- through the patch layer
@pytest.mark.parametrize("backend", FAST)
def test_patched_llama_matches_reference(backend, monkeypatch):
    """A patched tiny Llama (mixed routing, labels, masks) gives the reference's logits and
    adapter gradients with the fast backend (AlterLinear -> ak.asym_lora)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=48, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ak.patch(model, ak.AlterConfig(rank=4, num_forget_experts=2, init_seed=0))
    for m in model.modules():
        if isinstance(m, ak.AlterLinear):
            nn.init.normal_(m.lora_B, std=0.1)
    for p in ak.adapter_parameters(model)["router"]:
        nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 64, (2, 9))
    ent = torch.rand(2, 9) * 2.4
    labels = torch.tensor([0, 2])
    res = []
    for be in ("reference", backend):
        model.zero_grad(set_to_none=True)
        # the env switch applies to the ops that have that backend (asym_lora), the rest stay automatic
        monkeypatch.setenv("ALTER_KERNELS_BACKEND", be)
        with ak.use_backend("reference" if be == "reference" else None), \
                ak.routing_inputs(model, entropy=ent, labels=labels):
            out = model(input_ids=ids, labels=ids)
            (out.loss + ak.router_loss(model)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        res.append((out.logits.detach(), grads))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-4, atol=1e-5)
    assert res[0][1].keys() == res[1][1].keys() and len(res[0][1]) > 0
    for n in res[0][1]:
        torch.testing.assert_close(res[1][1][n], res[0][1][n], rtol=1e-4, atol=1e-6, msg=n)
