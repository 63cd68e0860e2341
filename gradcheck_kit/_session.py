"""Running the user's ``loss`` and ``manual``: seeded, on private copies, guarded against in-place writes.

* ``Runner(seed)(fn, kwargs, who)`` calls ``fn(**kwargs)`` with the RNG reseeded to ``seed`` (the
  caller's RNG state is restored afterwards), so dropout and other random ops draw the same
  numbers in every call; a write into an input is an ``InPlaceModificationError`` naming it.
* ``autograd_grads`` is ``torch.autograd.grad`` of the (summed) loss; ``check_manual`` validates
  what ``manual`` returned.
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import torch

from gradcheck_kit import _fd
from gradcheck_kit._check_errors import (InPlaceModificationError, LossDependencyError, LossError,
                                         ManualGradientError, NonFiniteReferenceError)
from gradcheck_kit._inputs import _check_differentiable

@contextlib.contextmanager
def _no_tf32():
    """References on CUDA are computed in full float32 (TF32 off), then restored."""
    if not torch.cuda.is_available():
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class _Runner:
    """Calls ``loss``/``manual`` with a seeded RNG (the caller's RNG state is restored afterwards),
    detecting in-place writes into the inputs."""

    def __init__(self, seed: int):
        self.seed = seed

    @contextlib.contextmanager
    def seeded(self, kwargs: dict):
        cuda = sorted({t.device.index or 0 for t in kwargs.values()
                       if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
        cpu_state = torch.default_generator.get_state()
        cuda_states = [torch.cuda.get_rng_state(i) for i in cuda]
        torch.default_generator.manual_seed(self.seed)
        for i in cuda:
            with torch.cuda.device(i):
                torch.cuda.manual_seed(self.seed)
        try:
            yield
        finally:
            torch.default_generator.set_state(cpu_state)
            for i, st in zip(cuda, cuda_states):
                torch.cuda.set_rng_state(st, i)

    def __call__(self, fn, kwargs: dict, who: str):
        before = {n: t._version for n, t in kwargs.items() if isinstance(t, torch.Tensor)}
        try:
            with self.seeded(kwargs):
                out = fn(**kwargs)
        except RuntimeError as e:
            msg = str(e)
            if "in-place operation" in msg and ("leaf Variable" in msg or "view of a leaf" in msg):
                name = self._culprit(fn, kwargs)
                raise InPlaceModificationError(
                    f"{who} writes into its input {name!r} in place; it must leave its inputs unchanged "
                    f"(work on a copy, e.g. {name}.clone(), or use the out-of-place op).") from None
            raise
        for n, v in before.items():
            if kwargs[n]._version != v:
                raise InPlaceModificationError(
                    f"{who} writes into its input {n!r} in place; it must leave its inputs unchanged "
                    f"(work on a copy, e.g. {n}.clone(), or use the out-of-place op).")
        return out

    def _culprit(self, fn, kwargs) -> str:
        probe = {n: (t.detach().clone() if isinstance(t, torch.Tensor) else t) for n, t in kwargs.items()}
        before = {n: t._version for n, t in probe.items() if isinstance(t, torch.Tensor)}
        try:
            with torch.no_grad(), self.seeded(probe):
                fn(**probe)
        except Exception:
            pass
        for n, v in before.items():
            if probe[n]._version != v:
                return n
        return next((n for n, t in kwargs.items() if isinstance(t, torch.Tensor) and t.requires_grad), "?")


def _copy(t, device, dtype):
    """A private copy; floating tensors cast to ``dtype``; memory format kept."""
    if not isinstance(t, torch.Tensor):
        return t
    target_dtype = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
    target_device = device if device is not None else t.device
    out = t.detach().to(device=target_device, dtype=target_dtype)
    if out.data_ptr() == t.data_ptr() and out.numel():  # .to() returned the caller's storage
        out = out.clone(memory_format=torch.preserve_format)
    return out


def _leaves(tensors: dict, names) -> dict:
    return {n: (t.detach().requires_grad_(True) if n in names else t) for n, t in tensors.items()}


def _loss_out(out, summed_info: dict):
    if not isinstance(out, torch.Tensor):
        raise LossError(f"loss must return a torch.Tensor, got {type(out).__name__}.")
    summed_info["shape"] = tuple(out.shape)
    summed_info["value"] = out.detach()  # checked for NaN/inf once the references have run
    summed_info["summed"] = out.dim() > 0
    return out.sum() if out.dim() > 0 else out


def _autograd(run, loss, tensors: dict, wrt, info: dict, *, create_graph: bool = False, allow_unused=False):
    """(grads dict, leaves dict): ``autograd.grad`` of the summed loss."""
    leaves = _leaves(tensors, wrt)
    with torch.enable_grad():
        out = _loss_out(run(loss, leaves, "loss"), info)
        if not out.requires_grad:
            raise LossDependencyError(f"the loss does not depend on any of {', '.join(map(repr, wrt))}: its "
                                      f"result has no grad_fn (was it computed under no_grad, detached, or from "
                                      f"other tensors?).")
        grads = torch.autograd.grad(out, [leaves[n] for n in wrt], allow_unused=True, create_graph=create_graph)
    grads = list(grads)
    for i, (n, g) in enumerate(zip(wrt, grads)):
        if g is None and allow_unused:
            grads[i] = torch.zeros_like(leaves[n])
        elif g is None:
            raise LossDependencyError(f"the loss does not depend on input {n!r}: autograd finds no path from it to "
                                      f"the loss (remove it from wrt, or check that the loss uses it).")
    return dict(zip(wrt, grads)), leaves


def _check_manual(res, inputs: dict, work: dict, wrt):
    if not isinstance(res, Mapping):
        raise ManualGradientError(f"manual must return a dict mapping input names to gradients, got "
                                  f"{type(res).__name__}.")
    for n in res:
        if n not in inputs:
            raise ManualGradientError(f"manual returned a gradient for {n!r}, which is not one of the inputs "
                                      f"({', '.join(inputs)}).")
    names = tuple(n for n in res if res[n] is not None) if wrt is None else wrt
    if not names:
        raise ManualGradientError("manual returned no gradients (an empty dict, or only None).")
    for n in names:
        g = res.get(n)
        if g is None:
            raise ManualGradientError(f"manual returned no gradient for {n!r}, which wrt asks for.")
        _check_differentiable(n, work[n])
        if not isinstance(g, torch.Tensor):
            raise ManualGradientError(f"manual's gradient for {n!r} is a {type(g).__name__}, not a tensor.")
        t = work[n]
        if tuple(g.shape) != tuple(t.shape):
            raise ManualGradientError(f"manual's gradient for {n!r} has shape {tuple(g.shape)} but {n!r} has shape "
                                      f"{tuple(t.shape)}.")
        if g.dtype != t.dtype:
            raise ManualGradientError(f"manual's gradient for {n!r} has dtype {g.dtype} but {n!r} is {t.dtype}.")
        if g.device != t.device:
            raise ManualGradientError(f"manual's gradient for {n!r} is on {g.device} but {n!r} is on {t.device}.")
    return names


def _first_nonfinite(t: torch.Tensor):
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    flat = int(bad.reshape(-1).nonzero()[0])
    return _fd.unravel(flat, t.shape), float(t.reshape(-1)[flat])


def _check_finite(t: torch.Tensor, name: str, what: str):
    hit = _first_nonfinite(t)
    if hit is not None:
        idx, v = hit
        raise NonFiniteReferenceError(f"the {what} gradient of {name!r} is {v} at index {idx}, so nothing can be "
                                      f"compared there (the loss is not differentiable or overflows at this point).")
