"""Autograd Functions over the rules, and ``use_rules()``, which routes a model's calls through them.

    from gradcheck_kit.manual import functional as MF
    y = MF.conv2d(x, w, b, stride=2, padding=1)     # torch's signature; backward = the conv2d rule
    gx, = torch.autograd.grad(y.sum(), x, create_graph=True)   # any order: the rule's backward is
                                                               # public differentiable torch ops

    with use_rules(strict=True) as session:           # an unmodified model on explicit rules
        loss = F.cross_entropy(model(x), t)
        loss.backward()
    session.ops, session.missing

One ``torch.autograd.Function`` (``_RuleFunction``) serves every rule.  Its forward runs
``rule.forward_saved`` (the output plus what the rule's backward may reuse: max-pool
indices, batch-norm statistics, an activation's output); its backward runs
``rule.backward(g, ..., saved=...)``.  Higher derivatives: when autograd differentiates
the backward (``create_graph=True``) grad mode is on inside it, the inputs come back from
``ctx.saved_tensors`` with their history, and the rule's backward is an ordinary
differentiable torch program, so d(backward)/d(inputs, g) is autograd's derivative of the
rule's formula.  ``saved`` is then not used: it was computed without history, and the
rule recomputes it from the inputs (the registry's contract: same answer with or without).
A saved entry named like a tensor argument (relu's ``{"input": y}``) stands in for that argument
in the backward at every order, so the Function keeps it instead of the argument.

``functional.<name>`` exists for every registered rule (generated from the registry when
first used: ``functional.names()``).  ``no_weight_gradients()`` skips the weight gradient of
every convolution (as StyleGAN's ``conv2d_gradfix.no_weight_gradients()``): read when the
backward runs, process-wide, like the original.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.autograd.function import Function

from gradcheck_kit.errors import InvalidInputError, InvalidParameterError, MissingRuleError, UnsupportedError
from gradcheck_kit.trace import (BindError, Intercepted, RuleCall, _name_of, _Slot, _tensors, bind, listening,
                                 resolve, suspended)

__all__ = ["use_rules", "RuleSession", "MissingOp", "no_weight_gradients", "rules_manual", "apply_rule",
           "as_torch_returns", "names"]


# ---------------------------------------------------------------------------------------------
# no_weight_gradients
# ---------------------------------------------------------------------------------------------

_no_weight_lock = threading.Lock()
_no_weight_depth = 0


@contextmanager
def no_weight_gradients(disable: bool = True) -> Iterator[None]:
    """Inside, backwards of convolution rules do not compute the weight gradient (it is None)."""
    global _no_weight_depth
    if not disable:
        yield
        return
    with _no_weight_lock:
        _no_weight_depth += 1
    try:
        yield
    finally:
        with _no_weight_lock:
            _no_weight_depth -= 1


def _skips_weight(rule) -> bool:
    return _no_weight_depth > 0 and rule.name.startswith("conv") and "weight" in rule.tensor_args


# ---------------------------------------------------------------------------------------------
# the Function
# ---------------------------------------------------------------------------------------------

def _base(label: str) -> str:
    return label.split("[", 1)[0]


class _RuleFunction(Function):
    """forward: ``rule.forward_saved``; backward: ``rule.backward(..., saved=...)``."""

    _gradcheck_kit_internal = True

    @staticmethod
    def forward(ctx, call: RuleCall, *tensors):
        rule = call.rule
        args, params = call.build(tensors)
        # The generators' state, so that a backward recomputing without ``saved`` (create_graph)
        # draws what this forward drew (dropout's mask), as torch.utils.checkpoint does.
        ctx.rng = _rng_state(tensors) if rule.save_impl is not None else None
        with suspended():
            out, saved = rule.forward_saved(*args, **params)
        outs = out if isinstance(out, tuple) else (out,)
        target = tensors[call.args[0].k] if call.inplace else None
        fixed = []
        for o in outs:
            if isinstance(o, torch.Tensor) and any(o is t for t in tensors):
                o = o.view_as(o)   # an identity result must be a new tensor for autograd
            fixed.append(o)
        # A saved entry named like a tensor argument stands in for that argument in the backward,
        # at every order (the rule's claim, checked by tests/manual/test_functional.py): relu saves
        # {"input": y}, since 1[not y <= 0] = 1[not x <= 0], so x itself is not kept.
        stand_in = {k: saved[label] for k, label in enumerate(call.slot_names)
                    if isinstance(saved.get(label), torch.Tensor)}
        to_save = [stand_in.get(k, t) for k, t in enumerate(tensors)]
        ctx.cloned = False
        if call.inplace:
            # F.relu(x, inplace=True): computed out of place, then written into x.  The backward
            # needs x's old value: a copy of it, unless a stand-in was saved (relu: y, which is
            # now x itself).
            k0 = call.args[0].k
            if k0 not in stand_in:
                to_save[k0] = target.clone()
                ctx.cloned = True
            target.copy_(fixed[0])
            if stand_in.get(k0) is outs[0]:
                to_save[k0] = target
            fixed[0] = target
            ctx.mark_dirty(target)
        # Inputs a rule never differentiates (targets, running statistics) are kept as they are:
        # they carry no history, and batch norm updates its running statistics in place.
        ctx.constants = {}
        for k, (t, label) in enumerate(zip(to_save, call.slot_names)):
            if _base(label) in rule.nondifferentiable and not t.requires_grad:
                ctx.constants[k] = t
                to_save[k] = None
        used = {call.slot_names[k] for k in stand_in}
        keys = [k for k, v in saved.items() if isinstance(v, torch.Tensor) and k not in used]
        ctx.saved_static = {k: v for k, v in saved.items() if not isinstance(v, torch.Tensor)}
        ctx.saved_keys = keys
        ctx.n_inputs = len(tensors)
        ctx.save_for_backward(*to_save, *[saved[k] for k in keys])
        ctx.call = RuleCall(rule, call.args, call.params, (), call.slot_names, call.inplace)
        ctx.single = not isinstance(out, tuple)
        ctx.inplace = call.inplace
        ctx.set_materialize_grads(False)
        nondiff = [o for o in fixed if isinstance(o, torch.Tensor) and not (o.is_floating_point() or o.is_complex())]
        if nondiff:
            ctx.mark_non_differentiable(*nondiff)
        if call.keep_saved:
            call.saved = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in saved.items()}
        return fixed[0] if ctx.single else tuple(fixed)

    @staticmethod
    def backward(ctx, *grads):
        n = ctx.n_inputs
        if all(g is None for g in grads):
            return (None,) * (n + 1)
        call = ctx.call
        rule = call.rule
        stored = ctx.saved_tensors
        inputs = [ctx.constants[k] if k in ctx.constants else stored[k] for k in range(n)]
        create_graph = torch.is_grad_enabled()
        if ctx.cloned and create_graph:
            raise UnsupportedError(f"the second derivative through an in-place {rule.name} "
                                   f"({rule.name}(..., inplace=True)) is not supported; call it out of place.")
        saved = None if create_graph else {**ctx.saved_static, **dict(zip(ctx.saved_keys, stored[n:]))}
        args, params = call.build(inputs)
        needs = ctx.needs_input_grad[1:]
        rule_needs = []
        for name, a in zip(rule.tensor_args, call.args):
            if isinstance(a, _Slot):
                want = needs[a.k]
            elif rule.is_sequence_arg(name, a):
                want = tuple(needs[e.k] if isinstance(e, _Slot) else False for e in a)
            else:
                want = False
            if name == "weight" and _skips_weight(rule):
                want = False
            rule_needs.append(want)
        g = grads[0] if ctx.single else tuple(grads)
        with suspended(), _restored_rng(ctx.rng if saved is None else None):
            res = rule.backward(g, *args, needs_input_grad=rule_needs, saved=saved, **params)
        out: list = [None] * n
        for name, a, gr in zip(rule.tensor_args, call.args, res):
            if isinstance(a, _Slot):
                out[a.k] = gr
            elif rule.is_sequence_arg(name, a) and gr is not None:
                for e, ge in zip(a, gr):
                    if isinstance(e, _Slot):
                        out[e.k] = ge
        for k, v in call.params.items():
            if isinstance(v, _Slot):
                out[v.k] = res.keywords.get(k)
        out = [o if needs[i] else None for i, o in enumerate(out)]
        return (None, *out)


def _rng_state(tensors) -> tuple:
    cuda = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


@contextmanager
def _restored_rng(state) -> Iterator[None]:
    """Run with the generators as they were at the forward; their state afterwards is unchanged."""
    if state is None:
        yield
        return
    cpu, cuda = state
    with torch.random.fork_rng(devices=[d for d, _ in cuda]):
        torch.set_rng_state(cpu)
        for d, s in cuda:
            torch.cuda.set_rng_state(s, d)
        yield


def uncovered(call: RuleCall) -> str | None:
    """Why the rule cannot give every gradient autograd would (a tensor it does not differentiate
    requires grad), or None."""
    for k, (t, label) in enumerate(zip(call.tensors, call.slot_names)):
        if t.requires_grad and _base(label) in call.rule.nondifferentiable - call.rule.shape_only:
            return f"rule {call.rule.name!r} does not differentiate argument {_base(label)!r}, which requires grad"
    for name, v in list(zip(call.rule.tensor_args, call.args)) + list(call.params.items()):
        if not isinstance(v, _Slot) and any(t.requires_grad for t in _tensors(v)):
            return f"rule {call.rule.name!r} does not differentiate argument {name!r}, which requires grad"
    return None


def apply_rule(call: RuleCall):
    """Run one normalised call through its rule: forward, and (when a gradient may be asked) backward."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in call.tensors):
        return _RuleFunction.apply(call, *call.tensors)
    args, params = call.build(call.tensors)
    with suspended():
        out = call.rule.forward(*args, **params)
    if call.inplace:
        target = call.tensors[call.args[0].k]
        target.copy_(out)
        return target
    return out


def as_torch_returns(fn, out):
    """``out`` (a rule's outputs) as the type ``fn`` returns in torch: ``x.max(1)``, ``torch.sort``,
    ``kthvalue``, ``median`` along a dim give a ``torch.return_types.<name>`` (``.values``,
    ``.indices``); ``split``, ``chunk``, ``var_mean``, ``max_pool2d(..., return_indices=True)`` a
    plain tuple, as the rule does."""
    if type(out) is not tuple:
        return out
    rt = getattr(torch.return_types, _name_of(fn), None)
    if isinstance(rt, type) and issubclass(rt, tuple) and getattr(rt, "n_sequence_fields", -1) == len(out):
        return rt(out)
    return out


# ---------------------------------------------------------------------------------------------
# functional.<rule>
# ---------------------------------------------------------------------------------------------

def _make(rule) -> Callable:
    fn = rule.mirrors

    def f(*args, **kwargs):
        try:
            call = bind(rule, fn, args, kwargs)
        except BindError as e:
            raise InvalidParameterError(f"functional.{rule.name}: {e}.") from None
        why = uncovered(call) if torch.is_grad_enabled() else None
        if why:
            raise UnsupportedError(f"functional.{rule.name}: {why}.")
        return as_torch_returns(fn, apply_rule(call))

    f.__name__ = f.__qualname__ = rule.name
    f.__module__ = __name__
    f.__doc__ = (f"{rule.mirrors_name} with the explicit backward of rule {rule.name!r} "
                 f"(any order differentiable).\n\n{rule.doc}")
    try:
        from gradcheck_kit.trace import _binding_signature

        f.__signature__ = _binding_signature(fn, rule)[0]
    except Exception:  # pragma: no cover - a signature is documentation only
        pass
    return f


_GENERATED: dict[str, Callable] = {}


def names() -> list[str]:
    """Every rule name, i.e. every ``functional.<name>``."""
    from gradcheck_kit.manual.registry import names as rule_names

    return rule_names()


def __getattr__(name: str):
    from gradcheck_kit.manual import registry

    if name.startswith("__") and not registry._loaded:   # import machinery asking for __path__ etc.
        raise AttributeError(name)
    if name not in _GENERATED:
        from gradcheck_kit.manual.registry import _REGISTRY, _load

        _load()
        if name not in _REGISTRY:
            raise AttributeError(f"gradcheck_kit.manual.functional has no {name!r}: no rule of that name")
        _GENERATED[name] = _make(_REGISTRY[name])
    return _GENERATED[name]


def __dir__():
    return sorted(set(globals()) | set(names()))


# ---------------------------------------------------------------------------------------------
# use_rules
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MissingOp:
    """A differentiable call that autograd differentiated because no rule covered it."""

    op: str
    where: str
    code: str = ""
    reason: str = "no rule mirrors it"

    def __str__(self) -> str:
        return f"{self.op} at {self.where}" + ("" if self.reason == "no rule mirrors it" else f" ({self.reason})")


def _writes_grad_tensor(call: Intercepted) -> bool:
    """Did a call that ran through torch produce (or write into) a tensor that carries a gradient?"""
    res = call.result
    outs = res if isinstance(res, (tuple, list)) else (res,)
    inputs = [t for t, _ in call.versions or ()]
    for o in outs:
        if isinstance(o, torch.Tensor) and o.requires_grad:
            identity = any(o is t for t in inputs) and all(t._version == v for t, v in call.versions)
            if not identity:
                return True
    return any(t._version != v and t.requires_grad for t, v in call.versions or ())


class RuleSession:
    """What ``use_rules()`` yields: ``ops`` (rule names, in call order), ``missing`` (``MissingOp``s),
    ``functions`` (custom ``torch.autograd.Function`` classes that ran, by name)."""

    routes = True

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.ops: list[str] = []
        self.missing: list[MissingOp] = []
        self.functions: list[str] = []
        self._cm = None

    # -- listener protocol -----------------------------------------------------------------
    def before(self, call: Intercepted) -> None:
        if call.versions is None:
            call.versions = [(t, t._version) for t in _tensors((call.args, call.kwargs))]

    def route(self, call: Intercepted):
        if not torch.is_grad_enabled():
            return NotImplemented
        if not any(t.requires_grad for t, _ in call.versions):
            return NotImplemented
        rule, f, a, k, in_place = resolve(call.func, call.args, call.kwargs)
        if rule is None:
            return NotImplemented
        call.rule, call.bind_fn = rule, f
        try:
            rc = bind(rule, f, a, k, in_place)
        except BindError as e:
            call.bind_error = str(e)
            return NotImplemented
        except Exception as e:  # noqa: BLE001 - a call the binder cannot read: torch runs it, strict mode names it
            call.bind_error = f"the call could not be bound to the rule ({type(e).__name__}: {e})"
            return NotImplemented
        why = uncovered(rc)
        if why:
            call.bind_error = why
            return NotImplemented
        rc.keep_saved = _wants_saved()
        call.rule_call, call.via = rc, "rules"
        return as_torch_returns(call.func, apply_rule(rc))

    def after(self, call: Intercepted) -> None:
        if call.function is not None:
            self.functions.append(call.function.__name__)
        elif call.via == "rules":
            self.ops.append(call.rule.name)
        elif torch.is_grad_enabled() and _writes_grad_tensor(call):
            site = call.site
            self.missing.append(MissingOp(call.op if call.rule is None or call.bind_error is None else call.rule.name,
                                          site.where if site else "?", site.code if site else "",
                                          call.bind_error or "no rule mirrors it"))

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "RuleSession":
        self._cm = listening(self)
        self._cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        cm, self._cm = self._cm, None
        cm.__exit__(exc_type, exc, tb)
        if exc_type is None and self.strict and self.missing:
            raise MissingRuleError.from_ops(self.missing)
        return False

    def __repr__(self) -> str:
        return f"RuleSession(strict={self.strict}, ops={len(self.ops)}, missing={[str(m) for m in self.missing]})"


def _wants_saved() -> bool:
    from gradcheck_kit.trace import _state

    return any(getattr(lst, "wants_saved", False) for lst in _state.listeners)


def use_rules(strict: bool = True) -> RuleSession:
    """Inside, torch calls that have rules run through ``manual.functional`` (this thread only).

    ``strict=True``: a differentiable call with no rule is differentiated by autograd so the
    forward can finish, and leaving the block raises ``MissingRuleError`` listing every such
    op with its call site.  ``strict=False`` records them in ``session.missing`` only.
    """
    return RuleSession(strict=strict)


# ---------------------------------------------------------------------------------------------
# the rules as a ``manual`` for check()
# ---------------------------------------------------------------------------------------------

def rules_manual(loss: Callable, wrt=None) -> Callable[..., dict]:
    """``manual(**inputs) -> {name: gradient}``: ``loss``'s gradient computed by the rules alone.

    The forward runs under ``use_rules(strict=True)`` (an op without a rule raises
    ``MissingRuleError``) and a non-scalar loss is summed, as ``check`` does.  When the inputs
    given require grad, the gradients are returned with their graph (``create_graph``), so they
    can be differentiated again (``check(..., double_backward=True)``).
    """

    def manual(**inputs) -> dict:
        names_ = list(wrt) if wrt is not None else [k for k, v in inputs.items()
                                                    if isinstance(v, torch.Tensor) and v.is_floating_point()]
        for n in names_:
            if not isinstance(inputs.get(n), torch.Tensor) or not inputs[n].is_floating_point():
                raise InvalidInputError(f"rules_manual: input {n!r} is not a floating tensor.")
        create_graph = any(inputs[n].requires_grad for n in names_)
        leaves = {k: (v if (k not in names_ or v.requires_grad) else v.detach().requires_grad_(True))
                  for k, v in inputs.items()}
        with torch.enable_grad():
            with use_rules(strict=True):
                out = loss(**leaves)
                if not isinstance(out, torch.Tensor):
                    raise InvalidInputError(f"rules_manual: the loss returned {type(out).__name__}, not a tensor.")
                if out.numel() != 1:
                    out = out.sum()
            grads = torch.autograd.grad(out, [leaves[n] for n in names_], create_graph=create_graph,
                                        allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names_, grads)}

    manual.__name__ = f"rules_manual({getattr(loss, '__name__', 'loss')})"
    manual.__qualname__ = manual.__name__
    return manual
