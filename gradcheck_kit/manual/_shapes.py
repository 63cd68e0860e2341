"""Shape arithmetic shared by the rules: tuples, broadcasting, convolution sizes.

Rules call these helpers and never inline index arithmetic.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gradcheck_kit.errors import InvalidParameterError


def ntuple(value, n: int, name: str) -> tuple[int, ...]:
    """``2 -> (2, 2)``; a sequence must already have ``n`` entries."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        t = tuple(value)
        if len(t) == 1:
            t = t * n
        if len(t) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
            raise InvalidParameterError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        return t
    raise InvalidParameterError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")


def unbroadcast(grad: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Undo broadcasting: sum ``grad`` down to ``shape``.

    If ``y = broadcast(x)`` then ``dL/dx = sum of dL/dy over the broadcast axes``:
    leading axes that broadcasting added, and axes where ``x`` had size 1.
    """
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = grad.dim() - len(shape)
    if lead > 0:
        grad = grad.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(dim=axes, keepdim=True)
    return grad.reshape(shape)


def conv_output_size(in_size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """``floor((L + p_lo + p_hi - d (k - 1) - 1) / s) + 1``."""
    return (in_size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(low, high) padding per spatial dim for ``padding="same"`` (stride 1).

    torch pads ``total = d (k - 1)``; with an even total the extra element goes on
    the high side: ``low = total // 2``, ``high = total - low``.
    """
    out = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        out.append((total // 2, total - total // 2))
    return tuple(out)


def conv_output_padding(in_size: int, out_size: int, kernel: int, stride: int,
                        pad_lo: int, pad_hi: int, dilation: int) -> int:
    """The ``output_padding`` a transposed convolution needs to give back ``in_size``.

    A strided convolution drops the last ``(L + p_lo + p_hi - d (k - 1) - 1) mod s``
    input positions; its transpose produces
    ``(out - 1) s - p_lo - p_hi + d (k - 1) + 1`` positions (with symmetric padding
    ``p``), so the missing tail is the output padding.
    """
    produced = (out_size - 1) * stride - pad_lo - pad_hi + dilation * (kernel - 1) + 1
    return in_size - produced


def conv_padding(padding, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                 name: str = "padding") -> tuple[tuple[int, int], ...]:
    """(low, high) padding per spatial dim of a convolution's ``padding`` argument.

    ``int`` / tuple: symmetric; ``"valid"``: none; ``"same"``: ``same_padding``
    (asymmetric when ``d (k - 1)`` is odd), allowed only with stride 1 as in torch.
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise InvalidParameterError(
                    f"{name}='same' needs stride 1 in every dimension, got stride={tuple(stride)} "
                    f"(torch refuses it too)")
            return same_padding(kernel, dilation)
        raise InvalidParameterError(f"{name} must be an int, a tuple of {n} ints, 'same' or 'valid', got {padding!r}")
    pads = ntuple(padding, n, name)
    if any(p < 0 for p in pads):
        raise InvalidParameterError(f"{name} must be non-negative, got {padding!r}")
    return tuple((p, p) for p in pads)


def positive_ntuple(value, n: int, name: str) -> tuple[int, ...]:
    """``ntuple`` whose entries must all be >= 1 (stride, dilation)."""
    t = ntuple(value, n, name)
    if any(v < 1 for v in t):
        raise InvalidParameterError(f"{name} must be positive, got {value!r}")
    return t


def meta_output_shape(op: str, fn, input, *args, **params) -> tuple[int, ...]:
    """Output shape of ``fn(input, *args, **params)``, found by running it on a ``meta`` tensor.

    Used by shape-only rules (views, resampling) to validate their parameters and the
    shape of ``grad_output`` without computing anything; torch's own complaint becomes
    one ``InvalidParameterError`` naming the op.
    """
    meta = torch.empty(tuple(input.shape), dtype=getattr(input, "dtype", torch.float64)
                       if isinstance(input, torch.Tensor) else torch.float64, device="meta")
    try:
        out = fn(meta, *args, **params)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidParameterError(f"{op}: torch rejects these parameters for an input of shape "
                                    f"{tuple(input.shape)}: {first}") from None
    return tuple(out.shape)


def check_grad_shape(op: str, grad_output, shape) -> None:
    """``grad_output`` must have the forward output's shape."""
    from gradcheck_kit.errors import InvalidInputError

    if not isinstance(grad_output, torch.Tensor):
        raise InvalidInputError(f"{op}: grad_output must be a tensor, got {type(grad_output).__name__}")
    if tuple(grad_output.shape) != tuple(shape):
        raise InvalidInputError(f"{op}: grad_output has shape {tuple(grad_output.shape)} but the output "
                                f"has shape {tuple(shape)}")
