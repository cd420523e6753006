"""The fake (meta) implementations agree with the native ops (torch.library.opcheck), so the ops
trace under torch.compile / FakeTensor with the shapes and dtypes they really produce."""
import pytest
import torch

from alter_kernels import kernels
from alter_kernels.kernels.fake import FAKES

pytestmark = pytest.mark.skipif(kernels.load_extension() is None, reason="extension not built")


def cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(dtype)
    x, w0, a, b, wts = r(5, 7), r(6, 7), r(3, 7), r(4, 6, 3), torch.rand(5, 4, generator=g)
    u = x @ a.t()
    am, bm = torch.tensor([True, False, True, True, False]), torch.rand(5, 4, generator=g) > 0.5
    logits = r(4, 33)
    stats = torch.ops.alter_kernels.tsallis_entropy_fwd(logits, 1.5)[2]
    h, wv, bv = r(4, 8), r(33, 8), r(33)
    lstats = torch.ops.alter_kernels.lm_head_entropy_fwd(h, wv, bv, 1.5)[2]
    for dt in (torch.float32, torch.bfloat16):
        yield "asym_lora_fwd", (x.to(dt), w0.to(dt), a, b, wts, 2.0, None, 0)
    yield "asym_lora_fwd", (x, w0, a, b, wts, 2.0, r(6), 0)
    yield "asym_lora_bwd", (r(5, 6), x, w0, a, b, wts, u, 2.0, am, bm, True, True, True, True)
    yield "asym_lora_bwd", (r(5, 6), x, w0, a, b, wts, u, 2.0, None, None, True, False, True, False)
    for dt in (torch.float32, torch.bfloat16):
        yield "tsallis_entropy_fwd", (logits.to(dt), 1.5)
    yield "tsallis_entropy_bwd", (r(4), logits, stats, 1.5)
    yield "lm_head_entropy_fwd", (h, wv, bv, 1.5, 0, 0)
    yield "lm_head_entropy_fwd", (h, wv, None, 1.0, 0, 0)
    yield "lm_head_entropy_bwd", (r(4), r(4), h, wv, bv, lstats, 1.5, True, True, True, 0, 0)
    yield "lm_head_entropy_bwd", (r(4), None, h, wv, None, lstats, 1.5, True, False, False, 0, 0)
    ent = torch.tensor([0.1, 5.0, float("nan"), 0.3, float("inf")])
    rl = r(5, 4)
    yield "route_plan", (rl, ent, 1.2, 0.8, 0.01, 2, None)
    yield "route_plan", (rl, ent, 1.2, 0.8, 0.01, 2, torch.tensor([0, 1, -1, 3, 2]))
    yield "decode_route", (x, r(7, 4), ent, 1.2, 0.8, 0.01, 3)
    for dt in (torch.float32, torch.float64):
        yield "decode_group_linear", (x.to(dt), [w0.to(dt), r(2, 7, dtype=dt)], [r(6, dtype=dt), None],
                                      r(6, 7, dtype=dt), [r(4, 3, 6, dtype=dt), r(4, 3, 2, dtype=dt)], wts)
    for n in (2, 5):                                        # few-rows kernel and ATen
        yield "decode_linear", (r(n, 37), r(11, 37), r(11), False)
    yield "decode_linear", (r(3, 37), r(11, 37), None, True)
    yield "decode_linear", (r(2, 7, dtype=torch.float64), r(6, 7, dtype=torch.float64), None, False)
    from test_lm_head_losses import opcheck_cases      # lm_head_losses_* and lm_head_kl_* (issue 16)
    yield from opcheck_cases()


@pytest.mark.parametrize("name,args", list(cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_fake_matches_the_native_op(name, args):
    op = getattr(torch.ops.alter_kernels, name)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def native_op_names() -> list[str]:
    """Every op the loaded extension defines in the alter_kernels namespace (build_info aside)."""
    names = {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("alter_kernels::")}
    return sorted(names - {"build_info"})


def test_every_native_kernel_op_has_a_fake_and_a_case():
    native = native_op_names()
    assert len(native) >= 9, native                     # the extension this suite was built with
    missing = [n for n in native if n not in FAKES]
    assert not missing, f"native ops without a fake (kernels/fake.py): {missing}"
    untested = sorted(set(native) - {name for name, _ in cases()})
    assert not untested, f"native ops without an opcheck case here: {untested}"
