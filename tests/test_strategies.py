"""The strategies draw only valid calls: torch itself accepts every one of them, and the
shapes they predict are the shapes torch computes.  (The rules are tested in test_properties.py.)"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck_kit import strategies as S

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _layer_norm(x, w=None, b=None, *, normalized_shape, eps=1e-5):
    return F.layer_norm(x, normalized_shape, w, b, eps)


TORCH = {
    **{f"conv{d}d": getattr(F, f"conv{d}d") for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": getattr(F, f"conv_transpose{d}d") for d in (1, 2, 3)},
    **{f"{k}_pool{d}d": getattr(F, f"{k}_pool{d}d") for d in (1, 2, 3) for k in ("max", "avg")},
    **{n: getattr(torch, n) for n in ("add", "sub", "mul", "div", "pow", "exp", "log", "sin", "cos", "abs",
                                      "sqrt", "sum", "mean", "norm", "dot", "matmul", "mm", "bmm")},
    **{n: getattr(F, n) for n in S.ACTIVATIONS + S.LOSSES + ("linear", "unfold", "fold", "pad", "batch_norm")},
    "layer_norm": _layer_norm,
}


def torch_call(cfg):
    args, kwargs = cfg.make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "same" with even kernels may copy the input
        return TORCH[cfg.rule](*args, **kwargs)


def _dims(v, n):
    return tuple(v) if isinstance(v, tuple) else (v,) * n


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_conv_configs_are_valid(dim, transposed):
    @SETTINGS
    @given(S.conv_configs(dim, transposed=transposed))
    def run(cfg):
        assert cfg.rule == (f"conv_transpose{dim}d" if transposed else f"conv{dim}d")
        out = torch_call(cfg)
        assert tuple(out.shape) == cfg.output_shape, cfg.name
        assert cfg.in_channels % cfg.groups == 0 and cfg.out_channels % cfg.groups == 0
        if cfg.padding == "same":
            assert set(_dims(cfg.stride, dim)) == {1}
        if transposed:
            assert not isinstance(cfg.padding, str)
            for op, s, d in zip(_dims(cfg.output_padding, dim), _dims(cfg.stride, dim), _dims(cfg.dilation, dim)):
                assert 0 <= op < max(s, d)
        assert len(cfg.input_shape) == dim + (1 if cfg.batch is None else 2)

    run()


def test_conv_configs_cover_the_parameter_space():
    seen = set()

    @settings(max_examples=120, deadline=None, derandomize=True, database=None)
    @given(st.one_of(S.conv_configs(2), S.conv_configs(1, transposed=True)))
    def run(cfg):
        p = cfg.padding
        seen.add("same" if p == "same" else "valid" if p == "valid" else "tuple" if isinstance(p, tuple) else "int")
        seen.add("unbatched" if cfg.batch is None else "batched")
        seen.add("groups" if cfg.groups > 1 else "g1")
        seen.add("bias" if cfg.bias else "nobias")
        if cfg.transposed and any(_dims(cfg.output_padding, cfg.dim)):
            seen.add("output_padding")
        if any(s > 1 for s in _dims(cfg.stride, cfg.dim)):
            seen.add("stride")
        if any(d > 1 for d in _dims(cfg.dilation, cfg.dim)):
            seen.add("dilation")

    run()
    assert seen >= {"same", "valid", "tuple", "int", "unbatched", "batched", "groups", "g1", "bias", "nobias",
                    "output_padding", "stride", "dilation"}


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_pool_configs_are_valid(dim, kind):
    @SETTINGS
    @given(S.pool_configs(dim, kind))
    def run(cfg):
        out = torch_call(cfg)
        assert tuple(out.shape[-dim:]) == cfg.output_size, cfg.name
        assert tuple(out.shape[:-dim]) == cfg.input_shape[:-dim]
        assert torch.isfinite(out).all(), f"{cfg.name}: a window sees only padding"
        for k, p in zip(_dims(cfg.kwargs["kernel_size"], dim), _dims(cfg.kwargs["padding"], dim)):
            assert 2 * p <= k

    run()


def test_pool_configs_hit_ceil_mode_and_ties():
    seen = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(S.pool_configs(2, "max"))
    def run(cfg):
        seen.add(("ceil", cfg.kwargs["ceil_mode"]))
        seen.add(("ties", cfg.tensors[0].kind == "integers"))

    run()
    assert seen == {("ceil", True), ("ceil", False), ("ties", True), ("ties", False)}


FAMILIES = (
    [pytest.param(S.elementwise_calls(r), id=r) for r in
     list(S.ELEMENTWISE_BINARY) + list(S.ELEMENTWISE_UNARY) + list(S.REDUCTIONS) + ["dot"]]
    + [pytest.param(S.activation_calls(r), id=r) for r in S.ACTIVATIONS]
    + [pytest.param(S.linear_calls(r), id=r) for r in ("linear", "matmul", "mm", "bmm")]
    + [pytest.param(S.loss_calls(r), id=r) for r in S.LOSSES]
    + [pytest.param(S.norm_calls(r), id=r) for r in ("batch_norm", "layer_norm")]
    + [pytest.param(S.unfold_calls(), id="unfold"), pytest.param(S.fold_calls(), id="fold"),
       pytest.param(S.pad_calls(), id="pad")]
)


@pytest.mark.parametrize("strategy", FAMILIES)
def test_family_calls_are_valid(strategy):
    @settings(max_examples=8, deadline=None, derandomize=True, database=None)
    @given(strategy)
    def run(cfg):
        out = torch_call(cfg)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64, cfg.name
        assert cfg.name.startswith(cfg.rule + "[")

    run()


def test_broadcast_shapes_broadcast():
    @settings(max_examples=20, deadline=None, derandomize=True, database=None)
    @given(S.broadcast_shapes(3))
    def run(shapes):
        torch.broadcast_shapes(*shapes)

    run()


def test_make_is_seeded_and_honours_device_and_dtype():
    cfg = S.ConvConfig(rule="conv1d", tensors=(S.TensorSpec((1, 2, 5)), S.TensorSpec((3, 2, 2)), None),
                       kwargs={"stride": 2}, name="conv1d[x]")
    (a1, w1, b1), _ = cfg.make(dtype=torch.float32, seed=3)
    (a2, _, _), kw = cfg.make(dtype=torch.float32, seed=3)
    assert torch.equal(a1, a2) and a1.dtype == torch.float32 and b1 is None and kw == {"stride": 2}
    scalar = S.TensorSpec(())
    assert S.RuleCall("exp", (scalar,)).make()[0][0].shape == ()
    assert repr(cfg) == "ConvConfig(conv1d[x])"
