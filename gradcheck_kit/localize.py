"""Localisation: check every node's backward on its own, at the inputs it saw, to find the wrong one.

    for r in localize(loss, {"x": x, "w": w}):
        print(r.index, r.op, r.where, r.ok, r.max_abs_err, r.hint)

The loss is recorded once (``gradcheck_kit.trace.record``); then for each differentiable node,
in forward order, with a seeded random cotangent ``v`` for its outputs:

* an op with a rule: the rule's backward ``rule.backward(v, ...)`` (with the saved forward
  results, as ``use_rules`` runs it) against autograd's ``vjp`` of the torch function;
* a custom ``torch.autograd.Function``: its own ``backward`` (``autograd.grad`` through
  ``Function.apply``) against a reference ``vjp`` of its ``forward``: through the rules
  (``use_rules(strict=True)``) when every op of the forward has one, else central finite
  differences in float64, ``d<v, f(x)>/dx_i = (<v, f(x + h e_i)> - <v, f(x - h e_i)>) / 2h``
  (random directions ``u`` instead of ``e_i`` above ``fd_limit`` elements);
* an op without a rule is autograd's own: listed with ``ok=None`` (not checked).

Node inputs are copies of the recorded values, so running a node again (batch norm's running
statistics, an in-place op) touches nothing of the caller's.
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

from gradcheck_kit._diff import tolerances
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.trace import Node, Trace, _tensors, record

__all__ = ["NodeResult", "localize"]

#: Above this many input elements a custom Function's finite differences use random directions.
FD_LIMIT = 2048
FD_DIRECTIONS = 6


@dataclass
class NodeResult:
    """One node's local backward check."""

    index: int
    op: str
    where: str
    ok: bool | None                # None: not checked (no rule, autograd's own op)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    worst_index: tuple | None = None
    hint: str = ""
    reference: str = ""            # "autograd", "rules", "finite-difference", ...
    input: str | None = None       # the argument where the worst error is

    def to_dict(self) -> dict:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        return d

    def __str__(self) -> str:
        status = {True: "ok", False: "FAIL", None: "not checked"}[self.ok]
        err = "" if self.max_abs_err is None else f" max_abs_err={self.max_abs_err:.3g}"
        return f"[{self.index}] {self.op} ({self.where}): {status}{err}" + (f"; {self.hint}" if self.hint else "")


def localize(loss: Callable, inputs: Mapping[str, Any], *, seed: int = 0, atol: float | None = None,
             rtol: float | None = None, wrt=None, fd_limit: int = FD_LIMIT) -> list[NodeResult]:
    """One ``NodeResult`` per differentiable node of ``loss(**inputs)``, in forward order."""
    tr = record(loss, inputs, wrt=wrt)
    results = []
    for node in tr.nodes:
        if not node.differentiable:
            continue
        gen = torch.Generator().manual_seed(seed * 100003 + node.index)
        if node.function is not None:
            r = _check_function(tr, node, gen, atol, rtol, fd_limit, seed)
        elif node.rule is not None:
            r = _check_rule(tr, node, gen, atol, rtol, seed)
        else:
            r = NodeResult(node.index, node.op, node.where, None, reference="none",
                           hint="not checked: no rule mirrors this op, so autograd's own backward is used")
        results.append(r)
    return results


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _clone(obj, leaf_ids=None, leaves=None, names=None, path="", dtype=None):
    """Copies of every tensor in ``obj``; tensors whose original id is in ``leaf_ids`` become leaves."""
    if isinstance(obj, torch.Tensor):
        c = obj.detach().clone(memory_format=torch.preserve_format)
        if dtype is not None and c.is_floating_point():
            c = c.to(dtype)
        if leaf_ids is not None and id(obj) in leaf_ids:
            c.requires_grad_(True)
            leaves.append(c)
            names.append(path)
        return c
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return type(obj)(_clone(o, leaf_ids, leaves, names, f"{path}[{i}]", dtype) for i, o in enumerate(obj))
    if isinstance(obj, dict):
        return {k: _clone(v, leaf_ids, leaves, names, k, dtype) for k, v in obj.items()}
    return obj


def _outs(out) -> list[torch.Tensor]:
    return [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if _is_float(o)]


def _cotangents(outs, gen) -> list[torch.Tensor]:
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]


@dataclass
class _Cmp:
    ok: bool
    abs_err: float
    rel_err: float
    worst: tuple | None
    got: float | None = None
    want: float | None = None


def _compare(m: torch.Tensor | None, r: torch.Tensor | None, atol, rtol, reference: str, order_dtype) -> _Cmp:
    if r is None and m is None:
        return _Cmp(True, 0.0, 0.0, None)
    if m is None or r is None:
        other = (r if m is None else m).detach()
        nz = bool(other.ne(0).any())
        worst = tuple(int(i) for i in torch.nonzero(other.ne(0))[0]) if nz else None
        return _Cmp(not nz, float(other.abs().max()) if other.numel() else 0.0, math.inf if nz else 0.0, worst,
                    None if m is None else float(other.reshape(-1)[0]),
                    None if r is None else float(other.reshape(-1)[0]))
    m, r = m.detach(), r.detach().to(m.dtype)
    if m.shape != r.shape:
        return _Cmp(False, math.inf, math.inf, None)
    if m.numel() == 0:
        return _Cmp(True, 0.0, 0.0, None)
    scale = float(r.abs().max()) if torch.isfinite(r).all() else 1.0
    a0, r0 = tolerances(order_dtype, scale, reference=reference)
    a, rt = (atol if atol is not None else a0), (rtol if rtol is not None else r0)
    diff = (m.double() - r.double()).abs()
    both_nan = torch.isnan(m) & torch.isnan(r)
    same_inf = torch.isinf(m) & (m == r)
    diff = torch.where(both_nan | same_inf, torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=math.inf)
    excess = diff - (a + rt * r.double().abs())
    k = int(torch.argmax(excess.reshape(-1)))
    worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(k), m.shape)) if m.dim() else ()
    rel = diff / r.double().abs().clamp_min(1e-300)
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    return _Cmp(bool((excess <= 0).all()), float(diff.max()), float(rel.max()), worst,
                float(m.reshape(-1)[k]), float(r.reshape(-1)[k]))


def _hint(m, r) -> str:
    """A diagnosis of how the subject gradient relates to the reference."""
    if m is None:
        return "the backward returned None for an input that has a nonzero gradient"
    if r is None:
        return "the backward returned a gradient for an input the forward does not depend on"
    m, r = m.detach().double(), r.detach().double()
    if m.shape != r.shape:
        return f"the backward's gradient has shape {tuple(m.shape)}, the input {tuple(r.shape)}"
    nz = r.abs() > 1e-12 * max(1.0, float(r.abs().max()))
    if not bool(m.abs().gt(0).any()):
        return "the backward's gradient is all zeros"
    if bool(nz.any()):
        ratio = m[nz] / r[nz]
        c = float(ratio.median())
        if float((ratio - c).abs().max()) <= 1e-3 * max(1.0, abs(c)) and abs(c - 1) > 1e-3:
            if abs(c + 1) < 1e-3:
                return "the backward's gradient has the wrong sign"
            return f"the backward's gradient is {c:.4g} times the reference (a missing or extra factor)"
    if m.dim() == 2 and m.shape[0] == m.shape[1] and torch.allclose(m.T, r, rtol=1e-4, atol=1e-6):
        return "the backward's gradient is the transpose of the reference"
    return "the backward's formula differs from the forward's derivative; derive it again for this input"


def _finish(node: Node, cmps: list, names: list, subject, reference, ref_name: str,
            extra_hint: str = "") -> NodeResult:
    if not cmps:
        return NodeResult(node.index, node.op, node.where, None, reference=ref_name,
                          hint="not checked: no differentiable input")
    bad = [i for i, c in enumerate(cmps) if not c.ok]
    pick = bad[0] if bad else max(range(len(cmps)), key=lambda i: cmps[i].abs_err)
    c = cmps[pick]
    hint = ""
    if bad:
        hint = (f"d/d{names[pick]}: {_hint(subject[pick], reference[pick])}"
                + (f" (at {list(c.worst)}: got {c.got:.6g}, expected {c.want:.6g})"
                   if c.worst is not None and c.got is not None and c.want is not None else ""))
    if extra_hint:
        hint = f"{hint}; {extra_hint}" if hint else extra_hint
    return NodeResult(node.index, node.op, node.where, not bad, max(x.abs_err for x in cmps),
                      max(x.rel_err for x in cmps), c.worst, hint, ref_name, names[pick])


# ---------------------------------------------------------------------------------------------
# an op with a rule: the rule against autograd
# ---------------------------------------------------------------------------------------------

def _check_rule(tr: Trace, node: Node, gen, atol, rtol, seed) -> NodeResult:
    rule = node.rule
    args = tr.materialize(node.rule_args)
    kwargs = tr.materialize(dict(node.rule_kwargs))
    kwargs.pop("inplace", None)
    diff_ids = set()
    mask = rule.differentiable_mask(args)
    for a, m in zip(args, mask):
        if m:
            diff_ids.update(id(t) for t in _tensors(a) if _is_float(t))
    for k in rule.keyword_tensors:
        if _is_float(kwargs.get(k)) and k not in rule.nondifferentiable:
            diff_ids.add(id(kwargs[k]))
    leaves, names = [], []
    a_ref = _clone(tuple(args), diff_ids, leaves, names)
    k_ref = _clone(kwargs, diff_ids, leaves, names)
    label = [_arg_label(rule.tensor_args, n) for n in names]
    try:
        with torch.random.fork_rng(devices=_cuda(leaves)), torch.enable_grad():
            torch.manual_seed(seed)
            out = rule.torch_fn(*a_ref, **k_ref)
            outs = _outs(out)
            vs = _cotangents(outs, gen)
            pairs = [(o, v) for o, v in zip(outs, vs) if o.requires_grad]
            ref = list(torch.autograd.grad([o for o, _ in pairs], leaves, [v for _, v in pairs],
                                           allow_unused=True)) if pairs else [None] * len(leaves)
        a_me, k_me = _clone(tuple(args)), _clone(kwargs)
        with torch.random.fork_rng(devices=_cuda(leaves)), torch.no_grad():
            torch.manual_seed(seed)
            _, saved = rule.forward_saved(*a_me, **k_me)
            g = _grad_output(out, vs)
            grads = rule.backward(g, *a_me, saved=saved, **k_me)
    except GradcheckKitError:
        raise
    except Exception as e:  # a rule that cannot run at this node's inputs is a failing node
        return NodeResult(node.index, node.op, node.where, False, reference="autograd",
                          hint=f"the rule raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    mine = _flatten_rule_grads(rule, args, kwargs, grads, diff_ids)
    cmps = [_compare(m, r, atol, rtol, "autograd", l.dtype) for m, r, l in zip(mine, ref, leaves)]
    return _finish(node, cmps, label, mine, ref, "autograd")


def _arg_label(tensor_args, path: str) -> str:
    if path.startswith("[") and "]" in path:
        i = int(path[1:path.index("]")])
        base = tensor_args[i] if i < len(tensor_args) else f"arg{i}"
        return base + path[path.index("]") + 1:]
    return path


def _grad_output(out, vs):
    if not isinstance(out, (tuple, list)):
        return vs[0]
    it = iter(vs)
    return tuple(next(it) if _is_float(o) else None for o in out)


def _flatten_rule_grads(rule, args, kwargs, grads, diff_ids) -> list:
    """The rule's gradients in the order the leaves were made (positional, sequences, keywords)."""
    out = []
    for a, g in zip(args, list(grads) + [None] * (len(args) - len(grads))):
        if isinstance(a, torch.Tensor):
            if id(a) in diff_ids:
                out.append(g)
        elif isinstance(a, (list, tuple)):
            gs = list(g) if isinstance(g, (list, tuple)) else [None] * len(a)
            for e, ge in zip(a, gs):
                if isinstance(e, torch.Tensor) and id(e) in diff_ids:
                    out.append(ge)
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and id(v) in diff_ids:
            out.append(grads.keywords.get(k))
    return out


def _cuda(ts) -> list[int]:
    return sorted({t.device.index or 0 for t in ts if t.is_cuda})


# ---------------------------------------------------------------------------------------------
# a custom torch.autograd.Function: its backward against a vjp of its forward
# ---------------------------------------------------------------------------------------------

class _Ctx:
    """Stands in for the ``ctx`` of a Function's forward run outside ``Function.apply``."""

    def __init__(self, n):
        self.needs_input_grad = (True,) * n
        self.saved_tensors = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        self.materialize_grads = value


def _forward_body(cls, args, kwargs):
    """Run ``cls.forward`` directly (not through ``apply``), so autograd or the rules can see inside."""
    if cls.setup_context is not torch.autograd.Function.setup_context:   # forward(*args) + setup_context
        return cls.forward(*args, **kwargs)
    return cls.forward(_Ctx(len(args)), *args, **kwargs)


def _arg_names(cls, n) -> list[str]:
    try:
        ps = list(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        ps = []
    if cls.setup_context is torch.autograd.Function.setup_context and ps:
        ps = ps[1:]   # ctx
    return [ps[i] if i < len(ps) else f"arg{i}" for i in range(n)]


def _check_function(tr: Trace, node: Node, gen, atol, rtol, fd_limit, seed) -> NodeResult:
    cls = node.function
    args = tr.materialize(node.args)
    kwargs = tr.materialize(node.kwargs)
    from gradcheck_kit.trace import Ref, _map

    refs: list = []
    _map((node.args, node.kwargs), refs.append, leaf=Ref)
    want = {id(tr.tensor(r)) for r in refs if tr.values[r.id].requires_grad and _is_float(tr.tensor(r))}
    arg_names = _arg_names(cls, len(args))
    leaves, paths = [], []
    a_sub = _clone(tuple(args), want, leaves, paths)
    k_sub = _clone(dict(kwargs), want, leaves, paths)
    names = [_arg_label(arg_names, p) for p in paths]
    if not leaves:
        return NodeResult(node.index, node.op, node.where, None, reference="none",
                          hint="not checked: no input of the Function requires grad")
    # the subject: the Function's own backward
    with torch.random.fork_rng(devices=_cuda(leaves)), torch.enable_grad():
        torch.manual_seed(seed)
        out = cls.apply(*a_sub, **k_sub)
        outs = _outs(out)
        vs = _cotangents(outs, gen)
        pairs = [(o, v) for o, v in zip(outs, vs) if o.requires_grad]
        if not pairs:
            return NodeResult(node.index, node.op, node.where, None, reference="none",
                              hint="not checked: the Function's outputs carry no gradient")
        try:
            subject = list(torch.autograd.grad([o for o, _ in pairs], leaves, [v for _, v in pairs],
                                               allow_unused=True))
        except Exception as e:
            return NodeResult(node.index, node.op, node.where, False, reference="none",
                              hint=f"its backward raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    ref, how, note = _reference_vjp(cls, args, kwargs, want, vs, len(outs), seed, fd_limit, gen)
    if how.startswith("finite-difference (random"):
        # projections: compare <subject, u> with the directional derivative, per direction
        sub_proj = [sum(float((s.double() * u).sum()) for s, u in zip(subject, us) if s is not None)
                    for us in ref["dirs"]]
        cmps = [_compare(torch.tensor(sub_proj, dtype=torch.float64), torch.tensor(ref["vals"]),
                         atol, rtol, "fd", leaves[0].dtype)]
        res = _finish(node, cmps, ["(random directions)"], [torch.tensor(sub_proj)], [torch.tensor(ref["vals"])],
                      how, note)
        res.worst_index = None
        return res
    order_dtype = leaves[0].dtype
    kind = "fd" if how.startswith("finite") else "autograd"
    cmps = [_compare(s, r, atol, rtol, kind, order_dtype) for s, r in zip(subject, ref)]
    return _finish(node, cmps, names, subject, ref, how, note)


def _reference_vjp(cls, args, kwargs, want, vs, n_out, seed, fd_limit, gen):
    """(reference gradients per leaf, how they were computed, note)."""
    from gradcheck_kit.errors import MissingRuleError
    from gradcheck_kit.manual.functional import use_rules

    leaves, paths = [], []
    a = _clone(tuple(args), want, leaves, paths)
    k = _clone(dict(kwargs), want, leaves, paths)
    note = ""
    try:
        with torch.random.fork_rng(devices=_cuda(leaves)), torch.enable_grad():
            torch.manual_seed(seed)
            with use_rules(strict=True):
                out = _forward_body(cls, a, k)
            outs = _outs(out)
            pairs = [(o, v) for o, v in zip(outs, vs) if o.requires_grad]
            if len(outs) == n_out and pairs:
                return (list(torch.autograd.grad([o for o, _ in pairs], leaves, [v for _, v in pairs],
                                                 allow_unused=True)), "rules", "")
            note = "its forward is not built from differentiable torch ops"
    except MissingRuleError as e:
        note = "its forward uses ops without rules (" + ", ".join(dict.fromkeys(m.op for m in e.ops)) + ")"
    except Exception as e:  # a forward that cannot run outside apply (uses ctx beyond the stand-in)
        note = f"its forward did not run under the rules ({type(e).__name__})"
    return _fd_vjp(cls, args, kwargs, want, vs, seed, fd_limit, gen, note)


def _fd_vjp(cls, args, kwargs, want, vs, seed, fd_limit, gen, note):
    leaves, paths = [], []
    dtype = torch.float64
    try:
        a = _clone(tuple(args), want, leaves, paths, dtype=dtype)
        k = _clone(dict(kwargs), want, leaves, paths, dtype=dtype)
        _f(cls, a, k, vs, seed)
    except Exception:
        leaves, paths = [], []
        a = _clone(tuple(args), want, leaves, paths)
        k = _clone(dict(kwargs), want, leaves, paths)
        dtype = leaves[0].dtype
        note = (note + "; " if note else "") + f"the forward does not run in float64, differences in {dtype}"
    xs = [lf.requires_grad_(False) for lf in leaves]   # perturbed in place below
    eps = 1e-6 if dtype == torch.float64 else 1e-3
    total = sum(x.numel() for x in xs)
    if total <= fd_limit:
        grads = []
        for x in xs:
            gx = torch.zeros(x.shape, dtype=torch.float64)
            for idx in itertools.product(*(range(n) for n in x.shape)):
                old = float(x[idx])
                h = eps * max(1.0, abs(old))
                x[idx] = old + h
                fp = _f(cls, a, k, vs, seed)
                x[idx] = old - h
                fm = _f(cls, a, k, vs, seed)
                x[idx] = old
                gx[idx] = (fp - fm) / (2 * h)
            grads.append(gx.to(x.device))
        return grads, "finite-difference", (note + "; " if note else "") + "reference: central differences"
    dirs, vals = [], []
    for _ in range(FD_DIRECTIONS):
        us = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in xs]
        olds = [x.clone() for x in xs]
        for x, u in zip(xs, us):
            x.add_(eps * u.to(x.dtype))
        fp = _f(cls, a, k, vs, seed)
        for x, o, u in zip(xs, olds, us):
            x.copy_(o - eps * u.to(x.dtype))
        fm = _f(cls, a, k, vs, seed)
        for x, o in zip(xs, olds):
            x.copy_(o)
        dirs.append(us)
        vals.append((fp - fm) / (2 * eps))
    return ({"dirs": dirs, "vals": vals}, f"finite-difference (random directions, {total} elements)",
            (note + "; " if note else "") + f"reference: {FD_DIRECTIONS} directional central differences")


def _f(cls, a, k, vs, seed) -> float:
    """<v, f(x)> in float64."""
    with torch.random.fork_rng(devices=_cuda(_tensors((a, k)))), torch.no_grad():
        torch.manual_seed(seed)
        outs = _outs(cls.apply(*a, **k))
    return float(sum((o.double() * v.double()).sum() for o, v in zip(outs, vs)))
