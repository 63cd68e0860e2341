"""Checking what ``check()`` is given: the callables, the inputs, ``wrt``, ``dtype`` and ``device``.

Each problem is one ``GradcheckKitError`` sentence that names it.
"""

from __future__ import annotations

from typing import Mapping

import torch

from gradcheck_kit._check_errors import InvalidInputError, InvalidParameterError, UnknownDeviceError

def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and not dtype.is_floating_point:
            raise InvalidParameterError(f"dtype={dtype} is not a floating-point dtype; use float64, float32, "
                                        f"float16 or bfloat16.")
        return dtype
    if isinstance(dtype, str):
        d = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    raise InvalidParameterError(f"dtype={dtype!r} is not a floating-point dtype; use float64, float32, "
                                f"float16 or bfloat16.")


def _parse_devices(device, inputs) -> list:
    """A list of ``torch.device`` (``None``: leave the inputs where they are)."""
    if device is None:
        return [None]
    if isinstance(device, (list, tuple)):
        return [d for dev in device for d in _parse_devices(dev, inputs)]
    if device == "all":
        return [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnknownDeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'all'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnknownDeviceError(f"device {device!r} is not available: torch.cuda.is_available() is False "
                                     f"(use device='cpu', or 'all' for CPU plus every visible GPU).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnknownDeviceError(f"device {device!r} does not exist: only {torch.cuda.device_count()} "
                                     f"CUDA device(s) are visible.")
        return [dev]
    if dev.type != "cpu":
        raise UnknownDeviceError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'all'.")
    return [dev]


def _validate(loss, inputs, manual, wrt, reference, known_references):
    if not callable(loss):
        raise InvalidInputError(f"loss must be a callable taking the inputs as keyword arguments, got "
                                f"{type(loss).__name__}.")
    if manual is not None and not callable(manual):
        raise InvalidInputError(f"manual must be a callable returning a dict of gradients, got "
                                f"{type(manual).__name__}.")
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidInputError("inputs must be a non-empty dict mapping names to tensors, got "
                                f"{type(inputs).__name__}.")
    for k in inputs:
        if not isinstance(k, str):
            raise InvalidInputError(f"input names must be strings, got {k!r}.")
    if reference not in known_references:
        raise InvalidParameterError(f"reference={reference!r} is not one of 'autograd', 'finite-difference' "
                                    f"(or 'fd'), 'both' and 'compiled', or a list of them.")
    if wrt is not None:
        if isinstance(wrt, str):
            wrt = (wrt,)
        wrt = tuple(wrt)
        for n in wrt:
            if n not in inputs:
                raise InvalidParameterError(f"wrt names {n!r}, which is not an input (inputs: "
                                            f"{', '.join(inputs)}).")
            _check_differentiable(n, inputs[n])
    return wrt


def _check_differentiable(name, t):
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(f"input {name!r} in wrt is a {type(t).__name__}, not a tensor; only "
                                f"floating-point tensors have gradients.")
    if t.is_complex():
        return  # checked as (real, imag) pairs in torch's Wirtinger convention (modes/complex.py)
    if not t.is_floating_point():
        kind = "a bool" if t.dtype == torch.bool else "an integer"
        raise InvalidInputError(f"input {name!r} in wrt is {kind} tensor ({t.dtype}); only floating-point and "
                                f"complex tensors have gradients (leave it out of wrt).")
