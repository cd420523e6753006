"""The fake (meta) implementations agree with the native ops (torch.library.opcheck), so the ops
trace under torch.compile / FakeTensor with the shapes and dtypes they really produce."""
import pytest
import torch

from alter_kernels import _backend
from alter_kernels.ops._fake import FAKES

pytestmark = pytest.mark.skipif(_backend.load_extension() is None, reason="extension not built")


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


@pytest.mark.parametrize("name,args", list(cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_fake_matches_the_native_op(name, args):
    op = getattr(torch.ops.alter_kernels, name)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_every_native_kernel_op_has_a_fake():
    native = [n for n in ("asym_lora_fwd", "asym_lora_bwd", "tsallis_entropy_fwd", "tsallis_entropy_bwd",
                          "lm_head_entropy_fwd", "lm_head_entropy_bwd") if _backend.native_op(n) is not None]
    assert native and all(n in FAKES for n in native)
