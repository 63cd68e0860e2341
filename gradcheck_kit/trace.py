"""The op recording: a loss's forward as a graph of torch calls, each mapped onto its rule.

    tr = record(loss, {"x": x, "w1": w1, "w2": w2})
    for node in tr.nodes:                      # forward order
        print(node.index, node.op, node.site.where, node.out_shapes)
    print(tr)                                  # one line per node

Data model (what ``gradcheck_kit.emit`` and ``localize`` build on):

* **Values.**  Every tensor the forward touches is a ``Value`` with an integer id:
  ``trace.inputs`` maps the loss's argument names to ids, ``trace.values[id]`` holds the
  shape, dtype, device, ``requires_grad``, the producing node (``None`` for inputs and
  for leaves first seen as an argument: parameters, buffers, constants) and the tensor
  itself (``trace.tensor(id)``, detached).  An in-place op gives its target a new id.
* **Nodes.**  ``trace.nodes`` in forward order.  ``Node.op`` is the rule's name, or a
  readable torch name (``Tensor.view``) when no rule mirrors the callable; ``node.rule``
  the ``Rule`` or ``None``; ``node.fn`` the callable that was called.  ``node.args`` /
  ``node.kwargs`` are the call as written with every tensor replaced by ``Ref(id)``
  (constants stay data); for a rule, ``node.rule_args`` / ``node.rule_kwargs`` are the same
  call normalised to the rule's form (its declared tensors positionally, every other
  argument by name), so ``rule.backward(g, *rule_args, **rule_kwargs)`` is the node's
  backward.  ``node.outputs`` are the output ids (``None`` for a non-tensor output),
  ``node.out_shapes`` / ``node.out_dtypes`` their metadata, ``node.differentiable`` whether
  an output carries a gradient, ``node.saved`` the rule's saved forward results when the
  call ran through the rules (``use_rules``), ``node.site`` the call site (file, line,
  function, source text, and the variable the line assigns, e.g. ``z1`` for
  ``z1 = F.conv2d(...)``; kept on the last node of a line only, so an emitter can reuse the
  user's names).
* **Custom Functions.**  A ``torch.autograd.Function`` is one node with ``node.function``
  set to its class (``op`` is the class name); the ops its forward ran are
  ``node.children`` (nodes with their own indices, same value ids).  ``TorchFunctionMode``
  does not see ``Function.apply``, so within a recording ``Function.apply`` is wrapped
  (for this thread only; other threads call the original), and an ``apply`` bound before
  the recording began (``act = MyRelu.apply``) is seen by a profile hook on torch's
  ``Function.apply`` frames, installed in the recording's thread only while it records
  (an existing Python profiler is chained and restored; a C profiler such as cProfile is
  left alone, and then only the wrapped attribute is seen).
* ``trace.outputs``: ids of the loss's outputs; ``trace.result``: the loss value.

The interception is one ``TorchFunctionMode`` per thread (``_Engine``) shared by every
active recording and ``use_rules`` session of that thread, so nesting composes and
other threads are untouched.  Calls made while the autograd engine runs a backward, and
calls made by the kit itself while a rule runs, are not intercepted.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import sys
import threading
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.autograd.function import Function
from torch.overrides import TorchFunctionMode

from gradcheck_kit.errors import InvalidInputError

__all__ = ["CallSite", "Ref", "Value", "Node", "Trace", "record", "recording", "resolve", "bind",
           "RuleCall", "BindError", "call_site"]


# ---------------------------------------------------------------------------------------------
# data model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """A reference to a recorded value (``trace.values[ref.id]``) standing in for a tensor argument."""

    id: int

    def __repr__(self) -> str:
        return f"%{self.id}"


@dataclass(frozen=True)
class CallSite:
    """Where a call was made: the first frame outside torch and gradcheck_kit."""

    file: str
    line: int
    function: str
    code: str = ""
    assigned: str | None = None     # ``z1`` for ``z1 = F.conv2d(...)``

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def __str__(self) -> str:
        return self.where


@dataclass
class Value:
    id: int
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    producer: int | None = None     # index of the node that produced it (None: input or leaf)
    name: str | None = None         # the loss's argument name for inputs
    tensor: torch.Tensor | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "input" if self.name is not None else ("leaf" if self.producer is None else "op")


@dataclass
class Node:
    index: int
    op: str
    fn: Callable
    rule: Any = None                # gradcheck_kit.manual.registry.Rule or None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    rule_args: tuple | None = None
    rule_kwargs: dict | None = None
    outputs: tuple = ()
    out_shapes: tuple = ()
    out_dtypes: tuple = ()
    site: CallSite | None = None
    differentiable: bool = False
    saved: dict | None = None
    function: type | None = None    # the torch.autograd.Function subclass, for custom Functions
    children: list = field(default_factory=list)
    via: str = "torch"              # "rules" when it ran through use_rules, "function", or "torch"

    @property
    def where(self) -> str:
        return self.site.where if self.site else "?"

    def __str__(self) -> str:
        outs = ", ".join(f"%{o}" for o in self.outputs if o is not None)
        shapes = ", ".join("x".join(map(str, s)) or "scalar" for s in self.out_shapes if s is not None)
        ins = ", ".join([repr(a) for a in (self.rule_args if self.rule_args is not None else self.args)] +
                        [f"{k}={v!r}" for k, v in (self.rule_kwargs if self.rule_kwargs is not None
                                                   else self.kwargs).items()])
        name = f" {self.site.assigned} =" if self.site and self.site.assigned else ""
        return f"[{self.index}]{name} {outs} = {self.op}({ins})  # {shapes}  {self.where}"


@dataclass
class Trace:
    inputs: dict = field(default_factory=dict)          # name -> value id
    values: dict = field(default_factory=dict)          # id -> Value
    nodes: list = field(default_factory=list)
    outputs: tuple = ()
    result: Any = None

    def tensor(self, ref) -> torch.Tensor:
        """The recorded tensor for a value id or ``Ref``."""
        return self.values[ref.id if isinstance(ref, Ref) else ref].tensor

    def materialize(self, obj):
        """``obj`` (an args tuple, kwargs dict, ...) with every ``Ref`` replaced by its recorded tensor."""
        return _map(obj, lambda r: self.tensor(r) if isinstance(r, Ref) else r, leaf=Ref)

    def uses(self, ref) -> list[Node]:
        """The nodes that read a value (forward order): a weight used twice has two, and its
        gradient is the sum of both terms."""
        vid = ref.id if isinstance(ref, Ref) else ref
        found = []
        for n in self.nodes:
            refs: list = []
            _map((n.args, n.kwargs), refs.append, leaf=Ref)
            if any(r.id == vid for r in refs):
                found.append(n)
        return found

    @property
    def missing(self) -> list[Node]:
        """Differentiable nodes that no rule mirrors (custom Functions excluded)."""
        return [n for n in self.nodes if n.differentiable and n.rule is None and n.function is None]

    def __str__(self) -> str:
        ins = ", ".join(f"{k}=%{v}" for k, v in self.inputs.items())
        lines = [f"inputs: {ins}"] + [str(n) for n in self.nodes]
        lines.append("outputs: " + ", ".join(f"%{o}" for o in self.outputs))
        return "\n".join(lines)


def _map(obj, fn, leaf=torch.Tensor):
    """Apply ``fn`` to every ``leaf`` inside nested lists, tuples and dicts."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, torch.Size):
        return obj
    if isinstance(obj, (list, tuple)):
        out = [_map(o, fn, leaf) for o in obj]
        return type(obj)(out) if not hasattr(obj, "_fields") else type(obj)(*out)
    if isinstance(obj, dict):
        return {k: _map(v, fn, leaf) for k, v in obj.items()}
    return obj


def _tensors(obj) -> list[torch.Tensor]:
    out: list = []
    _collect(obj, out)
    return out


def _collect(obj, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for o in obj:
            _collect(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _collect(o, out)


# ---------------------------------------------------------------------------------------------
# call sites
# ---------------------------------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_KIT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKIP = (_TORCH_DIR, _KIT_DIR, os.path.dirname(__import__("contextlib").__file__) + os.sep + "contextlib")


def call_site(skip: int = 1) -> CallSite | None:
    """The innermost frame outside torch, gradcheck_kit and contextlib: file, line, function, code, target."""
    return _site_from(sys._getframe(skip))


def _site_from(frame) -> CallSite | None:
    """``call_site`` starting at ``frame`` (itself included) and walking outwards."""
    while frame is not None:
        fname = frame.f_code.co_filename
        if not (fname.startswith(_SKIP) or fname.startswith("<frozen")):
            code = linecache.getline(fname, frame.f_lineno).strip()
            return CallSite(fname, frame.f_lineno, frame.f_code.co_name, code, _assigned_name(code))
        frame = frame.f_back
    return None


@functools.lru_cache(maxsize=4096)
def _assigned_name(code: str) -> str | None:
    """``z1`` for ``z1 = F.conv2d(x, w)``; None for anything else (tuples, attributes, no assignment)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # a call spread over several lines: the first line may still be `name = f(`
        head = code.split("=", 1)
        if len(head) == 2 and head[0].strip().isidentifier() and not head[1].startswith("="):
            return head[0].strip()
        return None
    if len(tree.body) == 1:
        st = tree.body[0]
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            return st.targets[0].id
        if isinstance(st, (ast.AnnAssign, ast.AugAssign)) and isinstance(st.target, ast.Name):
            return st.target.id
    return None


# ---------------------------------------------------------------------------------------------
# mapping a torch call onto a rule
# ---------------------------------------------------------------------------------------------

# Operators reach __torch_function__ as dunder methods; the rule mirrors the named method or function.
_OPERATORS = {"__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div", "__div__": "div",
              "__matmul__": "matmul", "__pow__": "pow", "__neg__": "neg", "__abs__": "abs",
              "__radd__": "add", "__rmul__": "mul"}
# Reflected operators whose argument order differs: other OP self.
_REFLECTED = {"__rsub__": "sub", "__rtruediv__": "div", "__rdiv__": "div", "__rpow__": "pow",
              "__rmatmul__": "matmul"}


def _rule_for(fn):
    from gradcheck_kit.manual.registry import for_callable

    return for_callable(fn)


def _by_name(name: str):
    """The rule mirroring ``torch.Tensor.<name>`` or else ``torch.<name>``."""
    for ns in (torch.Tensor, torch):
        f = getattr(ns, name, None)
        if f is not None:
            r = _rule_for(f)
            if r is not None:
                return r, f
    return None, None


def resolve(func, args, kwargs):
    """``(rule or None, callable to bind against, args, kwargs, in_place)`` for one intercepted call.

    ``x + y`` arrives as ``Tensor.__add__``; ``2 - x`` as ``Tensor.__rsub__(x, 2)``, which is
    ``sub(2, x)`` with the number made a 0-d tensor of x's dtype (so promotion is unchanged).
    ``x.add_(y)``, ``x += y``, ``x.relu_()`` are the out-of-place rule written back into ``x``
    (``in_place`` True).
    """
    rule, f, args, kwargs = _resolve(func, args, kwargs)
    if rule is not None:
        return rule, f, args, kwargs, False
    name = _name_of(func)
    if name.startswith("__i") and name.endswith("__") and name[3:-2] in ("add", "sub", "mul", "truediv", "pow"):
        name = {"truediv": "div"}.get(name[3:-2], name[3:-2]) + "_"
    if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor):
        rule, f = _by_name(name[:-1])
        if rule is not None:
            return rule, f, args, kwargs, True
    return None, func, args, kwargs, False


@functools.lru_cache(maxsize=1)
def _tensor_attr_names() -> dict:
    """id(torch.Tensor attribute) -> the name it has there (``Tensor.__pow__.__name__`` is "pow")."""
    out = {}
    for cls in (torch._C.TensorBase, torch.Tensor):
        for n, v in vars(cls).items():
            out.setdefault(id(v), n)
            out[id(getattr(torch.Tensor, n, None))] = n
    return out


def _name_of(func) -> str:
    return _tensor_attr_names().get(id(func)) or getattr(func, "__name__", "")


@functools.lru_cache(maxsize=1)
def _with_indices() -> dict:
    """``F.max_pool2d(x, k, return_indices=True)`` reaches __torch_function__ as
    ``F.max_pool2d_with_indices``: the same rule, asked for the indices."""
    import torch.nn.functional as F

    out = {}
    for kind in ("max_pool", "adaptive_max_pool"):
        for d in (1, 2, 3):
            f = getattr(F, f"{kind}{d}d_with_indices", None)
            if f is not None:
                out[f] = f"{kind}{d}d"
    return out


def _resolve(func, args, kwargs):
    rule = _rule_for(func)
    if rule is not None:
        return rule, func, args, kwargs
    try:
        base = _with_indices().get(func)
    except TypeError:
        base = None
    if base is not None:
        from gradcheck_kit.manual.registry import _REGISTRY

        rule = _REGISTRY.get(base)
        if rule is not None:
            return rule, rule.mirrors, args, {**kwargs, "return_indices": True}
    name = _name_of(func)
    if getattr(torch.Tensor, name, None) is func and not name.startswith("_"):
        # a method variant with no alias yet: Tensor.foo(self, ...) is torch.foo(input=self, ...)
        f = getattr(torch, name, None)
        rule = _rule_for(f) if f is not None else None
        if rule is not None:
            return rule, f, args, kwargs
    if name in _OPERATORS:
        rule, f = _by_name(_OPERATORS[name])
        if rule is not None:
            return rule, f, args, kwargs
    if name in _REFLECTED and len(args) == 2 and not kwargs:
        rule, f = _by_name(_REFLECTED[name])
        if rule is not None:
            self, other = args
            if not isinstance(other, torch.Tensor):
                other = torch.as_tensor(other, dtype=self.dtype if self.is_floating_point() else None,
                                        device=self.device)
            return rule, f, (other, self), {}
    return None, func, args, kwargs


def op_name(func) -> str:
    """A readable name for a torch callable: ``Tensor.view``, ``torch.cat``, ``F.conv2d``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if getattr(torch.Tensor, name, None) is func:
        return f"Tensor.{name}"
    import torch.nn.functional as F

    if getattr(F, name, None) is func:
        return f"F.{name}"
    if getattr(torch, name, None) is func:
        return f"torch.{name}"
    owner = getattr(func, "__self__", None)  # e.g. Tensor.shape.__get__
    if owner is not None and hasattr(owner, "__name__"):
        return f"{getattr(owner, '__qualname__', owner.__name__)}.{name}"
    return getattr(func, "__qualname__", name)


class BindError(Exception):
    """A call could not be normalised to its rule's form (the reason is the message)."""


@dataclass(frozen=True)
class _Slot:
    """Placeholder for the k-th differentiable-candidate tensor of a normalised call."""

    k: int


@dataclass
class RuleCall:
    """One call in its rule's form, with the tensors pulled out (``tensors``) and slots in their place.

    ``build(tensors)`` puts tensors (the originals, or autograd's unpacked copies) back:
    ``args, params = call.build(ts)``; then ``rule.forward(*args, **params)``.
    """

    rule: Any
    args: tuple           # one entry per positional tensor argument; tensors -> _Slot, sequences -> tuple
    params: dict          # every other argument by name; keyword tensors -> _Slot
    tensors: tuple        # the tensors, in slot order
    slot_names: tuple     # argument name of each slot (``tensors[3]`` for a sequence element)
    inplace: bool = False
    keep_saved: bool = False      # a recording wants the rule's saved forward results
    saved: dict | None = None     # set by manual.functional when the forward ran through the rule

    def build(self, tensors) -> tuple[tuple, dict]:
        return tuple(_put(a, tensors) for a in self.args), {k: _put(v, tensors) for k, v in self.params.items()}


def _put(o, tensors):
    """``o`` with its slots filled from ``tensors``.  A module-level function on purpose: a recursive closure
    is a reference cycle (function -> cell -> function) that would keep ``tensors`` (the forward's
    activations) alive until the garbage collector runs: 16 MB more at seed 002's peak."""
    if isinstance(o, _Slot):
        return tensors[o.k]
    if isinstance(o, tuple):
        return tuple(_put(e, tensors) for e in o)
    if isinstance(o, list):
        return [_put(e, tensors) for e in o]
    return o


_INTERNAL_PARAMS = ("grad_output", "needs_input_grad", "needs_keyword_grad", "saved")


_BINDERS: dict = {}


@dataclass(frozen=True)
class _Binder:
    """How to bind calls of one callable to one rule (precomputed once per pair)."""

    signature: inspect.Signature
    positional: tuple           # names that positional arguments fill, in order
    keyword: frozenset          # names a keyword argument may use
    accepted: frozenset         # names the rule's backward takes
    var_kw: bool
    defaults: dict              # defaults of the rule's tensor arguments


def _binding_signature(fn, rule) -> tuple[inspect.Signature, frozenset, bool]:
    b = _binders(fn, rule)[0]
    return b.signature, b.accepted, b.var_kw


@functools.lru_cache(maxsize=1)
def _overrides() -> dict:
    """torch's own Python signatures of its builtins (``torch.softmax(input, dim, dtype=None)``)."""
    try:
        return torch.overrides.get_testing_overrides()
    except Exception:  # pragma: no cover - a torch without it
        return {}


def _required_tensors(rule) -> tuple:
    """The rule's tensor arguments its backward requires (no default): every binding must name them."""
    impl = inspect.signature(rule.backward_impl).parameters
    return tuple(t for t in rule.tensor_args if t in impl and impl[t].default is inspect.Parameter.empty)


def _binders(fn, rule) -> list:
    """Candidate ways to bind calls of ``fn`` to ``rule``, most faithful first (computed once per pair)."""
    key = (fn, rule.name)
    try:
        return _BINDERS[key]
    except (KeyError, TypeError):
        pass
    P = inspect.Parameter
    impl = inspect.signature(rule.backward_impl)
    accepted = frozenset(p for p in impl.parameters if p not in _INTERNAL_PARAMS)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in impl.parameters.values())
    defaults = {n: (None if impl.parameters[n].default is P.empty else impl.parameters[n].default)
                if n in impl.parameters else None for n in rule.tensor_args}
    sigs = []
    try:
        override = _overrides().get(fn)
    except TypeError:
        override = None
    # fn's own signature (Python functions such as F.batch_norm), torch's documented signature of a
    # builtin (torch.softmax(input, dim, dtype): dtype third, where F.softmax has _stacklevel), the
    # mirrored function's, and last the rule's backward (torch's order: tensors, then the rest)
    for cand, is_lambda in ((fn, False), (override, True), (rule.mirrors, False)):
        if cand is None:
            continue
        try:
            sig = inspect.signature(cand)
        except (TypeError, ValueError):
            continue
        ps = list(sig.parameters.values())
        if not ps or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in ps):
            continue   # (*args, **kwargs) dispatchers such as F.max_pool2d
        if ps[0].name == "self":   # a Tensor method: self is the first tensor
            ps[0] = ps[0].replace(name=rule.tensor_args[0])
        if not var_kw and any(p.name not in accepted and p.name != "out" for p in ps):
            continue   # names differ from the rule's (Tensor.__getitem__(self, key)): not this one
        if is_lambda and not all(t in {p.name for p in ps} for t in rule.tensor_args[:1] + _required_tensors(rule)):
            continue   # a documented overload without one of the rule's tensors (repeat_interleave(input, dim))
        sigs.append(sig.replace(parameters=ps))
    sigs.append(inspect.Signature([p.replace(kind=P.POSITIONAL_OR_KEYWORD, default=P.empty)
                                   for name, p in impl.parameters.items()
                                   if name not in _INTERNAL_PARAMS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]))
    out = []
    for sig in sigs:
        params = list(sig.parameters.values())
        out.append(_Binder(sig, tuple(p.name for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)),
                           frozenset(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)),
                           accepted, var_kw, defaults))
    try:
        _BINDERS[key] = out
    except TypeError:
        pass
    return out


# Tensor methods taking their sizes as separate ints (``x.view(2, -1)``) where the function takes a tuple.
_VARARG_METHODS = frozenset({"view", "reshape", "permute", "expand", "repeat", "tile", "flip"})


def bind(rule, fn, args, kwargs, in_place: bool = False) -> RuleCall:
    """Normalise ``fn(*args, **kwargs)`` to ``rule``'s form; ``BindError`` says why when it cannot.

    The first candidate signature (``_binders``) that takes the call is used.
    """
    as_rule = getattr(rule.torch_fn, "call_as_rule", None)
    if as_rule is not None:
        # torch.einsum(*args): no named parameters to bind against; the rule maps torch's spellings
        # (einsum(eq, a, b), einsum(eq, [a, b]), sublists) onto its own form.  A call already in the
        # rule's form is refused by it and bound below as it is.
        from gradcheck_kit.errors import GradcheckKitError

        try:
            args, kwargs = as_rule(*args, **kwargs)
        except GradcheckKitError:
            pass
    name = _name_of(fn)
    n_t = len(rule.tensor_args)
    if name in _VARARG_METHODS and getattr(torch.Tensor, name, None) is fn and len(args) > n_t and \
            all(isinstance(a, int) and not isinstance(a, bool) for a in args[n_t:]):
        args = tuple(args[:n_t]) + (tuple(args[n_t:]),)   # x.reshape(-1), x.permute(1, 0): one size tuple
    first = None
    for pack in (False, True):
        for b in _binders(fn, rule):
            try:
                return _bind_with(b, rule, args, kwargs, in_place, pack)
            except BindError as e:
                first = first or e
    raise first


def _bind_with(b, rule, args, kwargs, in_place: bool, pack: bool) -> RuleCall:
    n_pos = len(b.positional)
    if len(args) > n_pos:
        # x.view(2, -1), x.permute(0, 2, 1): trailing numbers packed into the one remaining argument
        # (only when no signature takes them as they are)
        first_extra = len(rule.tensor_args)
        extra = args[first_extra:]
        if pack and len(args) > first_extra and n_pos == first_extra + 1 and \
                all(isinstance(a, int) and not isinstance(a, bool) for a in extra):
            args = tuple(args[:first_extra]) + (tuple(args[first_extra:]),)
        else:
            raise BindError(f"{len(args)} positional arguments for {rule.name}{b.signature}")
    given = dict(zip(b.positional, args))
    for k, v in kwargs.items():
        if k in given:
            raise BindError(f"multiple values for argument {k!r}")
        if k not in b.keyword and not (b.var_kw and k not in b.positional):
            raise BindError(f"rule {rule.name!r} does not take argument {k!r}")
        given[k] = v
    if given.get("out") is not None:
        raise BindError("out= is not supported")
    given.pop("out", None)
    if not b.var_kw:
        for name in given:
            if name not in b.accepted:
                raise BindError(f"rule {rule.name!r} does not take argument {name!r}")
    names = rule.tensor_args
    last = max((i for i, n in enumerate(names) if n in given), default=-1)
    tensors, slot_names = [], []

    def slot(value, label):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            slot_names.append(label)
            return _Slot(len(tensors) - 1)
        return value

    pos = []
    for name in names[: last + 1]:
        v = given.pop(name) if name in given else b.defaults[name]
        if rule.is_sequence_arg(name, v):
            pos.append(tuple(slot(e, f"{name}[{j}]") for j, e in enumerate(v)))
        else:
            pos.append(slot(v, name))
    params = {k: (slot(v, k) if k in rule.keyword_tensors else v) for k, v in given.items()}
    inplace = bool(params.pop("inplace", False)) or in_place   # run out of place; functional writes back
    return RuleCall(rule, tuple(pos), params, tuple(tensors), tuple(slot_names), inplace)


def undeclared_tensors(call: RuleCall) -> list[str]:
    """Names of parameters holding tensors the rule does not differentiate (e.g. ``pos_weight``)."""
    return [k for k, v in call.params.items() if _tensors(v)]


# ---------------------------------------------------------------------------------------------
# the interception engine: one TorchFunctionMode per thread, listeners on a thread-local stack
# ---------------------------------------------------------------------------------------------

class _State(threading.local):
    def __init__(self):
        self.listeners: list = []
        self.mode: _Engine | None = None
        self.suspended = 0
        self.hook_depth = 0         # active listeners of this thread that want bound applies seen
        self.hooked = False         # our profile hook is installed in this thread
        self.hook_prev = None       # the profile function it replaced (called first from ours)
        self.applies: list = []     # open Function.apply frames the hook reported: (frame, call, listeners)


_state = _State()
_patch_lock = threading.Lock()
_patch_count = 0
_ORIG_APPLY = Function.__dict__["apply"]
_APPLY_CODE = _ORIG_APPLY.__func__.__code__


@contextmanager
def suspended() -> Iterator[None]:
    """Calls inside are not intercepted (the kit's own work while a rule runs)."""
    _state.suspended += 1
    try:
        yield
    finally:
        _state.suspended -= 1


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class Intercepted:
    """One intercepted call, as listeners see it."""

    __slots__ = ("func", "args", "kwargs", "rule", "bind_fn", "rule_call", "bind_error", "via", "result",
                 "_site", "versions", "snapshots", "missing", "function")

    def __init__(self, func, args, kwargs):
        self.func, self.args, self.kwargs = func, args, kwargs
        self.rule, self.bind_fn, self.rule_call, self.bind_error = None, func, None, None
        self.via, self.result, self._site, self.missing, self.function = "torch", None, None, False, None
        self.versions, self.snapshots = None, None

    @property
    def site(self) -> CallSite | None:
        if self._site is None:
            self._site = call_site(2)
        return self._site

    @property
    def op(self) -> str:
        if self.function is not None:
            return self.function.__name__
        return self.rule.name if self.rule is not None else op_name(self.func)


class _Engine(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        st = _state
        if st.suspended or not st.listeners or _in_backward():
            return func(*args, **kwargs)
        call = Intercepted(func, args, kwargs)
        listeners = list(st.listeners)
        for lst in listeners:
            lst.before(call)
        result = NotImplemented
        for lst in reversed(listeners):   # the innermost router decides
            if getattr(lst, "routes", False):
                result = lst.route(call)
                break
        if result is NotImplemented:
            result = func(*call.args, **call.kwargs)
        call.result = result
        for lst in listeners:
            lst.after(call)
        return result


def _patched_apply(cls, *args, **kwargs):
    st = _state
    orig = _ORIG_APPLY.__get__(None, cls)
    if st.suspended or not st.listeners or getattr(cls, "_gradcheck_kit_internal", False) or _in_backward():
        return orig(*args, **kwargs)
    call, listeners = _function_before(cls, args, kwargs, call_site(2))
    try:
        out = orig(*args, **kwargs)   # the profile hook knows this frame's caller: not reported twice
    except BaseException:
        _function_abandon(call, listeners)
        raise
    _function_after(call, listeners, out)
    return out


def _function_before(cls, args, kwargs, site):
    """Show the listeners a custom Function about to run: ``(call, listeners)``."""
    st = _state
    call = Intercepted(cls.apply, args, kwargs)
    call.function = cls
    call.via = "function"
    call._site = site
    listeners = list(st.listeners)
    st.suspended += 1
    try:
        for lst in listeners:
            lst.before(call)
    finally:
        st.suspended -= 1
    return call, listeners


def _function_after(call, listeners, out) -> None:
    """``apply`` returned ``out`` (with its grad_fn set): show the listeners the finished call."""
    st = _state
    call.result = out
    st.suspended += 1
    try:
        for lst in listeners:
            lst.after(call)
    finally:
        st.suspended -= 1


def _function_abandon(call, listeners) -> None:
    """``apply`` raised: listeners that keep state per open Function (``abandon``) drop it."""
    st = _state
    st.suspended += 1
    try:
        for lst in listeners:
            ab = getattr(lst, "abandon", None)
            if ab is not None:
                ab(call)
    finally:
        st.suspended -= 1


# A Function's ``apply`` taken before a recording began (``act = MyRelu.apply`` at import time) is
# a method bound to torch's original and never reaches the class-level patch.  While a listener of
# this thread asks for it (``sees_bound_functions``: the Recorder), a profile hook (``sys.setprofile``
# is per thread) reports every Python frame of torch's ``Function.apply``: at its start the
# listeners see ``before(call)`` with the class and arguments from the frame, at its return
# ``after(call)`` with what ``apply`` returns (outputs with their grad_fn).  Frames entered from
# ``_patched_apply`` are skipped (it reports them itself).  A profiler already set is called
# first and restored afterwards; one set in C (cProfile) cannot be chained, so the hook is then
# not installed and only calls through the class attribute are seen.

def _profile_hook(frame, event, arg):
    st = _state
    prev = st.hook_prev
    if prev is not None:
        prev(frame, event, arg)
    if frame.f_code is not _APPLY_CODE:
        return
    if event == "call":
        _bound_apply_started(st, frame)
    elif event == "return":
        _bound_apply_returned(st, frame, arg)


def _bound_apply_started(st, frame) -> None:
    back = frame.f_back
    if back is not None and back.f_code is _PATCHED_CODE:
        return
    loc = frame.f_locals
    cls = loc.get("cls")
    if st.suspended or not st.listeners or not isinstance(cls, type) or \
            getattr(cls, "_gradcheck_kit_internal", False) or _in_backward():
        return
    call, listeners = _function_before(cls, tuple(loc.get("args", ())), dict(loc.get("kwargs", {})),
                                       _site_from(back))
    st.applies.append((frame, call, listeners))


def _bound_apply_returned(st, frame, result) -> None:
    for i in range(len(st.applies) - 1, -1, -1):
        if st.applies[i][0] is frame:
            _, call, listeners = st.applies.pop(i)
            break
    else:
        return
    # the profiler reports an exception leaving the frame as a return of None (apply never
    # returns None: a forward must return a tensor or a tuple)
    if result is None:
        _function_abandon(call, listeners)
    else:
        _function_after(call, listeners, result)


def _hook_on() -> None:
    st = _state
    st.hook_depth += 1
    if st.hook_depth > 1:
        return
    prev = sys.getprofile()
    if prev is not None and not isinstance(prev, (types.FunctionType, types.MethodType)):
        return   # a profiler written in C (cProfile): left alone
    st.hook_prev, st.hooked = prev, True
    st.applies = []
    sys.setprofile(_profile_hook)


def _hook_off() -> None:
    st = _state
    st.hook_depth -= 1
    if st.hook_depth > 0 or not st.hooked:
        return
    if sys.getprofile() is _profile_hook:
        sys.setprofile(st.hook_prev)
    st.hook_prev, st.hooked = None, False
    st.applies = []


_PATCHED_CODE = _patched_apply.__code__


def _install_patch():
    global _patch_count
    with _patch_lock:
        if _patch_count == 0:
            Function.apply = classmethod(_patched_apply)
        _patch_count += 1


def _remove_patch():
    global _patch_count
    with _patch_lock:
        _patch_count -= 1
        if _patch_count == 0:
            Function.apply = _ORIG_APPLY


@contextmanager
def listening(listener) -> Iterator[Any]:
    """Activate ``listener`` (``before(call)``, ``after(call)``, optionally ``routes``/``route``) in this thread."""
    st = _state
    push = not st.listeners
    if push:
        st.mode = _Engine()
        st.mode.__enter__()
    st.listeners.append(listener)
    _install_patch()
    hook = bool(getattr(listener, "sees_bound_functions", False))
    if hook:
        _hook_on()
    try:
        yield listener
    finally:
        if hook:
            _hook_off()
        _remove_patch()
        st.listeners.remove(listener)
        if push:
            mode, st.mode = st.mode, None
            mode.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# the recorder
# ---------------------------------------------------------------------------------------------

def _may_write(call: Intercepted) -> bool:
    name = getattr(call.func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or name in ("__setitem__",) or \
        (name.startswith("__i") and name.endswith("__")) or bool(call.kwargs.get("inplace")) or \
        (call.rule_call is not None and call.rule_call.inplace) or call.function is not None


class Recorder:
    """Builds a ``Trace`` from the calls it is shown (``recording()`` activates one)."""

    wants_saved = True
    sees_bound_functions = True     # also Functions whose ``apply`` was taken before the recording

    def __init__(self):
        self.trace = Trace()
        self._ids: dict[int, int] = {}        # id(tensor object) -> current value id
        self._keep: list = []                 # keeps recorded objects alive so ids are not reused
        self._stack: list[Node] = []          # open custom-Function nodes

    # -- values ---------------------------------------------------------------------------
    def _new_value(self, t: torch.Tensor, producer=None, name=None, snapshot=None) -> int:
        vid = len(self.trace.values)
        src = snapshot if snapshot is not None else t
        self.trace.values[vid] = Value(vid, tuple(t.shape), t.dtype, t.device, bool(t.requires_grad), producer,
                                       name, src.detach())
        self._ids[id(t)] = vid
        self._keep.append(t)
        return vid

    def add_input(self, name: str, t: torch.Tensor) -> None:
        self.trace.inputs[name] = self._new_value(t, name=name)

    def _ref(self, t: torch.Tensor, snapshots) -> Ref:
        vid = self._ids.get(id(t))
        if vid is None:
            vid = self._new_value(t, snapshot=(snapshots or {}).get(id(t)))
        elif snapshots and id(t) in snapshots:   # about to be written in place: keep the value it had
            v = self.trace.values[vid]
            v.tensor = snapshots[id(t)]
        return Ref(vid)

    # -- listener protocol ----------------------------------------------------------------
    def before(self, call: Intercepted) -> None:
        ts = _tensors((call.args, call.kwargs))
        call.versions = [(t, t._version) for t in ts]
        if _may_write(call):
            call.snapshots = {id(t): t.detach().clone() for t in ts}
        if call.function is not None:
            node = self._node(call)
            self._stack.append(node)

    def abandon(self, call: Intercepted) -> None:
        """A custom Function's ``apply`` raised: its node is dropped."""
        if self._stack:
            self._stack.pop()

    def after(self, call: Intercepted) -> None:
        if call.function is not None:
            node = self._stack.pop()
            self._finish(node, call)
            self._append(node)
            return
        outs = call.result if isinstance(call.result, (tuple, list)) else (call.result,)
        if not any(isinstance(o, torch.Tensor) for o in outs):
            if not any(t._version != v for t, v in call.versions):
                return   # size(), dim(), item(): not an op on values
        node = self._node(call)
        self._finish(node, call)
        self._append(node)

    def _append(self, node: Node) -> None:
        target = self._stack[-1].children if self._stack else self.trace.nodes
        node.index = len(target)
        target.append(node)

    def _node(self, call: Intercepted) -> Node:
        snaps = call.snapshots
        ref = functools.partial(self._ref, snapshots=snaps)
        if call.rule is None and call.function is None and call.rule_call is None:
            rule, f, a, k, ip = resolve(call.func, call.args, call.kwargs)
            if rule is not None:
                call.rule, call.bind_fn = rule, f
                try:
                    call.rule_call = bind(rule, f, a, k, ip)
                except BindError as e:
                    call.bind_error = str(e)
        node = Node(index=-1, op=call.op, fn=call.func if call.function is None else call.function.apply,
                    rule=call.rule if call.rule_call is not None else None,
                    args=_map(tuple(call.args), ref), kwargs=_map(dict(call.kwargs), ref),
                    site=call.site, function=call.function, via=call.via)
        if call.rule_call is not None:
            rc = call.rule_call
            rargs, rkw = rc.build([ref(t) for t in rc.tensors])
            node.rule_args, node.rule_kwargs = rargs, _map(rkw, ref)
            if rc.inplace:
                node.rule_kwargs["inplace"] = True
        return node

    def _finish(self, node: Node, call: Intercepted) -> None:
        res = call.result
        outs = res if isinstance(res, (tuple, list)) else (res,)
        written = [t for t, v in call.versions if t._version != v and not any(t is o for o in outs)]
        ids, shapes, dtypes = [], [], []
        for o in list(outs) + written:
            if isinstance(o, torch.Tensor):
                ids.append(self._new_value(o, producer=node.index if node.index >= 0 else None))
                shapes.append(tuple(o.shape))
                dtypes.append(o.dtype)
            else:
                ids.append(None)
                shapes.append(None)
                dtypes.append(None)
        node.outputs, node.out_shapes, node.out_dtypes = tuple(ids), tuple(shapes), tuple(dtypes)
        node.differentiable = any(isinstance(o, torch.Tensor) and o.requires_grad for o in list(outs) + written)
        if call.rule_call is not None and call.rule_call.saved is not None:
            node.saved = dict(call.rule_call.saved)
            call.rule_call.saved = None
        node.via = call.via

    def finish(self, result) -> Trace:
        tr = self.trace
        # producer indices: set now that top-level indices are known
        for node in tr.nodes:
            for vid in node.outputs:
                if vid is not None:
                    tr.values[vid].producer = node.index
        outs = result if isinstance(result, (tuple, list)) else (result,)
        tr.outputs = tuple(self._ids.get(id(o)) for o in outs if isinstance(o, torch.Tensor))
        tr.result = result
        _keep_last_assignment(tr.nodes)
        return tr


def _keep_last_assignment(nodes: list[Node]) -> None:
    """A line ``z = f(g(x))`` names only its last node ``z``; earlier nodes of the same line lose the name."""
    for a, b in zip(nodes, nodes[1:]):
        if a.site and b.site and a.site.assigned and (a.site.file, a.site.line) == (b.site.file, b.site.line):
            a.site = CallSite(a.site.file, a.site.line, a.site.function, a.site.code, None)


@contextmanager
def recording() -> Iterator[Recorder]:
    """Record every torch call made inside (this thread only); ``rec.trace`` afterwards.

        with recording() as rec:
            out = model(x)
        print(rec.trace)
    """
    rec = Recorder()
    with listening(rec):
        yield rec
    rec.finish(None)


def record(loss: Callable, inputs: Mapping[str, Any], wrt=None) -> Trace:
    """Run ``loss(**inputs)`` once and return its recorded graph.

    The inputs are copied (the caller's tensors are never touched); floating inputs in ``wrt``
    (default: all floating inputs) require grad, so ``node.differentiable`` means what it would
    in a training step.
    """
    if not isinstance(inputs, Mapping):
        raise InvalidInputError(f"record() takes inputs as a dict of name -> tensor, got {type(inputs).__name__}.")
    names = list(wrt) if wrt is not None else [k for k, v in inputs.items()
                                               if isinstance(v, torch.Tensor) and v.is_floating_point()]
    copies = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            c = v.detach().clone()
            copies[k] = c.requires_grad_(True) if k in names and c.is_floating_point() else c
        else:
            copies[k] = v
    rec = Recorder()
    for k, v in copies.items():
        if isinstance(v, torch.Tensor):
            rec.add_input(k, v)
    with torch.enable_grad(), listening(rec):
        result = loss(**copies)
    return rec.finish(result)
