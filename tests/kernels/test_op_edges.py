"""Op edges of issue 26: tensors on another device (meta) never reach a C++ kernel (it read
uninitialised memory), a non-finite asym_lora scale is refused in every backend (C++ gave NaN,
the reference +-inf), d = 0 is a clear error, AlterConfig fields are type-checked."""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
from alter_kernels.ops.decode import decode_linear, decode_route
from alter_kernels.ops.routing import route_plan


def _backends(op):
    names = kernels.available(op, "cpu")
    if not kernels.native.triton_interpret():
        names = [n for n in names if n != "triton"]
    return names


def test_route_with_a_tensor_on_another_device_is_refused_by_every_backend():
    h, wg, ent = torch.randn(4, 6), torch.randn(6, 3), torch.rand(4) * 3
    cases = [("route", lambda: ak.route(h, wg, ent.to("meta")), "entropy on meta"),
             ("route", lambda: ak.route(h, wg.to("meta"), ent), "router_weight on meta"),
             ("route_plan", lambda: route_plan(h @ wg, ent.to("meta")), "entropy on meta"),
             ("decode_route", lambda: decode_route(h, wg, ent.to("meta"), 1.2, 0.8, 0.01, 2), "entropy on meta"),
             ("decode_linear", lambda: decode_linear(h[:2], wg.t().to("meta")), "weight on meta")]
    for op, call, where in cases:
        assert "cpp" in _backends(op) or kernels.native.extension_error() is not None
        for backend in _backends(op):
            with ak.use_backend(backend), pytest.raises(ValueError, match=f"all tensors must be on one device.*{where}"):
                call()
    # all on meta: the reference runs (shapes only), a forced C++ backend refuses the device
    plan = ak.route(h.to("meta"), wg.to("meta"), ent.to("meta"))
    assert plan.expert_weights.device.type == "meta"
    if kernels.native.extension_error() is None:
        with ak.use_backend("cpp"), pytest.raises(RuntimeError, match="meta"):
            ak.route(h.to("meta"), wg.to("meta"), ent.to("meta"))


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])
def test_asym_lora_non_finite_scale_is_refused_by_every_backend(scale):
    x, W, A, B, w = torch.randn(3, 8), torch.randn(5, 8), torch.randn(2, 8), torch.randn(3, 5, 2), torch.rand(3, 3)
    for backend in _backends("asym_lora"):
        with ak.use_backend(backend), pytest.raises(ValueError, match="scale must be a finite number"):
            ak.asym_lora(x, W, A, B, w, scale)
    with ak.use_backend("reference"):                    # a finite scale still works
        assert torch.isfinite(ak.asym_lora(x, W, A, B, w, 2.0)).all()


def test_zero_features_is_a_clear_error():
    h, w = torch.randn(4, 0), torch.randn(11, 0)
    with pytest.raises(ValueError, match="lm_head_entropy: hidden has d = 0 features"):
        ak.lm_head_entropy(h, w)
    with pytest.raises(ValueError, match="lm_head_token_losses: hidden has d = 0 features"):
        ak.lm_head_token_losses(h, w, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("field,value", [("target_modules", "q_proj"), ("target_modules", None),
                                         ("rank", "8"), ("rank", 2.0), ("alpha", True), ("top_k", 1.5),
                                         ("threshold", "1.2"), ("router_input", ["token"]),
                                         ("inference_entropy", None), ("adapter_dtype", 32), ("init_seed", -1)])
def test_alter_config_fields_are_type_checked(field, value):
    with pytest.raises(ak.ConfigError if hasattr(ak, "ConfigError") else ValueError, match=f"AlterConfig.{field}"):
        ak.AlterConfig(**{field: value})
