"""Inputs that hold ``nn.Module``s and nested dicts/lists/tuples: flattened to named tensors.

``check()`` works on a flat ``{name: tensor}``.  ``prepare`` turns

    {"net": nn.Sequential(nn.Linear(3, 4), nn.Tanh()), "batch": {"x": x, "y": [y0, y1]}}

into the flat names (a module's trainable parameters, and its floating buffers that require
grad, under ``key.<name in named_parameters()>``; a container's tensors under ``key.k`` or
``key.i``)

    net.0.weight  net.0.bias  batch.x  batch.y.0  batch.y.1

and wraps ``loss`` and ``manual`` so that each call rebuilds the original structure from the
flat (copied, perturbed, cast) tensors: containers are rebuilt, and every module is a private
copy of the caller's whose parameters are swapped for the flat tensors for the duration of the
call (``torch.func.functional_call``), so forward hooks, ``net.fc.weight`` and buffers behave as
in the caller's module, and the caller's module (its running statistics included) is never
touched.  ``manual`` returns its gradients under the flat names.  Frozen parameters
(``requires_grad=False``) stay constants inside the module.

``wrt`` accepts flat names, a structure's key (all its tensors) and glob patterns
(``"net.*.weight"``, ``fnmatch`` rules: ``*`` also crosses dots).  Complex tensors become their
real views (``modes/complex.py``).
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from gradcheck_kit._check_errors import InvalidInputError, InvalidParameterError

__all__ = ["Prepared", "prepare", "flatten", "expand_wrt"]


@dataclass
class Prepared:
    """What ``check()`` runs on: flat inputs, and loss/manual that take them."""

    loss: Callable
    inputs: dict
    manual: Callable | None
    wrt: tuple | None
    complex_names: tuple = ()       # flat names that hold complex tensors as (real, imag) views
    structured: bool = False        # some input was a module or a container of tensors


# -- structure ------------------------------------------------------------------------------------

class _Leaf:
    """Placeholder for the flat tensor ``name`` in a structure's template."""

    def __init__(self, name: str):
        self.name = name


class _ModuleSlot:
    """Placeholder for module number ``index``; ``local`` maps its flat names to names inside the module."""

    def __init__(self, index: int, prefix: str, local: dict):
        self.index, self.prefix, self.local = index, prefix, local


def _holds_tensors(obj) -> bool:
    if isinstance(obj, (torch.Tensor, nn.Module)):
        return True
    if isinstance(obj, Mapping):
        return any(_holds_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensors(v) for v in obj)
    return False


def flatten(inputs: Mapping) -> tuple[dict, dict, list]:
    """(flat {name: tensor}, template {key: structure with placeholders}, modules in slot order)."""
    flat: dict = {}
    modules: list = []

    def add(name, t):
        if name in flat:
            raise InvalidInputError(f"two inputs flatten to the same name {name!r}; rename one of them.")
        flat[name] = t

    def walk(obj, prefix):
        if isinstance(obj, torch.Tensor):
            add(prefix, obj)
            return _Leaf(prefix)
        if isinstance(obj, nn.Module):
            local = {}
            # named_parameters() lists a tied parameter once; functional_call re-ties it
            for pname, p in obj.named_parameters():
                if p.requires_grad:
                    add(f"{prefix}.{pname}", p)
                    local[f"{prefix}.{pname}"] = pname
            for bname, b in obj.named_buffers():
                if b.is_floating_point() and b.requires_grad:
                    add(f"{prefix}.{bname}", b)
                    local[f"{prefix}.{bname}"] = bname
            modules.append(obj)
            return _ModuleSlot(len(modules) - 1, prefix, local)
        if isinstance(obj, Mapping) and _holds_tensors(obj):
            for k in obj:
                if not isinstance(k, str):
                    raise InvalidInputError(f"input {prefix!r} is a dict with key {k!r}; nested dict keys must be "
                                            f"strings so that its tensors can be named {prefix}.<key>.")
            return {k: walk(v, f"{prefix}.{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and _holds_tensors(obj):
            items = [walk(v, f"{prefix}.{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else (type(obj)(*items) if hasattr(obj, "_fields")
                                                         else tuple(items))
        return obj  # a constant (int, str, a tuple of ints, ...): passed through as given

    template = {k: walk(v, k) for k, v in inputs.items()}
    return flat, template, modules


class _Holder(nn.Module):
    """All modules of the inputs as submodules ``m0, m1, ...``: one ``functional_call`` swaps every
    trainable tensor at once, then ``forward`` calls the user's function with the rebuilt inputs."""

    def __init__(self, modules):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(f"m{i}", m)

    def forward(self, fn, kwargs):
        return fn(**kwargs)


class _Structure:
    """Rebuilds the caller's structure from flat tensors, with private module copies per device/dtype."""

    def __init__(self, template: dict, modules: list):
        self.template = template
        self.modules = modules
        self._copies: dict = {}  # (device, dtype) -> _Holder of private module copies
        self.slots = self._slots()

    def _holder(self, flat: dict):
        # the device and dtype of this call: a module's first trainable tensor, else any floating input
        names = [n for s in self.slots for n in s.local] + list(flat)
        key = next(((flat[n].device, flat[n].dtype) for n in names
                    if isinstance(flat.get(n), torch.Tensor) and flat[n].is_floating_point()), None)
        if key not in self._copies:
            holder = _Holder([copy.deepcopy(m) for m in self.modules])
            if key is not None:
                holder.to(device=key[0])
                if key[1].is_floating_point:  # float parameters/buffers follow the checked dtype (float64 FD)
                    holder.to(dtype=key[1])
            self._copies[key] = holder
        return self._copies[key]

    def _slots(self):
        out = []

        def walk(obj):
            if isinstance(obj, _ModuleSlot):
                out.append(obj)
            elif isinstance(obj, dict):
                for v in obj.values():
                    walk(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v)
        for v in self.template.values():
            walk(v)
        return out

    def call(self, fn, flat: dict, extra: dict):
        holder = self._holder(flat) if self.modules else None
        kwargs = {k: _build(v, flat, holder) for k, v in self.template.items()}
        kwargs.update(extra)
        if holder is None:
            return fn(**kwargs)
        params = {f"m{s.index}.{local}": flat[name] for s in self.slots for name, local in s.local.items()}
        return torch.func.functional_call(holder, params, (fn, kwargs), strict=False)


def _build(obj, flat: dict, holder):
    """The template ``obj`` with its leaves from ``flat`` and its modules from ``holder``.  Module-level: a
    recursive closure would be a reference cycle keeping every evaluation's tensors until the next GC."""
    if isinstance(obj, _Leaf):
        return flat[obj.name]
    if isinstance(obj, _ModuleSlot):
        return getattr(holder, f"m{obj.index}")
    if isinstance(obj, dict):
        return {k: _build(v, flat, holder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_build(v, flat, holder) for v in obj]
    if isinstance(obj, tuple):
        items = [_build(v, flat, holder) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def _flat_signature(names, fn):
    """A signature with the flat names as keywords (plus ``grad_output`` when ``fn`` takes it), so
    that callers who inspect ``manual`` (cotangents) still see what it accepts."""
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names if n.isidentifier()]
    try:
        orig = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        orig = {}
    if "grad_output" in orig:
        params.append(inspect.Parameter("grad_output", inspect.Parameter.KEYWORD_ONLY, default=None))
    params.append(inspect.Parameter("flat", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _wrap(fn, structure: _Structure, names: tuple, post=None):
    def flat_call(**kw):
        flat = {n: kw[n] for n in names if n in kw}
        extra = {k: v for k, v in kw.items() if k not in flat}
        out = structure.call(fn, flat, extra)
        return post(out) if post is not None else out

    flat_call.__signature__ = _flat_signature(names, fn)
    flat_call.__name__ = getattr(fn, "__name__", "loss")
    flat_call.__wrapped_by_gradcheck_kit__ = fn
    return flat_call


# -- wrt ------------------------------------------------------------------------------------------

def expand_wrt(wrt, names, keys=()) -> tuple | None:
    """Flat names for ``wrt``: exact names, structure keys (every tensor under them) and globs."""
    if wrt is None:
        return None
    if isinstance(wrt, str):
        wrt = (wrt,)
    out = []
    for w in wrt:
        if not isinstance(w, str):
            raise InvalidParameterError(f"wrt entries must be input names or glob patterns, got {w!r}.")
        if w in names:
            hits = [w]
        elif w in keys:
            hits = [n for n in names if n.startswith(w + ".")]
        elif any(c in w for c in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, w)]
            if not hits:
                raise InvalidParameterError(f"wrt pattern {w!r} matches no input (inputs: {', '.join(names)}).")
        else:
            hits = [w]  # unknown: _validate names it
        out += [h for h in hits if h not in out]
    return tuple(out)


# -- entry point ----------------------------------------------------------------------------------

def prepare(loss: Callable, inputs, manual: Callable | None, wrt) -> Prepared:
    """Flat inputs, and loss/manual taking them; the identity for a plain dict of real tensors."""
    if not isinstance(inputs, Mapping) or not callable(loss):
        return Prepared(loss, inputs, manual, wrt)  # _validate says what is wrong
    structured = any(_holds_tensors(v) and not isinstance(v, torch.Tensor) for v in inputs.values())
    has_complex = any(isinstance(v, torch.Tensor) and v.is_complex() for v in inputs.values())
    if not structured and not has_complex:
        names = tuple(inputs)
        tagged = tuple(n for n, t in inputs.items() if getattr(t, "_gradcheck_kit_complex", False))
        return Prepared(loss, inputs, manual, expand_wrt(wrt, names), complex_names=tagged)
    if structured:
        flat, template, modules = flatten(inputs)
        structure = _Structure(template, modules)
        names = tuple(flat)
        keys = tuple(inputs)
        wrt = expand_wrt(wrt, names, keys)
        loss = _wrap(loss, structure, names)
        manual = _wrap(manual, structure, names) if manual is not None else None
        inputs = flat
    else:
        wrt = expand_wrt(wrt, tuple(inputs))
    complex_names = tuple(n for n, t in inputs.items() if isinstance(t, torch.Tensor) and t.is_complex())
    if complex_names:
        from gradcheck_kit.modes import complex as _cx

        loss, inputs, manual = _cx.as_real(loss, inputs, manual, complex_names)
    return Prepared(loss, inputs, manual, wrt, complex_names, structured)
