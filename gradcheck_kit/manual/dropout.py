"""Dropout rules: ``dropout``, ``dropout1d``/``dropout2d``/``dropout3d`` (channel dropout),
``alpha_dropout``, ``feature_alpha_dropout``.

The forward is ``y = x * m`` (alpha dropout: ``y = x * m + b``) with a random mask ``m``
that does not depend on ``x``, so ``dL/dx = g * m``: linear in ``g``, and the second
derivative with respect to ``x`` is zero.

The mask is drawn from torch's global generator exactly as torch's CPU kernel draws it
(``aten/src/ATen/native/Dropout.cpp``, ``_dropout_impl``), so that under the same
``torch.manual_seed`` the rule's forward equals ``F.dropout``'s bit for bit::

    noise = torch.empty_like(x)            # channel dropout: x.new_empty((N, C, 1, .., 1))
    noise.bernoulli_(1 - p)                # keep with probability 1 - p
    m = noise / (1 - p)                    # inverted dropout: E[y] = x

    # alpha dropout (SELU's fixed point), alpha = 1.7580993408473766:
    a = 1 / sqrt((alpha^2 p + 1)(1 - p)),   b = (noise - 1) alpha a + alpha a p,   m = a noise

``p == 0``, ``training=False`` and an empty input are the identity and draw nothing;
``p == 1`` multiplies by 0 and draws nothing (torch's shortcuts).

The backward needs the same mask.  ``rule.forward_saved`` returns it as ``saved["mask"]``
and ``rule.backward(..., saved=...)`` uses it.  Without ``saved`` the backward draws the
mask again from the global generator, in the same way, so the caller must put the
generator in the state the forward saw (``torch.manual_seed(s)`` before each, as the
generic rule checks do).  ``inplace=True`` is accepted, but the rule never modifies its
input: its forward returns the same values out of place.

On CUDA (and XPU, lazy, privateuse1 devices) plain ``dropout`` with ``0 < p < 1`` takes
torch's fused kernel instead, with its own stream of random numbers: there the rule draws
through the same public op, ``torch.native_dropout(x, p, True)``, whose second output is
the keep mask, and uses ``m = keep * (1 / (1 - p))`` as that kernel does.  Channel and
alpha dropout use ``_dropout_impl`` on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual._shapes import check_grad_shape
from gradcheck_kit.manual.registry import Sample, register

__all__ = ["ALPHA"]

#: SELU's alpha as torch's alpha dropout uses it.
ALPHA = 1.7580993408473766


def _check_p(op: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise InvalidParameterError(f"{op}: dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def _noise(op: str, x: torch.Tensor, p: float, feature: bool) -> torch.Tensor:
    """The 0/1 keep mask, drawn from the global generator as torch's CPU kernel draws it."""
    if feature:
        if x.dim() < 2:
            raise InvalidInputError(f"{op}: channel dropout needs an input with at least 2 dimensions "
                                    f"(N, C, ...), got shape {tuple(x.shape)}")
        noise = x.new_empty((x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2))
    else:
        noise = torch.empty_like(x)
    return noise.bernoulli_(1 - p)                       # a fresh tensor: in place is safe


#: Devices on which ``torch.dropout`` takes the fused ``native_dropout`` kernel
#: (``is_fused_kernel_acceptable`` in Dropout.cpp).
FUSED_DEVICES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


def _fused(x: torch.Tensor, p: float, feature: bool, alpha: bool) -> bool:
    return not feature and not alpha and x.device.type in FUSED_DEVICES and 0 < p < 1 and x.numel() > 0


def _mask(op: str, x, p, training, feature, alpha):
    """(multiplier m, offset b or None) of ``y = x * m + b``; None for the identity."""
    p = _check_p(op, p)
    if p == 0 or not training or x.numel() == 0:
        return None
    if p == 1:
        return torch.zeros((), dtype=x.dtype, device=x.device), None
    if _fused(x, p, feature, alpha):                       # torch's fused kernel and its RNG stream
        keep = torch.native_dropout(x, p, True)[1]
        return keep.to(x.dtype) * (1.0 / (1.0 - p)), None
    noise = _noise(op, x, p, feature)
    if not alpha:
        return noise / (1 - p), None
    a = 1.0 / math.sqrt((ALPHA * ALPHA * p + 1) * (1 - p))
    b = (noise - 1) * (ALPHA * a) + ALPHA * a * p
    return noise * a, b


def _apply(x, mb):
    if mb is None:
        return x.clone()
    m, b = mb
    y = x * m
    return y if b is None else y + b


# Each variant: how the input is presented to the kernel (unbatched inputs get a batch dim).

def _layout_plain(x):
    return x, False


def _layout_1d(x):
    if x.dim() not in (2, 3):
        raise InvalidInputError(f"dropout1d: expected a 2-d (C, L) or 3-d (N, C, L) input, got shape {tuple(x.shape)}")
    return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)


def _layout_2d(x):
    return x, False       # torch: a 3-d input is read as (N, C, L), not unbatched (C, H, W)


def _layout_3d(x):
    return (x, False) if x.dim() == 5 else (x.unsqueeze(0), True)


def _variant(name, layout, feature, alpha, doc):
    train_default = not alpha                            # F.alpha_dropout defaults to training=False

    def draw(input, p, training):
        x, squeezed = layout(input)
        mb = _mask(name, x, p, training, feature, alpha)
        if mb is not None and squeezed:                  # noise (1, C, 1..): drop the added batch dim
            mb = tuple(None if t is None or t.dim() == 0 else t.squeeze(0) for t in mb)
        return mb

    def save(input, p=0.5, training=train_default, inplace=False):
        mb = draw(input, p, training)
        saved = {} if mb is None else {"mask": mb[0]}
        return _apply(input, mb), saved

    def forward(input, p=0.5, training=train_default, inplace=False):
        return save(input, p, training, inplace)[0]

    def backward(grad_output, input, *, needs_input_grad, p=0.5, training=train_default, inplace=False, saved=None):
        check_grad_shape(name, grad_output, tuple(input.shape))
        if not needs_input_grad[0]:
            return (None,)
        if saved is not None and "mask" in saved:
            m = saved["mask"]
        else:
            mb = draw(input, p, training)                # the caller reseeded as for the forward
            if mb is None:
                return (grad_output.to(input.dtype),)
            m = mb[0]
        return ((grad_output * m).to(input.dtype),)

    backward.__doc__ = doc
    forward.__name__ = name
    return forward, save, backward


def _samples(name, shapes):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        x = mk.randn(*shapes[0])
        yield Sample((x,), {"p": 0.3, "training": True}, f"{name}[p=0.3]")
        yield Sample((x,), {"p": 0.5, "training": True}, f"{name}[training=True]")
        yield Sample((x,), {}, f"{name}[default p]")
        yield Sample((x,), {"p": 0.0}, f"{name}[p=0]")
        yield Sample((x,), {"p": 0.4, "training": False}, f"{name}[eval]")
        yield Sample((x,), {"p": 1.0, "training": True}, f"{name}[p=1]")
        yield Sample((mk.noncontiguous(x),), {"p": 0.25, "training": True}, f"{name}[noncontig]")
        for extra in shapes[1:]:
            yield Sample((mk.randn(*extra),), {"p": 0.5, "training": True},
                         f"{name}[{'x'.join(map(str, extra)) or 'scalar'}]")
        if len(shapes[0]) == 4:
            yield Sample((mk.channels_last(mk.randn(*shapes[0])),), {"p": 0.5, "training": True},
                         f"{name}[channels_last]")
    samples.__name__ = f"{name}_samples"
    return samples


_VARIANTS = (
    ("dropout", F.dropout, _layout_plain, False, False, [(2, 3, 4, 5), (7,), (), (0, 3)],
     "y = x * m, m = bernoulli(1 - p) / (1 - p) per element: dL/dx = g * m."),
    ("dropout1d", F.dropout1d, _layout_1d, True, False, [(2, 3, 4), (3, 5)],
     "y = x * m, one m per (sample, channel): dL/dx = g * m."),
    ("dropout2d", F.dropout2d, _layout_2d, True, False, [(2, 3, 4, 5), (2, 3, 4)],
     "y = x * m, one m per (sample, channel): dL/dx = g * m."),
    ("dropout3d", F.dropout3d, _layout_3d, True, False, [(2, 3, 2, 3, 2), (3, 2, 3, 2)],
     "y = x * m, one m per (sample, channel): dL/dx = g * m."),
    ("alpha_dropout", F.alpha_dropout, _layout_plain, False, True, [(3, 4, 5), (6,)],
     "y = x * a noise + b (SELU-preserving): dL/dx = g * a * noise."),
    ("feature_alpha_dropout", F.feature_alpha_dropout, _layout_plain, True, True, [(2, 3, 4, 5), (4, 3)],
     "y = x * a noise + b, one noise per (sample, channel): dL/dx = g * a * noise."),
)

for _name, _fn, _layout, _feature, _alpha, _shapes_list, _doc in _VARIANTS:
    _fwd, _save, _bwd = _variant(_name, _layout, _feature, _alpha, _doc)
    register(_name, torch_fn=_fn, tensor_args=("input",), forward=_fwd, save=_save,
             samples=_samples(_name, _shapes_list))(_bwd)
