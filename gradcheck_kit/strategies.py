"""hypothesis strategies that draw only valid calls of the rule library's functions.

    from hypothesis import given
    from gradcheck_kit import manual
    from gradcheck_kit.strategies import conv_configs

    @given(conv_configs(dim=2))
    def test_conv2d(cfg):
        args, kwargs = cfg.make()                      # seeded float64 tensors on the CPU
        rule = manual.get(cfg.rule)                    # "conv2d"
        out = rule.forward(*args, **kwargs)
        grads = rule.backward(torch.ones_like(out), *args, **kwargs)

Every strategy yields a ``RuleCall``: the rule's name, one ``TensorSpec`` (or
``None``) per positional tensor argument, keyword parameters, and a readable name
such as ``conv2d[N2,C4->2,L5x3,k3x1,s2,p(1,0),d1,g2,bias]``.  ``make(device, dtype,
seed)`` builds the tensors.  Sizes are tiny: these drive property tests.

Strategies: ``conv_configs``, ``pool_configs``, ``broadcast_shapes``,
``elementwise_calls``, ``activation_calls``, ``linear_calls``, ``loss_calls``,
``norm_calls``, ``unfold_calls``, ``fold_calls``, ``pad_calls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import conv_output_size

__all__ = [
    "TensorSpec", "RuleCall", "ConvConfig", "PoolConfig",
    "conv_configs", "pool_configs", "broadcast_shapes", "elementwise_calls", "activation_calls",
    "linear_calls", "loss_calls", "norm_calls", "unfold_calls", "fold_calls", "pad_calls",
    "ACTIVATIONS", "ELEMENTWISE_BINARY", "ELEMENTWISE_UNARY", "REDUCTIONS", "LOSSES",
]


# -- tensors and calls ----------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """How to make one tensor: ``kind`` is a ``Maker`` method (randn, positive, uniform,
    probs, integers, randint); integer tensors (``randint``) ignore the dtype."""

    shape: tuple[int, ...]
    kind: str = "randn"
    low: float = 0.0
    high: float = 1.0
    dim: int = 1
    values: tuple = ()  # kind "classes": these integers, row-major

    def make(self, mk: Maker) -> torch.Tensor:
        t = self._make(mk, self.shape or (1,))  # Maker wants at least one dim
        return t if self.shape else t.reshape(())

    def _make(self, mk: Maker, s: tuple[int, ...]) -> torch.Tensor:
        if self.kind == "randn":
            return mk.randn(*s)
        if self.kind == "positive":
            return mk.positive(*s)
        if self.kind == "uniform":
            return mk.uniform(*s, low=self.low, high=self.high)
        if self.kind == "probs":
            return mk.probs(*s, dim=self.dim)
        if self.kind == "integers":
            return mk.integers(*s, low=int(self.low), high=int(self.high))
        if self.kind == "randint":
            return mk.randint(int(self.high), *s, low=int(self.low))
        if self.kind == "classes":
            return torch.tensor(self.values, dtype=torch.long, device=mk.device).reshape(s)
        raise ValueError(f"unknown tensor kind {self.kind!r}")

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        return f"{self.kind}[{shape}]"


@dataclass(frozen=True)
class RuleCall:
    """One valid call of a rule: ``rule.forward(*args, **kwargs)``."""

    rule: str
    tensors: tuple = ()
    kwargs: dict = field(default_factory=dict, hash=False)
    name: str = ""

    def make(self, device: Any = "cpu", dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[tuple, dict]:
        """``(args, kwargs)``: seeded tensors on ``device`` in ``dtype`` (integer targets stay integer)."""
        mk = Maker(device, dtype, seed)
        args = tuple(t.make(mk) if isinstance(t, TensorSpec) else t for t in self.tensors)
        kwargs = {k: v.make(mk) if isinstance(v, TensorSpec) else v for k, v in self.kwargs.items()}
        return args, kwargs

    @property
    def torch_fn(self):
        from gradcheck_kit import manual

        return manual.get(self.rule).torch_fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name or self.rule})"


# -- small helpers ------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        if len(set(v)) == 1 and len(v) > 1:
            return f"({','.join(map(str, v))})"
        return "(" + ",".join(map(str, v)) + ")"
    return str(v)


def _per_dim(value: Any, dim: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dim


@st.composite
def _int_or_tuple(draw, values: tuple[int, ...]):
    """``values`` as one int when all equal (half the time), else as a tuple."""
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return tuple(values)


def _batch():
    return st.one_of(st.none(), st.integers(1, 2))


# -- convolution --------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class ConvConfig(RuleCall):
    """A valid ``conv{dim}d`` / ``conv_transpose{dim}d`` call (``batch=None``: unbatched input)."""

    dim: int = 2
    transposed: bool = False
    batch: int | None = 1
    in_channels: int = 1
    out_channels: int = 1
    size: tuple[int, ...] = ()
    kernel: tuple[int, ...] = ()
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    output_padding: Any = 0
    bias: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        lead = () if self.batch is None else (self.batch,)
        return lead + (self.in_channels,) + tuple(self.size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.transposed:  # (C_in, C_out / groups, *k)
            return (self.in_channels, self.out_channels // self.groups) + tuple(self.kernel)
        return (self.out_channels, self.in_channels // self.groups) + tuple(self.kernel)

    @property
    def output_size(self) -> tuple[int, ...]:
        d, out = self.dim, []
        s, dl = _per_dim(self.stride, d), _per_dim(self.dilation, d)
        for i, (L, k) in enumerate(zip(self.size, self.kernel)):
            if self.transposed:
                p, op = _per_dim(self.padding, d)[i], _per_dim(self.output_padding, d)[i]
                out.append((L - 1) * s[i] - 2 * p + dl[i] * (k - 1) + op + 1)
            elif self.padding == "same":
                out.append(L)
            elif self.padding == "valid":
                out.append(conv_output_size(L, k, s[i], 0, 0, dl[i]))
            else:
                p = _per_dim(self.padding, d)[i]
                out.append(conv_output_size(L, k, s[i], p, p, dl[i]))
        return tuple(out)

    @property
    def output_shape(self) -> tuple[int, ...]:
        lead = () if self.batch is None else (self.batch,)
        return lead + (self.out_channels,) + self.output_size


@st.composite
def conv_configs(draw, dim: int = 2, transposed: bool = False, *, max_size: int | None = None) -> ConvConfig:
    """Valid convolution calls: shapes, stride, padding (int, tuple, "same", "valid"),
    dilation, groups (incl. depthwise), output_padding < max(stride, dilation) when
    ``transposed``; batched or unbatched input, with or without bias."""
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    kmax = 3 if dim < 3 else 2
    max_size = max_size or (6 if dim == 1 else 5 if dim == 2 else 4)
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    batch = draw(_batch())
    bias = draw(st.booleans())

    if transposed:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(dim))
        pad = tuple(draw(st.integers(0, 2)) for _ in range(dim))
        opad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        size = []
        for s, p, d, k, op in zip(stride, pad, dilation, kernel, opad):
            # output (L - 1) s - 2p + d (k - 1) + op + 1 >= 1
            lo = 1
            while (lo - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1:
                lo += 1
            size.append(draw(st.integers(lo, max(lo, max_size - 1))))
        padding, output_padding = draw(_int_or_tuple(pad)), draw(_int_or_tuple(opad))
    else:
        mode = draw(st.sampled_from(("int", "tuple", "same", "valid")))
        if mode == "same":  # torch allows "same" only with stride 1
            stride = (1,) * dim
            pad = None
        else:
            stride = tuple(draw(st.integers(1, 3)) for _ in range(dim))
            pad = (0,) * dim if mode == "valid" else (
                (draw(st.integers(0, 2)),) * dim if mode == "int" else tuple(draw(st.integers(0, 2)) for _ in range(dim)))
        size = []
        for i in range(dim):
            p = 0 if pad is None else pad[i]
            # input + 2p must hold one dilated kernel: L + 2p >= d (k - 1) + 1
            lo = max(1, dilation[i] * (kernel[i] - 1) + 1 - 2 * p) if pad is not None else 1
            size.append(draw(st.integers(lo, max(lo, max_size))))
        padding = mode if mode in ("same", "valid") else (pad[0] if mode == "int" else tuple(pad))
        output_padding = 0

    stride_v = draw(_int_or_tuple(stride))
    dilation_v = draw(_int_or_tuple(dilation))
    rule = f"conv_transpose{dim}d" if transposed else f"conv{dim}d"
    kwargs: dict = {"stride": stride_v, "padding": padding, "dilation": dilation_v, "groups": groups}
    if transposed:
        kwargs["output_padding"] = output_padding
    cfg = dict(dim=dim, transposed=transposed, batch=batch, in_channels=cin, out_channels=cout,
               size=tuple(size), kernel=kernel, stride=stride_v, padding=padding, dilation=dilation_v,
               groups=groups, output_padding=output_padding, bias=bias)
    probe = ConvConfig(rule=rule, **cfg)
    bias_len = cout
    tensors = (TensorSpec(probe.input_shape), TensorSpec(probe.weight_shape),
               TensorSpec((bias_len,)) if bias else None)
    name = (f"{rule}[{'N' + str(batch) if batch is not None else 'unbatched'},C{cin}->{cout},"
            f"L{'x'.join(map(str, size))},k{'x'.join(map(str, kernel))},s{_fmt(stride_v)},"
            f"p{_fmt(padding)},d{_fmt(dilation_v)},g{groups}"
            + (f",op{_fmt(output_padding)}" if transposed else "") + (",bias" if bias else "") + "]")
    return ConvConfig(rule=rule, tensors=tensors, kwargs=kwargs, name=name, **cfg)


# -- pooling ------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class PoolConfig(RuleCall):
    """A valid ``max_pool{dim}d`` / ``avg_pool{dim}d`` call."""

    dim: int = 2
    kind: str = "max"
    input_shape: tuple[int, ...] = ()
    output_size: tuple[int, ...] = ()


def _pool_out(L: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size: the last window must start inside the input or the left padding."""
    span = L + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= L + p:
        out -= 1
    return out


def _windows_touch_input(L: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    """Every pooling window holds at least one input element (not only padding)."""
    for o in range(_pool_out(L, k, s, p, d, ceil_mode)):
        if not any(0 <= o * s - p + j * d < L for j in range(k)):
            return False
    return True


@st.composite
def pool_configs(draw, dim: int = 2, kind: str = "max", *, ties: bool | None = None) -> PoolConfig:
    """Valid pooling calls: kernel, stride (or None = kernel), padding <= kernel / 2,
    dilation (max), ceil_mode windows that start inside the input, count_include_pad
    and divisor_override (avg).  ``ties`` (default: drawn) makes small integer inputs,
    so that windows hold equal maxima."""
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    if kind not in ("max", "avg"):
        raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
    max_size = 7 if dim == 1 else 5 if dim == 2 else 4
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(dim)) if kind == "max" else (1,) * dim
    stride_none = draw(st.booleans())
    stride = kernel if stride_none else tuple(draw(st.integers(1, 3)) for _ in range(dim))
    pad = list(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    size = []
    for i, (k, s, d) in enumerate(zip(kernel, stride, dil)):
        lo = k if (kind == "avg" and dim == 3) else 1  # avg_pool3d wants the unpadded input >= kernel
        while _pool_out(lo, k, s, pad[i], d, ceil_mode) < 1:
            lo += 1
        L = draw(st.integers(lo, max(lo, max_size)))
        # a dilated window that sees only padding: torch's max_pool outputs -inf there and its
        # backward writes out of bounds (the process aborts), so such calls are not valid
        while not _windows_touch_input(L, k, s, pad[i], d, ceil_mode) and L < max_size + 8:
            L += 1
        if not _windows_touch_input(L, k, s, pad[i], d, ceil_mode):
            pad[i], L = 0, max(L, d * (k - 1) + 1)  # unpadded windows always start inside the input
        size.append(L)
    pad = tuple(pad)
    out = tuple(_pool_out(L, k, s, p, d, ceil_mode) for L, k, s, p, d in zip(size, kernel, stride, pad, dil))
    batch = draw(_batch())
    channels = draw(st.integers(1, 2))
    shape = ((batch,) if batch is not None else ()) + (channels,) + tuple(size)

    kwargs: dict = {"kernel_size": draw(_int_or_tuple(kernel))}
    if not stride_none:
        kwargs["stride"] = draw(_int_or_tuple(stride))
    kwargs["padding"] = draw(_int_or_tuple(pad))
    if kind == "max":
        kwargs["dilation"] = draw(_int_or_tuple(dil))
    kwargs["ceil_mode"] = ceil_mode
    tie = draw(st.booleans()) if ties is None else ties
    if kind == "avg":
        kwargs["count_include_pad"] = draw(st.booleans())
        if dim > 1:  # avg_pool1d has no divisor_override
            kwargs["divisor_override"] = draw(st.sampled_from((None, None, 1, 3)))
        tie = False
    spec = TensorSpec(shape, "integers", low=-2, high=3) if tie else TensorSpec(shape)
    rule = f"{kind}_pool{dim}d"
    name = f"{rule}[{'x'.join(map(str, shape))}," + ",".join(f"{k}={_fmt(v)}" for k, v in kwargs.items()) \
        + (",ties" if tie else "") + "]"
    return PoolConfig(rule=rule, tensors=(spec,), kwargs=kwargs, name=name, dim=dim, kind=kind,
                      input_shape=shape, output_size=out)


# -- elementwise ----------------------------------------------------------------------------

def broadcast_shapes(num_shapes: int = 2, max_dims: int = 3, max_side: int = 3):
    """Tuples of ``num_shapes`` mutually broadcastable shapes (scalars included)."""
    return mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=0, max_dims=max_dims,
                                         min_side=1, max_side=max_side).map(lambda b: tuple(b.input_shapes))


# rule -> kind of each operand ("randn", "positive", "nonzero")
ELEMENTWISE_BINARY = {"add": ("randn", "randn"), "sub": ("randn", "randn"), "mul": ("randn", "randn"),
                      "div": ("randn", "positive"), "pow": ("positive", "randn")}
ELEMENTWISE_UNARY = {"exp": "randn", "log": "positive", "sin": "randn", "cos": "randn", "abs": "ties",
                     "sqrt": "positive"}
REDUCTIONS = ("sum", "mean", "norm")


@st.composite
def elementwise_calls(draw, rule: str) -> RuleCall:
    """Calls of a binary (broadcasting), unary or reduction elementwise rule."""
    if rule in ELEMENTWISE_BINARY:
        a, b = draw(broadcast_shapes(2))
        ka, kb = ELEMENTWISE_BINARY[rule]
        kwargs: dict = {}
        if rule in ("add", "sub") and draw(st.booleans()):
            kwargs["alpha"] = draw(st.sampled_from((2.0, -0.5)))
        tensors = (TensorSpec(a, ka), TensorSpec(b, kb))
        return RuleCall(rule, tensors, kwargs, f"{rule}[{a}x{b}{',alpha' if kwargs else ''}]")
    if rule in ELEMENTWISE_UNARY:
        shape = draw(broadcast_shapes(1))[0]
        kind = ELEMENTWISE_UNARY[rule]
        spec = (TensorSpec(shape, "integers", low=-2, high=3) if kind == "ties" and draw(st.booleans())
                else TensorSpec(shape, "randn" if kind == "ties" else kind))
        return RuleCall(rule, (spec,), {}, f"{rule}[{shape},{spec.kind}]")
    if rule in REDUCTIONS:
        shape = draw(broadcast_shapes(1, max_dims=3).filter(lambda s: len(s[0]) >= 1))[0]
        kwargs = {}
        if draw(st.booleans()):
            dims = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
            kwargs["dim"] = tuple(dims) if len(dims) > 1 or draw(st.booleans()) else dims[0]
            kwargs["keepdim"] = draw(st.booleans())
        if rule == "norm":
            kwargs["p"] = draw(st.sampled_from((2, 1, 3.0)))
        return RuleCall(rule, (TensorSpec(shape),), kwargs,
                        f"{rule}[{shape}," + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]")
    if rule == "dot":
        n = draw(st.integers(1, 4))
        return RuleCall(rule, (TensorSpec((n,)), TensorSpec((n,))), {}, f"dot[{n}]")
    raise ValueError(f"no elementwise strategy for rule {rule!r}")


# -- activations ------------------------------------------------------------------------------

ACTIVATIONS = ("relu", "leaky_relu", "threshold", "hardtanh", "elu", "gelu", "sigmoid", "tanh", "softplus",
               "softmax", "log_softmax")


@st.composite
def activation_calls(draw, rule: str) -> RuleCall:
    """Activation calls over small shapes; half of them use integer inputs, which sit
    exactly on the kinks (0 for relu, the edges of hardtanh, the threshold)."""
    shape = draw(broadcast_shapes(1, max_dims=3, max_side=4))[0]
    kwargs: dict = {}
    if rule == "leaky_relu":
        kwargs["negative_slope"] = draw(st.sampled_from((0.01, 0.2, 1.5)))
    elif rule == "threshold":
        kwargs["threshold"] = draw(st.sampled_from((0.0, 1.0, -0.5)))
        kwargs["value"] = draw(st.sampled_from((0.0, 2.0)))
    elif rule == "hardtanh":
        lo = draw(st.sampled_from((-1.0, -2.0, 0.0)))
        kwargs["min_val"], kwargs["max_val"] = lo, lo + draw(st.sampled_from((1.0, 2.0)))
    elif rule == "elu":
        kwargs["alpha"] = draw(st.sampled_from((1.0, 0.5)))
    elif rule == "gelu":
        kwargs["approximate"] = draw(st.sampled_from(("none", "tanh")))
    elif rule == "softplus":
        kwargs["beta"] = draw(st.sampled_from((1.0, 2.0)))
        kwargs["threshold"] = draw(st.sampled_from((20.0, 1.0)))
    elif rule in ("softmax", "log_softmax"):
        if not shape:
            shape = (draw(st.integers(1, 4)),)
        kwargs["dim"] = draw(st.integers(-len(shape), len(shape) - 1))
    elif rule not in ACTIVATIONS:
        raise ValueError(f"no activation strategy for rule {rule!r}")
    ties = rule not in ("softmax", "log_softmax", "sigmoid", "tanh") and draw(st.booleans())
    spec = TensorSpec(shape, "integers", low=-2, high=3) if ties else TensorSpec(shape)
    return RuleCall(rule, (spec,), kwargs,
                    f"{rule}[{shape}{',ties' if ties else ''}" + "".join(f",{k}={v}" for k, v in kwargs.items()) + "]")


# -- linear algebra ---------------------------------------------------------------------------

@st.composite
def linear_calls(draw, rule: str = "linear") -> RuleCall:
    """``linear`` (any leading dims, optional bias), ``matmul`` (1-D operands and broadcast
    batch dims), ``mm``, ``bmm``."""
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    if rule == "linear":
        lead = draw(broadcast_shapes(1, max_dims=2))[0]
        bias = draw(st.booleans())
        tensors = (TensorSpec(lead + (k,)), TensorSpec((m, k)), TensorSpec((m,)) if bias else None)
        return RuleCall(rule, tensors, {}, f"linear[{lead + (k,)},out{m}{',bias' if bias else ''}]")
    if rule == "mm":
        return RuleCall(rule, (TensorSpec((n, k)), TensorSpec((k, m))), {}, f"mm[{n}x{k}@{k}x{m}]")
    if rule == "bmm":
        b = draw(st.integers(1, 3))
        return RuleCall(rule, (TensorSpec((b, n, k)), TensorSpec((b, k, m))), {}, f"bmm[{b}x{n}x{k}@{b}x{k}x{m}]")
    if rule == "matmul":
        ba, bb = draw(broadcast_shapes(2, max_dims=2))
        a = (k,) if draw(st.booleans()) else ba + (n, k)
        b = (k,) if draw(st.booleans()) else bb + (k, m)
        return RuleCall(rule, (TensorSpec(a), TensorSpec(b)), {}, f"matmul[{a}@{b}]")
    raise ValueError(f"no linear-algebra strategy for rule {rule!r}")


# -- losses -----------------------------------------------------------------------------------

LOSSES = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss",
          "binary_cross_entropy", "binary_cross_entropy_with_logits")
_REDUCTIONS = ("mean", "sum", "none")


@st.composite
def loss_calls(draw, rule: str) -> RuleCall:
    """Loss calls: every reduction; class-index and probability targets, weight,
    ignore_index and label_smoothing for cross_entropy; extra spatial dims."""
    reduction = draw(st.sampled_from(_REDUCTIONS))
    kwargs: dict = {"reduction": reduction}
    if rule in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        shape = draw(broadcast_shapes(1, max_dims=3))[0]
        ties = rule != "mse_loss" and draw(st.booleans())
        spec = TensorSpec(shape, "integers", low=-2, high=3) if ties else TensorSpec(shape)
        if rule == "smooth_l1_loss":
            kwargs["beta"] = draw(st.sampled_from((1.0, 0.5, 2.0)))
        if rule == "huber_loss":
            kwargs["delta"] = draw(st.sampled_from((1.0, 0.5, 2.0)))
        tensors = (spec, spec if ties else TensorSpec(shape))
        name = f"{rule}[{shape}{',ties' if ties else ''}]"
    elif rule in ("cross_entropy", "nll_loss"):
        C = draw(st.integers(2, 4))
        batch = draw(_batch())
        extra = tuple(draw(st.lists(st.integers(1, 3), max_size=1 if batch is not None else 0)))
        lead = () if batch is None else (batch,)
        inp = lead + (C,) + extra
        tshape = lead + extra
        probs = rule == "cross_entropy" and draw(st.booleans())
        weight = TensorSpec((C,), "positive") if draw(st.booleans()) else None
        if probs:
            target = TensorSpec(inp, "probs", dim=0 if batch is None else 1)
        else:
            n = math.prod(tshape)
            classes = draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n))
            if draw(st.booleans()):
                ignore = draw(st.integers(0, C - 1))
                if reduction == "mean" and all(c == ignore for c in classes):
                    classes[0] = (ignore + 1) % C  # every target ignored: torch's mean is 0/0 = nan
                kwargs["ignore_index"] = ignore
            target = TensorSpec(tshape, "classes", values=tuple(classes))
        if rule == "cross_entropy" and draw(st.booleans()):
            kwargs["label_smoothing"] = draw(st.sampled_from((0.1, 0.3)))
        tensors = (TensorSpec(inp), target, weight)
        name = f"{rule}[{inp},{'probs' if probs else 'classes'}{',weight' if weight else ''}]"
    elif rule == "binary_cross_entropy":
        shape = draw(broadcast_shapes(1, max_dims=3))[0]
        weight = TensorSpec(shape, "positive") if draw(st.booleans()) else None
        tensors = (TensorSpec(shape, "uniform", low=0.05, high=0.95), TensorSpec(shape, "uniform"), weight)
        name = f"{rule}[{shape}{',weight' if weight else ''}]"
    elif rule == "binary_cross_entropy_with_logits":
        shape = draw(broadcast_shapes(1, max_dims=3).filter(lambda s: len(s[0]) >= 1))[0]
        weight = TensorSpec(shape, "positive") if draw(st.booleans()) else None
        pos = draw(st.booleans())
        if pos:  # a keyword tensor (not differentiated), broadcast along the last dim
            kwargs["pos_weight"] = TensorSpec(shape[-1:], "positive")
        tensors = (TensorSpec(shape), TensorSpec(shape, "uniform"), weight)
        name = f"{rule}[{shape}{',weight' if weight else ''}]"
    else:
        raise ValueError(f"no loss strategy for rule {rule!r}")
    return RuleCall(rule, tensors, kwargs, name[:-1] + f",{','.join(f'{k}={v!r}' for k, v in kwargs.items())}]")


# -- normalization ------------------------------------------------------------------------------

@st.composite
def norm_calls(draw, rule: str) -> RuleCall:
    """``batch_norm`` (training with or without running stats, eval) and ``layer_norm``."""
    if rule == "batch_norm":
        C = draw(st.integers(1, 3))
        spatial = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        training = draw(st.booleans())
        N = draw(st.integers(2 if not spatial else 1, 3)) if training else draw(st.integers(1, 3))
        if training and N * math.prod(spatial) < 2:
            N = 2
        stats = (not training) or draw(st.booleans())
        affine = draw(st.booleans())
        tensors = (TensorSpec((N, C) + spatial),
                   TensorSpec((C,)) if stats else None, TensorSpec((C,), "positive") if stats else None,
                   TensorSpec((C,)) if affine else None, TensorSpec((C,)) if affine else None)
        kwargs = {"training": training, "momentum": 0.1, "eps": draw(st.sampled_from((1e-5, 0.1)))}
        return RuleCall(rule, tensors, kwargs,
                        f"batch_norm[{(N, C) + spatial},{'train' if training else 'eval'}"
                        f"{',stats' if stats else ''}{',affine' if affine else ''}]")
    if rule == "layer_norm":
        shape = draw(broadcast_shapes(1, max_dims=3, max_side=4).filter(lambda s: len(s[0]) >= 1))[0]
        nd = draw(st.integers(1, len(shape)))
        normalized = shape[-nd:]
        affine = draw(st.booleans())
        tensors = (TensorSpec(shape), TensorSpec(normalized) if affine else None,
                   TensorSpec(normalized) if affine and draw(st.booleans()) else None)
        kwargs = {"normalized_shape": normalized, "eps": draw(st.sampled_from((1e-5, 0.1)))}
        return RuleCall(rule, tensors, kwargs, f"layer_norm[{shape},norm{normalized}{',affine' if affine else ''}]")
    raise ValueError(f"no normalization strategy for rule {rule!r}")


# -- shape ops: unfold / fold / pad ---------------------------------------------------------------

@st.composite
def _unfold_geometry(draw):
    k = tuple(draw(st.integers(1, 3)) for _ in range(2))
    d = tuple(draw(st.integers(1, 2)) for _ in range(2))
    p = tuple(draw(st.integers(0, 1)) for _ in range(2))
    s = tuple(draw(st.integers(1, 2)) for _ in range(2))
    size = []
    for ki, di, pi, si in zip(k, d, p, s):
        lo = max(1, di * (ki - 1) + 1 - 2 * pi)
        size.append(draw(st.integers(lo, lo + 3)))
    blocks = tuple(conv_output_size(L, ki, si, pi, pi, di) for L, ki, si, pi, di in zip(size, k, s, p, d))
    kwargs = {"kernel_size": draw(_int_or_tuple(k)), "dilation": draw(_int_or_tuple(d)),
              "padding": draw(_int_or_tuple(p)), "stride": draw(_int_or_tuple(s))}
    return tuple(size), k, blocks, kwargs


@st.composite
def unfold_calls(draw) -> RuleCall:
    """``F.unfold`` (im2col) on a batched or unbatched 2-D image."""
    size, _, _, kwargs = draw(_unfold_geometry())
    batch = draw(_batch())
    shape = ((batch,) if batch is not None else ()) + (draw(st.integers(1, 2)),) + size
    return RuleCall("unfold", (TensorSpec(shape),), kwargs,
                    f"unfold[{shape}," + ",".join(f"{k}={_fmt(v)}" for k, v in kwargs.items()) + "]")


@st.composite
def fold_calls(draw) -> RuleCall:
    """``F.fold`` (col2im): input ``(N, C k_h k_w, L)`` with ``L`` the number of blocks."""
    size, k, blocks, kwargs = draw(_unfold_geometry())
    batch = draw(_batch())
    C = draw(st.integers(1, 2))
    shape = ((batch,) if batch is not None else ()) + (C * k[0] * k[1], blocks[0] * blocks[1])
    kwargs = {"output_size": size, **kwargs}
    return RuleCall("fold", (TensorSpec(shape),), kwargs,
                    f"fold[{shape}," + ",".join(f"{k}={_fmt(v)}" for k, v in kwargs.items()) + "]")


@st.composite
def pad_calls(draw) -> RuleCall:
    """``F.pad``: constant (with value), reflect (pad < size), replicate, circular (pad <= size)
    over the last 1, 2 or 3 dims of a batched or unbatched input."""
    mode = draw(st.sampled_from(("constant", "reflect", "replicate", "circular")))
    nd = draw(st.integers(1, 3 if mode != "constant" else 2))
    spatial = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
    lead = (draw(st.integers(1, 2)),) + ((draw(st.integers(1, 2)),) if draw(st.booleans()) or mode == "constant"
                                         else ())
    shape = lead + spatial
    pad: list[int] = []
    for L in reversed(spatial):  # F.pad lists (left, right) from the last dim backwards
        hi = {"reflect": L - 1, "circular": L}.get(mode, 2)
        pad += [draw(st.integers(0, min(2, hi))), draw(st.integers(0, min(2, hi)))]
    kwargs: dict = {"pad": tuple(pad), "mode": mode}
    if mode == "constant" and draw(st.booleans()):
        kwargs["value"] = 1.5
    return RuleCall("pad", (TensorSpec(shape),), kwargs, f"pad[{shape},{tuple(pad)},{mode}]")
