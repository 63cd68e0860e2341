"""Explicit backward source for a traced loss: readable, torch-only, verified before it is returned.

    src = backward_source(loss, {"x": x, "w1": w1, "k": k, "y": y}, wrt=("x", "w1"))
    exec(src, ns);  value, grads = ns["loss_and_grads"](x=x, w1=w1, k=k, y=y)

``loss(**inputs)`` runs once through ``gradcheck_kit.trace.record`` (the rule engine's op
recording: one node per torch call with its arguments, shapes, call site and assigned variable);
``_Recording`` binds each node to a template.  Python values the loss reads from tensors'
metadata (``x.shape``, ``x.numel()``) arrive as literals: constants folded.  The module written
from that recording imports only ``torch`` and ``torch.nn.functional``:

* the forward, one statement per op, named after the user's variables (a reassigned name
  gets ``_2``, ``_3``), else ``z1, z2, ...`` (``a1, ...`` for activations; ``t1``/``s1`` when
  the user's code has its own ``z``/``a``), ``c1`` for constants; a non-scalar loss is summed,
  as ``check`` does;
* the backward, in reverse order, one rule per op written out as its formula (the table
  ``_OPS``: op -> signature, forward style, backward template).  A template gets the names,
  the parameters and the shapes and returns each input's contribution; a cotangent known to
  be a constant (the seed 1, its sums and scalings) stays a Python number until a template
  needs a tensor, so ``0.5 * r.pow(2)`` gives ``g_r = r``;
* a tensor used more than once gets one term per use, each commented with the use, summed
  in one statement (accumulation only where needed).

The math of each template is the rule's in ``gradcheck_kit.manual``: the conv input gradient
is ``conv_transpose`` with ``_shapes.conv_output_padding`` (2-d: the weight read channels-last, so
oneDNN runs it on NHWC tensors); the weight gradient is the formulation
``manual.conv.weight_grad_formulation`` picks (its per-tap GEMMs reading x and g as channels-last
rows), or, for few output channels, the composites' one GEMM against ``unfold(g)``.  A fresh
cotangent only one backward reads (``_New``) takes the ReLU mask in place, and dead intermediates
are ``del``-ed after their last use (``_free_dead``): on CPU, fresh pages cost as much as the
arithmetic (docs/emit.md).  Every
emission is verified before it is returned (``verify``): the module runs on float64 copies of
the inputs and ``check()`` compares it with autograd, first and second order (rtol 1e-10), then
once more at a seeded nearby point (catching values frozen from ``.item()``); a failure raises
``EmitVerificationError``.  An op with no template raises ``EmitUnsupportedError`` naming the
op and its call site.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import EmitError, EmitUnsupportedError, EmitVerificationError, GradcheckKitError

__all__ = ["backward_source", "EmitError", "EmitUnsupportedError", "EmitVerificationError", "supported_ops"]

_COMMENT_COL = 60          # comments start at this column when the statement is shorter
_RTOL = 1e-10              # verification: |emitted - autograd| <= 1e-9 max|autograd| + 1e-10 |autograd|


# ---------------------------------------------------------------------------
# The recording: values and nodes
# ---------------------------------------------------------------------------

@dataclass(eq=False)
class _Value:
    """A tensor of the recording: an input, an op's result, or a constant made inside the loss."""

    name: str
    shape: tuple
    node: "_Node | None" = None
    wants: bool = False        # depends on an input we differentiate with respect to
    traced: bool = False       # depends on some input (else: a constant)


@dataclass(eq=False)
class _Node:
    op: str                    # key of _OPS, or "const" for a tensor made from no input (a factory)
    params: dict               # bound arguments: _Value for tensors, literals otherwise
    out: _Value
    where: str                 # file:line of the call
    target: str | None = None  # the variable the call's line assigns (the trace's site.assigned)
    func: Any = None


class _Recording:
    """The trace (``gradcheck_kit.trace.record``) as emit's values and nodes, each node bound to a template."""

    def __init__(self, trace, wrt: tuple):
        self.trace = trace
        self.inputs: dict[str, _Value] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.by_id: dict[int, _Value] = {}
        self.nodes: list[_Node] = []
        for name, vid in trace.inputs.items():
            v = _Value(name, tuple(trace.values[vid].shape), wants=name in wrt, traced=True)
            self.inputs[name], self.by_id[vid] = v, v
            self.tensors[name] = trace.tensor(vid)
        for tn in trace.nodes:
            self._add(tn)

    def value(self, ref, where: str):
        """The ``_Value`` of a ``Ref``; a tensor neither input nor computed (a global) becomes a literal."""
        v = self.by_id.get(ref.id)
        if v is not None:
            return v
        rv = self.trace.values[ref.id]
        if rv.requires_grad:
            raise EmitUnsupportedError(f"{where}: the loss reads a tensor that requires grad but is not one of its "
                                       f"inputs (a parameter or a global?): pass it as an input")
        t = rv.tensor
        if t.numel() > _MAX_LITERAL or t.is_complex() or t.dtype == torch.bool:
            raise EmitUnsupportedError(f"{where}: the loss reads a tensor of shape {list(t.shape)} that is neither "
                                       f"an input nor computed inside it (a global?): pass it as an input")
        if t.dim() == 0 and t.is_floating_point():
            return t.item()          # a number: 2 - x arrives as sub(tensor(2.), x)
        val = _Value("", tuple(t.shape))
        val.node = _Node("const", {"func": torch.tensor, "args": (t.tolist(),),
                                   "kwargs": {"dtype": t.dtype, "device": t.device}}, val, where)
        self.by_id[ref.id] = val
        self.nodes.append(val.node)
        return val

    def _refs(self, obj, where):
        from gradcheck_kit.trace import Ref

        if isinstance(obj, Ref):
            return self.value(obj, where)
        if isinstance(obj, dict):
            return {k: self._refs(v, where) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
            return type(obj)(self._refs(v, where) for v in obj)
        return obj

    def _add(self, tn) -> None:
        where = tn.where
        if tn.function is not None:
            raise EmitUnsupportedError(
                f"{where}: {tn.function.__name__}.apply is a custom torch.autograd.Function; its backward is "
                f"hand-written code, not an op with a formula, so emit cannot write it out "
                f"(check it with gradcheck-kit check)")
        fname = getattr(tn.fn, "__name__", "")
        if fname in _IN_PLACE_DUNDERS or (fname.endswith("_") and not fname.startswith("__")):
            raise EmitUnsupportedError(f"{where}: {tn.op} writes into a tensor in place; emit needs out-of-place "
                                       f"ops (x = x + y, not x += y or x[i] = ...)")
        args, kwargs = self._refs(tuple(tn.args), where), self._refs(dict(tn.kwargs), where)
        outs = [o for o in tn.outputs if o is not None]
        ins = [v for v in _flat(list(args) + list(kwargs.values())) if isinstance(v, _Value)]
        traced = any(v.traced for v in ins)
        if not outs:
            return
        if traced and (len(tn.outputs) != 1 or tn.outputs[0] is None):
            raise EmitUnsupportedError(f"{where}: {tn.op} returns {len(tn.outputs)} results; emit has templates "
                                       f"for ops with one tensor result")
        out_v = self.trace.values[outs[0]]
        if out_v.dtype.is_complex:
            raise EmitUnsupportedError(f"{where}: {tn.op} returns a complex tensor; emit writes real gradients")
        if traced:
            op, params = _bind(tn.fn, args, kwargs, where)
            if params.get("out") is not None or op.endswith("_") or params.get("inplace") is True:
                raise EmitUnsupportedError(f"{where}: {tn.op} writes in place; emit needs out-of-place ops "
                                           f"(drop inplace=True / out= / the trailing underscore)")
            if op in ("view", "reshape"):
                params["shape"] = tuple(out_v.shape)   # -1 resolved: the literal shape
            bound = [v for v in _flat(list(params.values())) if isinstance(v, _Value)]
            traced = any(v.traced for v in bound)     # x.view_as(res) reads only res's shape
            if any(v.wants for v in bound) and not tn.differentiable and out_v.dtype.is_floating_point:
                raise EmitUnsupportedError(f"{where}: {tn.op} runs with gradients disabled (torch.no_grad?); "
                                           f"emit cannot tell what its gradient should be")
        else:
            op, params = "const", {"func": tn.fn, "args": args, "kwargs": kwargs}
            bound = []
        val = _Value("", tuple(out_v.shape), traced=traced, wants=any(v.wants for v in bound))
        node = _Node(op, params, val, where, target=tn.site.assigned if tn.site else None, func=tn.fn)
        val.node = node
        if op in _OPS and _OPS[op].check is not None:
            _OPS[op].check(node)
        self.by_id[outs[0]] = val
        self.nodes.append(node)


_MAX_LITERAL = 16
_IN_PLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                     "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


def _flat(xs) -> list:
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out


def _pretty(func) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__" and hasattr(getattr(func, "__self__", None), "__name__"):
        return f"Tensor.{func.__self__.__name__}"     # a property: x.H arrives as its getter
    qual = getattr(func, "__qualname__", name)
    if qual.startswith(("TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    mod = getattr(func, "__module__", "") or ""
    if mod.startswith("torch.nn.functional") or getattr(F, name, None) is func:
        return f"F.{name}"
    return f"torch.{name}" if getattr(torch, name, None) is func else name


# ---------------------------------------------------------------------------
# Binding a call to an op: canonical name and named parameters
# ---------------------------------------------------------------------------

_SIGS: dict[str, tuple] = {
    "add": ("input", "other", ("alpha", 1)), "sub": ("input", "other", ("alpha", 1)),
    "mul": ("input", "other"), "div": ("input", "other", ("rounding_mode", None)),
    "matmul": ("input", "other"), "mm": ("input", "mat2"), "bmm": ("input", "mat2"),
    "dot": ("input", "other"), "outer": ("input", "vec2"),
    "addmm": ("input", "mat1", "mat2", ("beta", 1), ("alpha", 1)),
    "pow": ("input", "exponent"),
    "neg": ("input",), "abs": ("input",), "log": ("input",), "exp": ("input",), "sqrt": ("input",),
    "sin": ("input",), "cos": ("input",), "tanh": ("input",), "sigmoid": ("input",),
    "reciprocal": ("input",), "rsqrt": ("input",), "square": ("input",), "log1p": ("input",), "expm1": ("input",),
    "tan": ("input",), "atan": ("input",), "sinh": ("input",), "cosh": ("input",), "erf": ("input",),
    "relu": ("input", ("inplace", False)),
    "sum": ("input", ("dim", None), ("keepdim", False), ("dtype", None)),
    "mean": ("input", ("dim", None), ("keepdim", False), ("dtype", None)),
    "norm": ("input", ("p", "fro"), ("dim", None), ("keepdim", False), ("out", None), ("dtype", None)),
    "t": ("input",), "transpose": ("input", "dim0", "dim1"), "T": ("input",), "mT": ("input",),
    "clone": ("input", ("memory_format", torch.preserve_format)),
    "flip": ("input", "dims"), "repeat": ("input", "repeats"), "roll": ("input", "shifts", ("dims", None)),
    "getitem": ("input", "index"),
    "conv1d": ("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv2d": ("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "conv3d": ("input", "weight", ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    "linear": ("input", "weight", ("bias", None)),
    "unfold": ("input", "kernel_size", ("dilation", 1), ("padding", 0), ("stride", 1)),
    "flatten": ("input", ("start_dim", 0), ("end_dim", -1)),
    "squeeze": ("input", ("dim", None)), "unsqueeze": ("input", "dim"),
    "max_pool2d": ("input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1),
                   ("ceil_mode", False), ("return_indices", False)),
}
_SHAPE_OPS = {"view", "reshape", "expand", "permute"}      # f(input, *sizes): sizes as one tuple
_VARARGS = {"flip": "dims", "repeat": "repeats"}   # x.flip(0, 1) == x.flip((0, 1)): one tuple parameter
_PROPERTIES = {"T", "mT"}                          # x.T arrives as the getter of the property Tensor.T
_SHAPE_LIKE = {"view_as": "view", "reshape_as": "reshape", "expand_as": "expand"}
_REVERSED = {"__radd__": "add", "__rsub__": "sub", "__rmul__": "mul", "__rtruediv__": "div",
             "__rdiv__": "div", "__rmatmul__": "matmul", "__rpow__": "pow"}
_DUNDER = {"__add__": "add", "__sub__": "sub", "__mul__": "mul", "__truediv__": "div", "__div__": "div",
           "__matmul__": "matmul", "__pow__": "pow", "__neg__": "neg", "__getitem__": "getitem",
           "true_divide": "div", "negative": "neg", "subtract": "sub", "multiply": "mul", "divide": "div",
           "absolute": "abs", "arctan": "atan", "flatten": "flatten", "squeeze": "squeeze", "unsqueeze": "unsqueeze"}


def _canonical(func) -> tuple[str | None, bool]:
    """(op name, operands reversed) of a torch callable: ``x.__rmul__(0.5)`` is ("mul", True)."""
    name = getattr(func, "__name__", None)
    if name == "__get__":                      # x.T, x.mT and other properties: the getter's descriptor
        prop = getattr(getattr(func, "__self__", None), "__name__", None)
        return (prop, False) if prop in _PROPERTIES else (None, False)
    if not name:
        return None, False
    if name in _REVERSED:
        return _REVERSED[name], True
    return _DUNDER.get(name, name), False


def _bind(func, args, kwargs, where) -> tuple[str, dict]:
    """(op, {parameter: value}) of one call, with every default filled in."""
    op, reversed_ = _canonical(func)
    if op in _SHAPE_LIKE:
        return _SHAPE_LIKE[op], {"input": args[0], "shape": tuple(args[1].shape)}
    if op not in _OPS:
        raise EmitUnsupportedError(f"{where}: {_pretty(func)} has no emission template "
                                   f"(gradcheck_kit.emit.supported_ops() lists the {len(_OPS)} ops that have one)")
    if reversed_:   # y = 0.5 * x arrives as x.__rmul__(0.5): other (op) self
        return _bind_sig(op, (args[1], args[0]), {}, where)
    if op in _VARARGS and len(args) > 1 and not isinstance(args[1], (tuple, list, torch.Size)):
        return _bind_sig(op, (args[0], tuple(args[1:])), kwargs, where)
    if op in _SHAPE_OPS:
        rest = args[1:]
        sizes = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
        for k in ("dims", "size", "shape"):
            if k in kwargs:
                sizes = kwargs[k]
        return op, {"input": args[0], "shape": tuple(int(s) for s in sizes)}
    return _bind_sig(op, args, kwargs, where)


def _bind_sig(op, args, kwargs, where, sig=None) -> tuple[str, dict]:
    sig = sig or _SIGS[op]
    names = [s if isinstance(s, str) else s[0] for s in sig]
    if len(args) > len(names):
        raise EmitUnsupportedError(f"{where}: {op} called with {len(args)} positional arguments; "
                                   f"emit knows {', '.join(names)}")
    params = {}
    for s in sig:
        if isinstance(s, tuple):
            params[s[0]] = s[1]
    params.update(dict(zip(names, args)))
    for k, v in kwargs.items():
        if k not in names:
            raise EmitUnsupportedError(f"{where}: {op}(..., {k}=...) is a keyword emit does not know for {op}")
        params[k] = v
    return op, params


# ---------------------------------------------------------------------------
# Source text helpers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Const:
    """A cotangent that is the number ``c`` everywhere (the seed 1, its sums and scalings)."""

    c: float


class _New(str):
    """A backward expression that allocates its result: a tensor no other name refers to.

    ``finish`` records the name it binds such an expression to as *owned* (``_Backward.fresh``);
    a template may then update that tensor in place (the ReLU mask), and a dead one is freed.
    Plain ``str`` expressions (views, aliases such as ``g_t2 = t2``) are never owned.
    """


def _num(c) -> str:
    if isinstance(c, bool):
        return repr(c)
    if isinstance(c, float) and c.is_integer() and abs(c) < 1e15:
        return str(int(c))
    return repr(c)


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _tup(seq) -> str:
    seq = tuple(seq)
    return "(" + ", ".join(str(s) for s in seq) + ("," if len(seq) == 1 else "") + ")"


def _slice_src(s: slice) -> str:
    a = "" if s.start is None else str(s.start)
    b = "" if s.stop is None else str(s.stop)
    return f"{a}:{b}" + ("" if s.step is None else f":{s.step}")


def _is_name(expr) -> bool:
    return isinstance(expr, str) and expr.isidentifier()


def _atom(expr: str) -> str:
    """Parenthesise ``expr`` unless it is a name, a number, a call or an attribute chain."""
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return f"({expr})"
    if isinstance(node, (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and node.value < 0:
            return f"({expr})"
        return expr
    return f"({expr})"


def _same(value, n):
    """Tuple parameters print as one int when every entry is equal (stride=(2, 2) -> 2)."""
    t = tuple(value)
    return t[0] if len(set(t)) == 1 else t


# ---------------------------------------------------------------------------
# Op table: op -> (forward style, backward template)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Op:
    forward: Callable          # (writer, node) -> forward expression
    backward: Callable | None  # (bw, node, g) -> {param: (contribution, comment)}
    tensors: tuple = ("input",)
    check: Callable | None = None   # validates params at record time (raises EmitUnsupportedError)
    activation: bool = False


def _fw_infix(sym):
    def fw(w, n):
        a, b = w.arg(n, "input"), w.arg(n, "other")
        alpha = n.params.get("alpha", 1)
        if alpha != 1:
            b = f"{_num(alpha)} * {_atom(b)}"
        return f"{_atom(a)} {sym} {_atom(b)}"
    return fw


def _fw_method(method, *keys, defaults=None):
    def fw(w, n):
        return f"{_atom(w.arg(n, 'input'))}.{method}({w.kwargs(n, keys)})"
    return fw


def _fw_call(prefix, tensors=("input",), keys=()):
    def fw(w, n):
        pos = [w.arg(n, t) for t in tensors]
        while len(pos) > 1 and pos[-1] == "None":
            pos.pop()
        kw = w.kwargs(n, keys)
        return f"{prefix}({', '.join(pos + ([kw] if kw else []))})"
    return fw


def _fw_shape(method):
    def fw(w, n):
        return f"{_atom(w.arg(n, 'input'))}.{method}({', '.join(str(s) for s in n.params['shape'])})"
    return fw


# -- elementwise ----------------------------------------------------------------------------------

def _bw_add(sign):
    """a + alpha b (sign 1) or a - alpha b (sign -1): dL/da = g, dL/db = sign alpha g, unbroadcast."""
    def bw(b, n, g):
        out = {}
        k_other = sign * n.params.get("alpha", 1)
        for p, k in (("input", 1), ("other", k_other)):
            if b.wants(n, p):
                out[p] = (b.unbroadcast(b.times(g, None, k), n.out.shape, n.params[p].shape),
                          f"d({'a + b' if sign > 0 else 'a - b'})/d{'a' if p == 'input' else 'b'} = {_num(k)}")
        return out
    return bw


def _bw_mul(b, n, g):
    out = {}
    for p, q in (("input", "other"), ("other", "input")):
        if b.wants(n, p):
            other = n.params[q]
            if isinstance(other, _Value):
                gg = b.tensor(g, n.out) if n.params[p].shape != n.out.shape or other.shape != n.out.shape else g
                out[p] = (b.unbroadcast(b.times(gg, b.name(other)), n.out.shape, n.params[p].shape),
                          "d(a b)/da = b" if p == "input" else "d(a b)/db = a")
            else:
                out[p] = (b.times(g, None, other), f"d({_num(other)} a)/da = {_num(other)}")
    return out


def _bw_div(b, n, g):
    out = {}
    x, y = n.params["input"], n.params["other"]
    if n.params.get("rounding_mode") is not None:
        raise EmitUnsupportedError(f"{n.where}: div(..., rounding_mode=...) is piecewise constant; no template")
    if b.wants(n, "input"):
        if isinstance(y, _Value):
            gg = b.tensor(g, n.out) if x.shape != n.out.shape or y.shape != n.out.shape else g
            out["input"] = (b.unbroadcast(b.over(gg, b.name(y)), n.out.shape, x.shape), "d(a / b)/da = 1 / b")
        else:
            out["input"] = (b.times(g, None, 1.0 / y), f"d(a / {_num(y)})/da = 1 / {_num(y)}")
    if b.wants(n, "other"):
        gg = b.tensor(g, n.out)
        xs = b.name(x) if isinstance(x, _Value) else _num(x)
        yv = b.name(y)
        out["other"] = (b.unbroadcast(f"-{_atom(gg)} * {_atom(xs)} / ({yv} * {yv})", n.out.shape, y.shape),
                        "d(a / b)/db = -a / b^2")
    return out


def _bw_pow(b, n, g):
    p, x = n.params["exponent"], n.params["input"]
    if isinstance(p, _Value) or not isinstance(x, _Value):
        raise EmitUnsupportedError(f"{n.where}: pow with a tensor exponent has no emission template "
                                   f"(a number exponent has)")
    xs = b.name(x)
    if p == 0:
        return {}
    base = xs if p == 2 else f"{xs}.pow({_num(p - 1)})"
    if p == 1:
        return {"input": (g, "d(x^1)/dx = 1")}
    power = "x" if p == 2 else f"x^{_num(p - 1)}"
    if isinstance(g, _Const) and g.c != 1:   # the constant cotangent is folded in: say so
        coef = g.c * p
        return {"input": (b.times(g, base, p), f"{_num(g.c)} d(x^{_num(p)})/dx = "
                          + (power if coef == 1 else f"{_num(coef)} {power}"))}
    return {"input": (b.times(g, base, p), f"d(x^{_num(p)})/dx = {_num(p)} {power}")}


def _unary(deriv, comment, use_out=False):
    """dL/dx = g * f'(x); ``deriv`` writes f' from the input's (or the output's) name."""
    def bw(b, n, g):
        if not b.wants(n, "input"):
            return {}
        arg = b.name(n.out) if use_out else b.name(n.params["input"])
        return {"input": (b.times(g, deriv(arg)), comment)}
    return bw


def _bw_relu(b, n, g):
    """dL/dx = g * 1[x > 0], the mask read from relu's output (1[relu(x) > 0] = 1[x > 0]), so x itself
    need not be kept.  When g is a tensor this backward owns (a fresh result nothing else reads) the
    mask is applied in place, as the float sign(relu(x)) (0 or 1): a bool mask would be cast to a
    full float temporary by the in-place product anyway (measured, docs/emit.md)."""
    if not b.wants(n, "input"):
        return {}
    y = b.name(n.out)
    if b.owns(g):
        return {"input": (_New(f"{g}.mul_({y}.sign())"), f"relu'(x) = 1[x > 0] = sign(relu(x))  (0 at 0, as torch); "
                                                        f"in place: {g} is not used again")}
    return {"input": (_New(f"{_atom(b.tensor(g, n.out))} * ({y} > 0)"),     # a tensor g keeps the dtype
                      "relu'(x) = 1[x > 0] = 1[relu(x) > 0]  (0 at 0, as torch)")}


def _bw_neg(b, n, g):
    if isinstance(g, _Const):
        return {"input": (_Const(-g.c), "d(-x)/dx = -1")}
    return {"input": (f"-{_atom(g)}", "d(-x)/dx = -1")}


# -- reductions -----------------------------------------------------------------------------------

def _dims(dim, ndim) -> tuple:
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return tuple(sorted({d % ndim for d in dims})) if ndim else ()


def _bw_reduce(mean):
    def bw(b, n, g):
        x = n.params["input"]
        dims = _dims(n.params["dim"], len(x.shape))
        count = math.prod(x.shape[d] for d in dims)
        if isinstance(g, _Const):
            c = g.c / count if mean else g.c
            return {"input": (_Const(c), "d sum/dx = 1" + (f", divided by the {count} averaged" if mean else ""))}
        keep = tuple(1 if i in dims else s for i, s in enumerate(x.shape))
        expr = g if keep == tuple(n.out.shape) or n.out.shape == () else f"{g}.reshape({', '.join(map(str, keep))})"
        expr = f"{_atom(expr)}.expand({', '.join(map(str, x.shape))})" if x.shape else expr
        if mean:
            expr = f"{expr} / {count}"
        return {"input": (expr, "the sum's cotangent, broadcast back over the summed axes"
                          + (f", / {count}" if mean else ""))}
    return bw


def _check_norm(n):
    p, dim = n.params["p"], n.params["dim"]
    if p not in ("fro", 2, 2.0, None) or dim is not None or n.params.get("dtype") is not None:
        raise EmitUnsupportedError(f"{n.where}: norm(p={p!r}, dim={dim!r}) has no emission template "
                                   f"(the 2-norm of the whole tensor has)")


def _bw_norm(b, n, g):
    if not b.wants(n, "input"):
        return {}
    xs, ns = b.name(n.params["input"]), b.name(n.out)
    return {"input": (b.times(g, f"{xs} / {ns}") if not isinstance(g, _Const) or g.c != 1 else f"{xs} / {ns}",
                      "d||x||/dx = x / ||x||  (x != 0)")}


# -- linear algebra -------------------------------------------------------------------------------

def _bw_matmul(b, n, g):
    a, c = n.params["input"], n.params["other" if "other" in n.params else "mat2"]
    ka = "input"
    kc = "other" if "other" in n.params else "mat2"
    gn = b.tensor(g, n.out)
    an, cn = b.name(a), b.name(c)
    da, dc = len(a.shape), len(c.shape)
    out = {}
    if da == 1 and dc == 1:
        if b.wants(n, ka):
            out[ka] = (f"{_atom(gn)} * {cn}", "d(a . b)/da = b")
        if b.wants(n, kc):
            out[kc] = (f"{_atom(gn)} * {an}", "d(a . b)/db = a")
    elif da == 2 and dc == 1:
        if b.wants(n, ka):
            out[ka] = (f"torch.outer({gn}, {cn})", "d(A b)/dA = g b^T")
        if b.wants(n, kc):
            out[kc] = (f"{an}.t() @ {_atom(gn)}", "d(A b)/db = A^T g")
    elif da == 1 and dc == 2:
        if b.wants(n, ka):
            out[ka] = (f"{cn} @ {_atom(gn)}", "d(a B)/da = B g")
        if b.wants(n, kc):
            out[kc] = (f"torch.outer({an}, {gn})", "d(a B)/dB = a g^T")
    elif da >= 2 and dc >= 2:
        if b.wants(n, ka):
            out[ka] = (b.unbroadcast(f"{_atom(gn)} @ {cn}.mT", n.out.shape[:-1] + (a.shape[-1],), a.shape),
                       "d(A B)/dA = g B^T")
        if b.wants(n, kc):
            out[kc] = (b.unbroadcast(f"{an}.mT @ {_atom(gn)}", n.out.shape[:-2] + c.shape[-2:], c.shape),
                       "d(A B)/dB = A^T g")
    else:
        raise EmitUnsupportedError(f"{n.where}: matmul of a {da}-d and a {dc}-d tensor has no emission template")
    return out


def _bw_outer(b, n, g):
    a, c = n.params["input"], n.params["vec2"]
    gn = b.tensor(g, n.out)
    out = {}
    if b.wants(n, "input"):
        out["input"] = (f"{_atom(gn)} @ {b.name(c)}", "d(a b^T)/da = g b")
    if b.wants(n, "vec2"):
        out["vec2"] = (f"{_atom(gn)}.t() @ {b.name(a)}", "d(a b^T)/db = g^T a")
    return out


def _bw_addmm(b, n, g):
    """y = beta c + alpha A B (c broadcast to [n, p]): dL/dc = beta g, summed over the broadcast axes,
    dL/dA = alpha g B^T, dL/dB = alpha A^T g."""
    c, A, B = n.params["input"], n.params["mat1"], n.params["mat2"]
    beta, alpha = n.params["beta"], n.params["alpha"]
    out = {}
    if b.wants(n, "input"):
        out["input"] = (b.unbroadcast(b.times(g, None, beta), n.out.shape, c.shape),
                        (f"d(beta c + alpha A B)/dc = beta = {_num(beta)}" if beta != 1 else "d(c + A B)/dc = 1")
                        + (", summed over the broadcast axes" if tuple(c.shape) != tuple(n.out.shape) else ""))
    if b.wants(n, "mat1") or b.wants(n, "mat2"):
        gn = b.tensor(g, n.out)
        ga = _atom(gn) if alpha == 1 else f"({_num(alpha)} * {_atom(gn)})"
        if b.wants(n, "mat1"):
            out["mat1"] = (f"{ga} @ {b.name(B)}.t()",
                           "d(A B)/dA = g B^T" if alpha == 1 else f"d(alpha A B)/dA = alpha g B^T ({_num(alpha)})")
        if b.wants(n, "mat2"):
            out["mat2"] = (f"{b.name(A)}.t() @ {ga}",
                           "d(A B)/dB = A^T g" if alpha == 1 else f"d(alpha A B)/dB = alpha A^T g ({_num(alpha)})")
    return out


def _bw_linear(b, n, g):
    x, w, bias = n.params["input"], n.params["weight"], n.params["bias"]
    gn = b.tensor(g, n.out)
    o, i = w.shape
    out = {}
    if b.wants(n, "input"):
        out["input"] = (f"{_atom(gn)} @ {b.name(w)}", "d(x W^T)/dx = g W")
    if b.wants(n, "weight"):
        if len(x.shape) == 1:
            out["weight"] = (f"torch.outer({gn}, {b.name(x)})", "d(x W^T)/dW = g x^T")
        else:
            out["weight"] = (f"{_atom(gn)}.reshape(-1, {o}).t() @ {b.name(x)}.reshape(-1, {i})",
                             "d(x W^T)/dW = g^T x, summed over the batch")
    if isinstance(bias, _Value) and b.wants(n, "bias"):
        out["bias"] = (gn if len(n.out.shape) == 1 else f"{_atom(gn)}.reshape(-1, {o}).sum(0)",
                       "d(x W^T + b)/db = g, summed over the batch")
    return out


# -- shapes ---------------------------------------------------------------------------------------

def _bw_reshape(b, n, g):
    if not b.wants(n, "input"):
        return {}
    x = n.params["input"]
    if isinstance(g, _Const):
        return {"input": (g, "a reshape moves no value")}
    return {"input": (f"{_atom(g)}.reshape({', '.join(map(str, x.shape))})" if x.shape else f"{_atom(g)}.reshape(())",
                      "a reshape moves no value: reshape back")}


def _bw_expand(b, n, g):
    x = n.params["input"]
    return {"input": (b.unbroadcast(g, n.out.shape, x.shape), "the broadcast copies' cotangents, summed")}


def _bw_t(b, n, g):
    if isinstance(g, _Const):
        return {"input": (g, "transpose")}
    return {"input": (f"{_atom(g)}.t()", "transpose back")}


def _bw_transpose(b, n, g):
    if isinstance(g, _Const):
        return {"input": (g, "transpose")}
    return {"input": (f"{_atom(g)}.transpose({n.params['dim0']}, {n.params['dim1']})", "transpose back")}


def _bw_permute(b, n, g):
    perm = [d % len(n.out.shape) for d in n.params["shape"]]
    inv = [perm.index(i) for i in range(len(perm))]
    if isinstance(g, _Const):
        return {"input": (g, "permute")}
    return {"input": (f"{_atom(g)}.permute({', '.join(map(str, inv))})", "the inverse permutation")}


def _bw_identity(comment):
    """A copy (clone): dL/dx = g."""
    def bw(b, n, g):
        if not b.wants(n, "input"):
            return {}
        return {"input": (g, comment)}
    return bw


def _bw_property_t(prop):
    """x.T reverses every axis, x.mT swaps the last two: each is its own inverse, so dL/dx = g.T (g.mT)."""
    def bw(b, n, g):
        if isinstance(g, _Const):
            return {"input": (g, "transpose")}
        return {"input": (f"{_atom(g)}.{prop}", "transpose back" if prop == "mT" else "reverse the axes back")}
    return bw


def _norm_dims(dims) -> tuple:
    return tuple(dims) if isinstance(dims, (tuple, list, torch.Size)) else (dims,)


def _varargs_src(seq) -> str:
    """x.flip(0, 1): the sizes as arguments; none as one empty tuple (x.flip(()), x.repeat(()))."""
    seq = _norm_dims(seq)
    return ", ".join(map(str, seq)) if seq else "()"


def _fw_flip(w, n):
    return f"{_atom(w.arg(n, 'input'))}.flip({_varargs_src(n.params['dims'])})"


def _bw_flip(b, n, g):
    """y[i] = x[L-1-i] along dims: the adjoint flips the same dims back (flip is its own inverse)."""
    if isinstance(g, _Const):
        return {"input": (g, "flip")}
    return {"input": (f"{_atom(g)}.flip({_varargs_src(n.params['dims'])})",
                      "flip back: a flip is its own inverse")}


def _fw_roll(w, n):
    dims = n.params["dims"]
    return f"{_atom(w.arg(n, 'input'))}.roll({w.lit(n.params['shifts'])}" + (")" if dims is None else
                                                                          f", {w.lit(dims)})")


def _bw_roll(b, n, g):
    """y[i] = x[i - s] (cyclically, along dims; the flattened tensor when dims is None): dL/dx = g rolled by -s."""
    if isinstance(g, _Const):
        return {"input": (g, "roll")}
    shifts, dims = n.params["shifts"], n.params["dims"]
    back = tuple(-s for s in shifts) if isinstance(shifts, (tuple, list)) else -shifts
    src = f"{_atom(g)}.roll({_tup(back) if isinstance(back, tuple) else back}"
    return {"input": (src + (")" if dims is None else f", {_tup(dims) if isinstance(dims, (tuple, list)) else dims})"),
                      "roll back by the opposite shifts")}


def _fw_repeat(w, n):
    return f"{_atom(w.arg(n, 'input'))}.repeat({_varargs_src(n.params['repeats'])})"


def _bw_repeat(b, n, g):
    """y = x tiled r_i times along axis i (new leading axes for extra repeats): dL/dx sums the tiles,
    g viewed as (r_i, s_i) per axis and summed over each r_i."""
    x = n.params["input"]
    reps = _norm_dims(n.params["repeats"])
    lead = len(reps) - len(x.shape)
    if isinstance(g, _Const):
        return {"input": (_Const(g.c * math.prod(reps)), f"each element is copied {math.prod(reps)} times")}
    split, axes = [], []
    for i, r in enumerate(reps):
        if r != 1:
            axes.append(len(split))
            split.append(r)
        if i >= lead:
            split.append(x.shape[i - lead])
    if not axes:
        if tuple(n.out.shape) == tuple(x.shape):
            return {"input": (g, "repeat(1, ...) copies once")}
        return {"input": (f"{_atom(g)}.reshape({', '.join(map(str, x.shape))})" if x.shape
                          else f"{_atom(g)}.reshape(())", "repeat(1, ...) only adds size-1 axes")}
    dim = axes[0] if len(axes) == 1 else _tup(axes)
    split_g = g if tuple(split) == tuple(n.out.shape) else f"{_atom(g)}.reshape({', '.join(map(str, split))})"
    return {"input": (f"{_atom(split_g)}.sum(dim={dim})",
                      "the copies' cotangents summed: g split as (repeats, size) per axis")}


def _index_parts(index, shape, where):
    """Per input axis of a basic index: ("slice", start, stop) or ("int", i); None adds an axis."""
    items = list(index) if isinstance(index, tuple) else [index]
    n_consuming = sum(1 for it in items if it is not None and it is not Ellipsis)
    parts, axis = [], 0
    for it in items:
        if it is Ellipsis:
            for _ in range(len(shape) - n_consuming):
                parts.append(("slice", 0, shape[axis]))
                axis += 1
        elif it is None:
            continue
        elif isinstance(it, slice):
            start, stop, step = it.indices(shape[axis])
            if step != 1:
                raise EmitUnsupportedError(f"{where}: indexing with step {step} has no emission template")
            parts.append(("slice", start, max(start, stop)))
            axis += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            parts.append(("int", it % shape[axis]))
            axis += 1
        else:
            raise EmitUnsupportedError(f"{where}: indexing with a {type(it).__name__} has no emission template "
                                       f"(ints, slices, None and ... have)")
    while axis < len(shape):
        parts.append(("slice", 0, shape[axis]))
        axis += 1
    return parts


def _check_getitem(n):
    _index_parts(n.params["index"], n.params["input"].shape, n.where)


def _bw_getitem(b, n, g):
    x = n.params["input"]
    parts = _index_parts(n.params["index"], x.shape, n.where)
    kept = tuple((p[2] - p[1]) if p[0] == "slice" else 1 for p in parts)
    pads = [(p[1], L - p[2]) if p[0] == "slice" else (p[1], L - p[1] - 1) for p, L in zip(parts, x.shape)]
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        if isinstance(g, _Const):
            return {"input": (g, "the index only adds/drops size-1 axes")}
        return {"input": (f"{_atom(g)}.reshape({', '.join(map(str, x.shape))})", "the index only adds/drops size-1 axes")}
    gn = b.tensor(g, n.out)
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    while flat[-2:] == [0, 0] and len(flat) > 2:    # F.pad pairs run from the last axis: drop the first axes'
        flat = flat[:-2]
    src = gn if kept == tuple(n.out.shape) else f"{_atom(gn)}.reshape({', '.join(map(str, kept))})"
    return {"input": (f"F.pad({src}, {_tup(flat)})",
                      "zeros where the index did not read")}


def _fw_getitem(w, n):
    index = n.params["index"]
    items = index if isinstance(index, tuple) else (index,)
    src = []
    for it in items:
        src.append(":" if it == slice(None) else _slice_src(it) if isinstance(it, slice)
                   else "..." if it is Ellipsis else repr(it))
    return f"{_atom(w.arg(n, 'input'))}[{', '.join(src)}]"


def _fw_flatten(w, n):
    return f"{_atom(w.arg(n, 'input'))}.reshape({', '.join(map(str, n.out.shape))})"


# -- convolution ----------------------------------------------------------------------------------

def _conv_geo(n):
    from gradcheck_kit.manual import conv

    dims = int(n.op[4])
    x, w = n.params["input"], n.params["weight"]
    try:
        geo = conv._conv_geometry(n.op, dims, x.shape, w.shape, n.params["stride"], n.params["padding"],
                                  n.params["dilation"], n.params["groups"])
    except GradcheckKitError as e:
        raise EmitUnsupportedError(f"{n.where}: {e}") from None
    if len(x.shape) != dims + 2:
        raise EmitUnsupportedError(f"{n.where}: {n.op} of an unbatched input has no emission template "
                                   f"(add the batch axis: x.unsqueeze(0))")
    if x.shape[0] == 0:
        raise EmitUnsupportedError(f"{n.where}: {n.op} of an empty batch has no emission template")
    return dims, geo


def _check_conv(n):
    _conv_geo(n)
    for p in ("input", "weight"):
        if not isinstance(n.params[p], _Value):
            raise EmitUnsupportedError(f"{n.where}: {n.op}'s {p} is not a recorded tensor")


def _crop_src(starts, sizes, full) -> str:
    """``[:, :, a:a+n, ...]`` for the spatial axes that need it, or ''."""
    if all(a == 0 and s == f for a, s, f in zip(starts, sizes, full)):
        return ""
    sl = [":" if (a == 0 and s == f) else f":{s}" if a == 0 else f"{a}:{a + s}" for a, s, f in zip(starts, sizes, full)]
    while sl and sl[-1] == ":":
        sl.pop()
    return "[:, :, " + ", ".join(sl) + "]"


def _kw(**kw) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items())


def _conv_input_grad(b, n, g, dims, geo) -> str:
    """dL/dx = conv_transpose(g, w, stride, padding, output_padding, groups, dilation) (manual/conv._input_grad)."""
    from gradcheck_kit.manual import _shapes

    x, w = n.params["input"], n.params["weight"]
    L = x.shape[2:]
    pad = tuple(min(lo, hi) for lo, hi in geo.pads)
    ext = tuple((lo - p, hi - p) for (lo, hi), p in zip(geo.pads, pad))
    full = tuple(s + a + c for s, (a, c) in zip(L, ext))
    out_pad = tuple(_shapes.conv_output_padding(s, o, k, st, p, p, d) for s, o, k, st, p, d
                    in zip(full, n.out.shape[2:], geo.kernel, geo.stride, pad, geo.dilation))
    kw = {}
    if any(s != 1 for s in geo.stride):
        kw["stride"] = _same(geo.stride, dims)
    if any(pad):
        kw["padding"] = _same(pad, dims)
    if any(out_pad):
        kw["output_padding"] = _same(out_pad, dims)
    if geo.groups != 1:
        kw["groups"] = geo.groups
    if any(d != 1 for d in geo.dilation):
        kw["dilation"] = _same(geo.dilation, dims)
    wsrc = b.name(w)
    if dims == 2:
        # w read channels-last: oneDNN then runs the transposed convolution on NHWC tensors, without
        # the reorders to and from its blocked layout that NCHW costs (1 -> 32 channels: 7x faster,
        # docs/emit.md); the result is channels-last in memory, same values and shape
        wsrc = f"{wsrc}.contiguous(memory_format=torch.channels_last)"
    expr = f"F.conv_transpose{dims}d({', '.join([g, wsrc] + ([_kw(**kw)] if kw else []))})"
    crop = _crop_src(tuple(a for a, _ in ext), L, full)
    return expr + crop if crop else _New(expr)


def _conv_weight_grad(b, n, g, dims, geo, gw_name) -> None:
    """dL/dw, as the formulation the conv2d rule picks (manual/conv.weight_grad_formulation)."""
    from gradcheck_kit.manual import _shapes, conv

    x = n.params["input"]
    xn = b.name(x)
    nb, c_in, *L = x.shape
    c_out, out = n.out.shape[1], tuple(n.out.shape[2:])
    grp, K = geo.groups, geo.kernel
    form = conv.weight_grad_formulation(geo)
    ks = ", ".join(map(str, K))
    if (dims == 2 and grp == 1 and geo.symmetric and all(s == 1 for s in geo.stride)
            and all(d == 1 for d in geo.dilation) and all(k % 2 == 1 and lo == (k - 1) // 2
                                                          for k, (lo, _) in zip(K, geo.pads))
            and c_out * math.prod(K) <= c_in):
        # few output channels (manual/composites._few_out_weight_grad): g's K x K neighbourhoods
        # U = unfold(g) are smaller than x, so one GEMM reads x once instead of once per tap;
        # sum_q x[c, q] U[o, K-1-k, q] = sum_p x_pad[c, p + k] g[o, p]: flip the taps back
        win = b.tmp(f"{g}_win", (nb, c_out * math.prod(K), math.prod(out)))
        b.line(f"{win} = F.unfold({g}, {_same(K, dims)}, padding={_same(tuple(lo for lo, _ in geo.pads), dims)})",
               f"{_shape((nb, c_out * math.prod(K), math.prod(out)))}  g's {'x'.join(map(str, K))} neighbourhoods "
               f"(few output channels)")
        b.line(f"{gw_name} = torch.bmm({xn}.reshape({nb}, {c_in}, {math.prod(L)}), {win}.transpose(1, 2)).sum(0)"
               f".view({c_in}, {c_out}, {ks}).transpose(0, 1).flip(2, 3)",
               f"{_shape((c_out, c_in) + K)}  dL/dw[o, c, k] = sum_(n, q) x[n, c, q] g_win[n, (o, K-1-k), q]")
        return
    if form == "pointwise":
        sl = [f":{(o - 1) * s + 1}:{s}" if s != 1 else (":" if o == l else f":{o}")
              for o, s, l in zip(out, geo.stride, L)]
        xs = xn if all(v == ":" for v in sl) else f"{xn}[:, :, {', '.join(sl)}]"
        P = math.prod(out)
        b.line(f"{gw_name} = torch.einsum(\"ngcp,ngop->goc\", {_atom(xs)}.reshape({nb}, {grp}, {c_in // grp}, {P}), "
               f"{g}.reshape({nb}, {grp}, {c_out // grp}, {P})).reshape({c_out}, {c_in // grp}, {ks})",
               f"{_shape((c_out, c_in // grp) + K)}  1x1 kernel: dL/dw[o, c] = sum_(n, j) x[n, c, j s] g[n, o, j]")
        return
    if form == "patches":
        outs, taps = "pqr"[:dims], "uvw"[:dims]
        crop = _crop_src((0,) * dims, tuple(o * k for o, k in zip(out, K)), tuple(L))
        xs = f"{xn}{crop}.reshape({nb}, {grp}, {c_in // grp}, {', '.join(str(v) for ok in zip(out, K) for v in ok)})"
        gs = f"{g}.reshape({nb}, {grp}, {c_out // grp}, {', '.join(map(str, out))})"
        spec = f"ngc{''.join(p + u for p, u in zip(outs, taps))},ngo{outs}->goc{taps}"
        b.line(f"{gw_name} = torch.einsum(\"{spec}\", {xs}, {gs}).reshape({c_out}, {c_in // grp}, {ks})",
               f"{_shape((c_out, c_in // grp) + K)}  stride = kernel, windows tile {xn}: "
               f"dL/dw[o, c, k] = sum_(n, j) x[n, c, j, k] g[n, o, j]")
        return
    if form == "shifted_gemm":
        pads = [list(p) for p in geo.pads]
        pads[0][1] += 1
        padded = tuple(s + lo + hi for s, (lo, hi) in zip(L, pads))
        flat_x = tuple(v for lo_hi in reversed(pads) for v in lo_hi)
        flat_g = tuple(v for i in reversed(range(1, dims)) for v in (0, padded[i] - out[i]))
        span = out[0] * math.prod(padded[1:])
        strides = [math.prod(padded[i + 1:]) for i in range(dims)]
        import itertools
        offs = tuple(sum(t * s for t, s in zip(tap, strides)) for tap in itertools.product(*(range(k) for k in K)))
        # the rule's sum, with x padded straight into channels-last rows ([N, positions, C]): each
        # tap's operand is then a contiguous block of rows, which the GEMM reads faster than the
        # rule's transposed flat view (measured: benchmarks/emit_bench.py, docs/emit.md); g as rows
        # too, one copy whether g is NCHW or channels-last (the 2-d input gradients are)
        xr, gr = b.tmp(f"{xn}_rows", (nb, math.prod(padded), c_in)), b.tmp(f"{g}_rows", (nb, span, c_out))
        perm = (0,) + tuple(range(2, dims + 2)) + (1,)
        b.line(f"{xr} = F.pad({xn}.permute{_tup(perm)}, {_tup((0, 0) + flat_x)}).reshape({nb}, -1, {c_in})",
               f"{xn} zero-padded (+1 spare row), one row of channels per position: "
               f"{_shape((nb, math.prod(padded), c_in))}")
        gsrc = f"F.pad({g}.permute{_tup(perm)}, {_tup((0, 0) + flat_g)})" if any(flat_g) else f"{g}.permute{_tup(perm)}"
        b.line(f"{gr} = {gsrc}.reshape({nb}, {span}, {c_out})",
               f"g as rows, zero-padded to the padded width (cancels the wrap-around): {_shape((nb, span, c_out))}")
        b.line(f"{gw_name} = torch.stack([torch.bmm({gr}.transpose(1, 2), {xr}[:, off:off + {span}]).sum(0)\n"
               f"    for off in {_tup(offs)}], dim=-1).view({c_out}, {c_in}, {ks})",
               f"{_shape((c_out, c_in) + K)}  dL/dw[:, :, tap] = sum_n g_rows[n]^T x_pad[n, off + j, :], one GEMM per "
               f"tap, off = tap . {_tup(strides)}")
        return
    # swapped_conv: dL/dw = conv(x^T, g^T, stride=dilation, dilation=stride)^T, cropped to the kernel
    pad_src, kpad = "", tuple(lo for lo, _ in geo.pads)
    if not geo.symmetric:
        pad_src = f"F.pad(%s, {_tup(tuple(v for lo_hi in reversed(geo.pads) for v in lo_hi))})"
        kpad = (0,) * dims
    kprime = tuple(_shapes.conv_output_size(l, o, d, lo, hi, s) for l, o, d, (lo, hi), s
                   in zip(L, out, geo.dilation, geo.pads, geo.stride))
    kw = {}
    if any(d != 1 for d in geo.dilation):
        kw["stride"] = _same(geo.dilation, dims)
    if any(kpad):
        kw["padding"] = _same(kpad, dims)
    if any(s != 1 for s in geo.stride):
        kw["dilation"] = _same(geo.stride, dims)
    crop = _crop_src((0,) * dims, K, kprime)
    if grp > 1 and c_in == grp:
        xs = f"{xn}.reshape(1, {nb * c_in}, {', '.join(map(str, L))})"
        xs = pad_src % xs if pad_src else xs
        kw["groups"] = nb * c_in
        gsum = b.tmp(f"{gw_name}_per_sample", (1, nb * c_out) + kprime)
        b.line(f"{gsum} = F.conv{dims}d({xs}, {g}.reshape({nb * c_out}, 1, {', '.join(map(str, out))}), {_kw(**kw)})",
               "depthwise: batch x channels as groups, stride <-> dilation")
        b.line(f"{gw_name} = {gsum}.reshape({nb}, {c_out}, 1, {', '.join(map(str, kprime))}).sum(0){crop}",
               f"{_shape((c_out, 1) + K)}  summed over the batch" + (", cropped to the kernel" if crop else ""))
        return
    if grp == 1:
        xs = f"{xn}.transpose(0, 1)"
    else:
        xs = (f"{xn}.reshape({nb}, {grp}, {c_in // grp}, {', '.join(map(str, L))}).transpose(0, 2)"
              f".reshape({c_in // grp}, {grp * nb}, {', '.join(map(str, L))})")
    xs = pad_src % xs if pad_src else xs
    if grp != 1:
        kw["groups"] = grp
    b.line(f"{gw_name} = F.conv{dims}d({xs}, {g}.transpose(0, 1){', ' + _kw(**kw) if kw else ''}){crop}.transpose(0, 1)",
           f"{_shape((c_out, c_in // grp) + K)}  dL/dw = conv(x^T, g^T), stride <-> dilation (N contracted)"
           + (", cropped to the kernel" if crop else ""))


def _bw_conv(b, n, g):
    dims, geo = _conv_geo(n)
    gn = b.tensor(g, n.out)
    out = {}
    if b.wants(n, "input"):
        gx = _conv_input_grad(b, n, gn, dims, geo)
        out["input"] = (gx, "the convolution's adjoint: conv_transpose, same stride/padding"
                        + (" (output_padding: the tail the stride skipped)" if "output_padding" in gx else "")
                        + ("; w channels-last: oneDNN's NHWC path, the result is channels-last"
                           if "channels_last" in gx else ""))
    if b.wants(n, "weight"):
        gw = b.target(n.params["weight"], n)
        _conv_weight_grad(b, n, gn, dims, geo, gw)
        out["weight"] = (gw, f"dL/d{b.name(n.params['weight'])}")
    if isinstance(n.params.get("bias"), _Value) and b.wants(n, "bias"):
        out["bias"] = (f"{gn}.sum(dim={_tup((0,) + tuple(range(2, dims + 2)))})", "dL/db[o] = sum_(n, j) g[n, o, j]")
    return out


def _check_unfold(n):
    if len(n.params["input"].shape) != 4:
        raise EmitUnsupportedError(f"{n.where}: unfold of a {len(n.params['input'].shape)}-d input has no emission "
                                   f"template (4-d has)")


def _bw_unfold(b, n, g):
    x = n.params["input"]
    gn = b.tensor(g, n.out)
    kw = {"kernel_size": n.params["kernel_size"]}
    for k, d in (("dilation", 1), ("padding", 0), ("stride", 1)):
        if n.params[k] != d:
            kw[k] = n.params[k]
    return {"input": (f"F.fold({gn}, {_tup(x.shape[2:])}, {_kw(**kw)})",
                      "unfold is linear; its adjoint is fold (overlapping windows add up)")}


def _fw_max_pool(w, n):
    kw = w.kwargs(n, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
    return f"F.max_pool2d({w.arg(n, 'input')}, {kw}, return_indices=True)"


def _check_max_pool(n):
    if n.params["return_indices"]:
        raise EmitUnsupportedError(f"{n.where}: max_pool2d(..., return_indices=True) returns two tensors; "
                                   f"emit has a template for the pooled output alone")
    if len(n.params["input"].shape) not in (3, 4):
        raise EmitUnsupportedError(f"{n.where}: max_pool2d needs a 3-d or 4-d input")


def _bw_max_pool(b, n, g):
    xs = b.name(n.params["input"])
    gn = b.tensor(g, n.out)
    idx = f"{b.name(n.out)}_idx"
    return {"input": (f"torch.zeros_like({xs}).flatten(-2).scatter_add(-1, {idx}.flatten(-2), "
                      f"{_atom(gn)}.flatten(-2)).view_as({xs})",
                      "each window's cotangent scattered to its argmax (torch's index); overlaps add")}


_ELEMENTWISE = ("input", "other")
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)
_OPS: dict[str, _Op] = {
    "add": _Op(_fw_infix("+"), _bw_add(1), _ELEMENTWISE),
    "sub": _Op(_fw_infix("-"), _bw_add(-1), _ELEMENTWISE),
    "mul": _Op(_fw_infix("*"), _bw_mul, _ELEMENTWISE),
    "div": _Op(_fw_infix("/"), _bw_div, _ELEMENTWISE),
    "pow": _Op(lambda w, n: f"{_atom(w.arg(n, 'input'))}.pow({w.arg(n, 'exponent')})", _bw_pow,
               ("input", "exponent")),
    "neg": _Op(lambda w, n: f"-{_atom(w.arg(n, 'input'))}", _bw_neg),
    "abs": _Op(_fw_method("abs"), _unary(lambda x: f"{x}.sign()", "d|x|/dx = sign(x)  (0 at 0, as torch)")),
    "log": _Op(_fw_method("log"), _unary(lambda x: f"1 / {x}", "d log x/dx = 1 / x")),
    "exp": _Op(_fw_method("exp"), _unary(lambda y: y, "d exp x/dx = exp x", use_out=True)),
    "sqrt": _Op(_fw_method("sqrt"), _unary(lambda y: f"0.5 / {y}", "d sqrt x/dx = 1 / (2 sqrt x)", use_out=True)),
    "sin": _Op(_fw_method("sin"), _unary(lambda x: f"{x}.cos()", "d sin x/dx = cos x")),
    "cos": _Op(_fw_method("cos"), _unary(lambda x: f"-{x}.sin()", "d cos x/dx = -sin x")),
    "tanh": _Op(_fw_call("torch.tanh"), _unary(lambda y: f"1 - {y} * {y}", "tanh' = 1 - tanh^2", use_out=True),
                activation=True),
    "sigmoid": _Op(_fw_call("torch.sigmoid"), _unary(lambda y: f"{y} * (1 - {y})", "sigmoid' = s (1 - s)",
                                                     use_out=True), activation=True),
    "relu": _Op(_fw_call("F.relu"), _bw_relu, activation=True),
    "reciprocal": _Op(_fw_method("reciprocal"), _unary(lambda y: f"-{y} * {y}", "d(1/x)/dx = -1/x^2 = -y^2",
                                                       use_out=True)),
    "rsqrt": _Op(_fw_method("rsqrt"), _unary(lambda y: f"-0.5 * {y}.pow(3)", "d x^(-1/2)/dx = -x^(-3/2) / 2 = -y^3 / 2",
                                             use_out=True)),
    "square": _Op(_fw_method("square"), _unary(lambda x: f"2 * {x}", "d x^2/dx = 2 x")),
    "log1p": _Op(_fw_method("log1p"), _unary(lambda x: f"1 / ({x} + 1)", "d log(1 + x)/dx = 1 / (1 + x)")),
    "expm1": _Op(_fw_method("expm1"), _unary(lambda y: f"{y} + 1", "d(exp x - 1)/dx = exp x = y + 1", use_out=True)),
    "tan": _Op(_fw_method("tan"), _unary(lambda y: f"1 + {y} * {y}", "d tan x/dx = 1 + tan^2 x", use_out=True)),
    "atan": _Op(_fw_method("atan"), _unary(lambda x: f"1 / (1 + {x} * {x})", "d atan x/dx = 1 / (1 + x^2)")),
    "sinh": _Op(_fw_method("sinh"), _unary(lambda x: f"{x}.cosh()", "d sinh x/dx = cosh x")),
    "cosh": _Op(_fw_method("cosh"), _unary(lambda x: f"{x}.sinh()", "d cosh x/dx = sinh x")),
    "erf": _Op(_fw_method("erf"), _unary(lambda x: f"{_TWO_OVER_SQRT_PI!r} * (-{x} * {x}).exp()",
                                         "d erf x/dx = 2/sqrt(pi) exp(-x^2)")),
    "sum": _Op(_fw_method("sum", "dim", "keepdim"), _bw_reduce(False)),
    "mean": _Op(_fw_method("mean", "dim", "keepdim"), _bw_reduce(True)),
    "norm": _Op(_fw_method("norm"), _bw_norm, check=_check_norm),
    "matmul": _Op(_fw_infix("@"), _bw_matmul, _ELEMENTWISE),
    "mm": _Op(_fw_call("torch.mm", ("input", "mat2")), _bw_matmul, ("input", "mat2")),
    "bmm": _Op(_fw_call("torch.bmm", ("input", "mat2")), _bw_matmul, ("input", "mat2")),
    "dot": _Op(_fw_call("torch.dot", ("input", "other")), _bw_matmul, _ELEMENTWISE),
    "outer": _Op(_fw_call("torch.outer", ("input", "vec2")), _bw_outer, ("input", "vec2")),
    "addmm": _Op(_fw_call("torch.addmm", ("input", "mat1", "mat2"), ("beta", "alpha")), _bw_addmm,
                 ("input", "mat1", "mat2")),
    "linear": _Op(_fw_call("F.linear", ("input", "weight", "bias")), _bw_linear, ("input", "weight", "bias")),
    "view": _Op(_fw_shape("view"), _bw_reshape),
    "reshape": _Op(_fw_shape("reshape"), _bw_reshape),
    "flatten": _Op(_fw_flatten, _bw_reshape),
    "squeeze": _Op(_fw_flatten, _bw_reshape),
    "unsqueeze": _Op(_fw_flatten, _bw_reshape),
    "expand": _Op(_fw_shape("expand"), _bw_expand),
    "permute": _Op(_fw_shape("permute"), _bw_permute),
    "t": _Op(lambda w, n: f"{_atom(w.arg(n, 'input'))}.t()", _bw_t),
    "transpose": _Op(lambda w, n: f"{_atom(w.arg(n, 'input'))}.transpose({n.params['dim0']}, {n.params['dim1']})",
                     _bw_transpose),
    "T": _Op(lambda w, n: f"{_atom(w.arg(n, 'input'))}.T", _bw_property_t("T")),
    "mT": _Op(lambda w, n: f"{_atom(w.arg(n, 'input'))}.mT", _bw_property_t("mT")),
    "clone": _Op(_fw_method("clone", "memory_format"), _bw_identity("a copy: d clone(x)/dx = 1")),
    "flip": _Op(_fw_flip, _bw_flip),
    "roll": _Op(_fw_roll, _bw_roll),
    "repeat": _Op(_fw_repeat, _bw_repeat),
    "getitem": _Op(_fw_getitem, _bw_getitem, check=_check_getitem),
    "conv1d": _Op(_fw_call("F.conv1d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
                  _bw_conv, ("input", "weight", "bias"), check=_check_conv),
    "conv2d": _Op(_fw_call("F.conv2d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
                  _bw_conv, ("input", "weight", "bias"), check=_check_conv),
    "conv3d": _Op(_fw_call("F.conv3d", ("input", "weight", "bias"), ("stride", "padding", "dilation", "groups")),
                  _bw_conv, ("input", "weight", "bias"), check=_check_conv),
    "unfold": _Op(_fw_call("F.unfold", ("input",), ("kernel_size", "dilation", "padding", "stride")), _bw_unfold,
                  check=_check_unfold),
    "max_pool2d": _Op(_fw_max_pool, _bw_max_pool, check=_check_max_pool),
}


def supported_ops() -> list[str]:
    """The ops emit has a template for."""
    return sorted(_OPS)


# ---------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------

class _Writer:
    """Names the recording's values and writes the module's lines."""

    def __init__(self, rec: _Recording, nodes: list[_Node], out: _Value):
        self.rec, self.nodes, self.out = rec, nodes, out
        self.used = set(rec.inputs) | {"torch", "F", "loss_and_grads"}
        self.counters: dict[str, int] = {}
        self.lines: list[str] = []
        self.numel: dict[str, int] = {}     # elements of each tensor name (for freeing dead ones)
        self.dtype_src = next((n for n, t in rec.inputs.items()), None)

    # -- names
    def fresh(self, base: str) -> str:
        if base not in self.used and base.isidentifier():
            self.used.add(base)
            return base
        k = 2
        while f"{base}_{k}" in self.used:
            k += 1
        self.used.add(f"{base}_{k}")
        return f"{base}_{k}"

    def numbered(self, prefix: str) -> str:
        while True:
            self.counters[prefix] = self.counters.get(prefix, 0) + 1
            cand = f"{prefix}{self.counters[prefix]}"
            if cand not in self.used:
                self.used.add(cand)
                return cand

    def tmp(self, base: str, shape=None) -> str:
        name = self.fresh(base)
        if shape is not None:
            self.numel[name] = math.prod(shape)
        return name

    def name(self, v) -> str:
        return v.name if isinstance(v, _Value) else _num(v)

    def arg(self, n: _Node, key: str) -> str:
        return self.lit(n.params[key])

    def lit(self, v) -> str:
        if isinstance(v, _Value):
            return v.name
        if isinstance(v, torch.dtype):
            for name, t in self.rec_inputs_dtypes.items():
                if t == v:
                    return f"{name}.dtype"
            return str(v)
        if isinstance(v, torch.device):
            return f"{self.dtype_src}.device" if self.dtype_src and self.device == v else repr(str(v))
        if isinstance(v, torch.Size):
            return _tup(v)
        if isinstance(v, (list, tuple)):
            inner = ", ".join(self.lit(x) for x in v)
            return f"[{inner}]" if isinstance(v, list) else (f"({inner},)" if len(v) == 1 else f"({inner})")
        if isinstance(v, float):
            return _num(v)
        if isinstance(v, torch.Tensor):
            raise EmitUnsupportedError("a tensor argument that was not recorded")
        return repr(v)

    def kwargs(self, n: _Node, keys) -> str:
        defaults = {s[0]: s[1] for s in _SIGS.get(n.op, ()) if isinstance(s, tuple)}
        parts = []
        for k in keys:
            v = n.params.get(k)
            if k in defaults and v == defaults[k] and k != "kernel_size":
                continue
            if k == "kernel_size":
                parts.append(self.lit(v))
                continue
            parts.append(f"{k}={self.lit(v)}")
        return ", ".join(parts)

    def emit(self, stmt: str, comment: str | None = None, indent: str = "    ") -> None:
        first, *rest = stmt.split("\n")
        if comment:
            pad = max(2, _COMMENT_COL - len(indent) - len(first) if not rest else 2)
            if rest:
                self.lines.append(indent + first)
                for r in rest[:-1]:
                    self.lines.append(indent + r)
                self.lines.append(indent + rest[-1] + "  # " + comment)
                return
            self.lines.append(indent + first + " " * pad + "# " + comment)
        else:
            self.lines.append(indent + first)
            for r in rest:
                self.lines.append(indent + r)


class _Backward:
    """What a backward template sees: names, wanted inputs, and statements to emit."""

    def __init__(self, w: _Writer):
        self.w = w
        self.fresh: set[str] = set()

    def name(self, v) -> str:
        return self.w.name(v)

    def tmp(self, base: str, shape=None) -> str:
        return self.w.tmp(base, shape)

    def owns(self, g) -> bool:
        """g names a tensor only this backward reads (a fresh result, see ``_New``): safe to update in place."""
        return isinstance(g, str) and g in self.fresh

    def line(self, stmt: str, comment: str | None = None) -> None:
        self.w.emit(stmt, comment)

    def wants(self, n: _Node, key: str) -> bool:
        v = n.params.get(key)
        return isinstance(v, _Value) and v.wants

    def times(self, g, factor: str | None, k=1):
        """g * k * factor, with constants folded."""
        if isinstance(g, _Const):
            c = g.c * k
            if factor is None:
                return _Const(c)
            return factor if c == 1 else f"{_num(c)} * {_atom(factor)}"
        if k == -1 and factor is None:
            return f"-{_atom(g)}"
        parts = ([] if k == 1 else [_num(k)]) + [_atom(g)] + ([] if factor is None else [_atom(factor)])
        return " * ".join(parts)

    def target(self, v: _Value, n: _Node) -> str:
        """A name for v's gradient computed by node n: g_v when n is v's only use."""
        if self.uses.get(id(v), 0) == 1 and v.node is None and v.name in self.grad_names:
            return self.grad_names[v.name]
        if self.uses.get(id(v), 0) == 1 and f"g_{v.name}" not in self.w.used:
            self.w.used.add(f"g_{v.name}")
            return f"g_{v.name}"
        return self.w.fresh(f"g_{v.name}_{n.out.name}")

    def over(self, g, denom: str):
        if isinstance(g, _Const):
            return f"{_num(g.c)} / {_atom(denom)}"
        return f"{_atom(g)} / {_atom(denom)}"

    def tensor(self, g, v: _Value) -> str:
        """A tensor expression for cotangent ``g`` of ``v`` (a constant becomes full_like)."""
        if not isinstance(g, _Const):
            return g
        cache = self.__dict__.setdefault("_const_tensors", {})   # one full_like per (value, cotangent)
        if (g.c, v.name) in cache:
            return cache[(g.c, v.name)]
        name = cache[(g.c, v.name)] = self.w.fresh(f"g_{v.name}")
        self.w.numel[name] = math.prod(v.shape)
        self.line(f"{name} = torch.{'ones_like' if g.c == 1 else 'full_like'}({v.name}"
                  f"{'' if g.c == 1 else ', ' + _num(g.c)})", f"the cotangent of {v.name} is {_num(g.c)} everywhere")
        return name

    def unbroadcast(self, expr, from_shape, to_shape):
        """Sum ``expr`` (shaped ``from_shape``) down to ``to_shape`` (manual/_shapes.unbroadcast)."""
        from_shape, to_shape = tuple(from_shape), tuple(to_shape)
        if isinstance(expr, _Const):
            return _Const(expr.c * (math.prod(from_shape) // max(1, math.prod(to_shape))))
        if from_shape == to_shape:
            return expr
        lead = len(from_shape) - len(to_shape)
        ones = tuple(lead + i for i, s in enumerate(to_shape) if s == 1 and from_shape[lead + i] != 1)
        dim = lambda axes: str(axes[0]) if len(axes) == 1 else _tup(axes)   # noqa: E731
        if lead and not ones:
            out = f"{_atom(expr)}.sum(dim={dim(tuple(range(lead)))})"
        elif not lead:
            out = f"{_atom(expr)}.sum(dim={dim(ones)}, keepdim=True)"
        else:
            out = f"{_atom(expr)}.sum(dim={dim(tuple(range(lead)) + ones)}).reshape({', '.join(map(str, to_shape))})"
        return out


def _write(rec: _Recording, wrt: tuple, label: str) -> str:
    outs = rec.trace.outputs
    if len(outs) != 1 or outs[0] is None:
        raise EmitUnsupportedError(f"{label}: the loss must return one tensor")
    out = rec.by_id.get(outs[0])
    if out is None or not out.traced:
        raise EmitUnsupportedError(f"{label}: the loss does not depend on the inputs")
    if not out.wants:
        raise EmitUnsupportedError(f"{label}: the loss does not depend on {', '.join(wrt)}")
    # live nodes: those the output depends on (no dead code)
    live, stack = set(), [out]
    while stack:
        v = stack.pop()
        if v.node is None or id(v.node) in live:
            continue
        live.add(id(v.node))
        stack.extend(x for x in _flat(list(v.node.params.values())) if isinstance(x, _Value))
        if v.node.op == "const":
            stack.extend(x for x in _flat(list(v.node.params["args"]) + list(v.node.params["kwargs"].values()))
                         if isinstance(x, _Value))
    nodes = [n for n in rec.nodes if id(n) in live]
    for n in nodes:
        if n.op == "const":
            for x in _flat(list(n.params["args"]) + list(n.params["kwargs"].values())):
                if isinstance(x, torch.Tensor):
                    raise EmitUnsupportedError(f"{n.where}: {_pretty(n.func)} reads a tensor that is not an input "
                                               f"of the loss (a global?): pass it as an input")
    w = _Writer(rec, nodes, out)
    w.rec_inputs_dtypes = {}
    w.device = None
    for name, v in rec.inputs.items():
        t = rec.tensors[name]
        if t.is_floating_point():
            w.rec_inputs_dtypes.setdefault(name, t.dtype)
        if w.device is None:
            w.device, w.dtype_src = t.device, name

    # names: the user's assignment targets (the last op of each statement run), else z1/a1/c1
    last_of_run = {id(n): n.target for n in rec.nodes if n.target}
    summed = len(out.shape) > 0
    # z1, a1, ... unless the user's code names a variable z (or a): then t1 (s1), so that a
    # reassigned z_2 never sits next to an unrelated z2
    user = set(last_of_run.values()) | set(rec.inputs)
    lin_prefix = next(p for p in ("z", "t", "u", "tmp") if p not in user)
    act_prefix = next(p for p in ("a", "s", "act") if p not in user)
    for n in nodes:
        if n is out.node and not summed:
            n.out.name = w.fresh("loss")
        elif n is out.node:
            n.out.name = w.fresh(last_of_run.get(id(n), "losses"))
        elif id(n) in last_of_run:
            n.out.name = w.fresh(last_of_run[id(n)])
        elif n.op == "const" or not n.out.traced:
            n.out.name = w.numbered("c")
        else:
            n.out.name = w.numbered(act_prefix if _OPS[n.op].activation else lin_prefix)

    names = list(rec.inputs)
    w.lines.append(f"def loss_and_grads({', '.join(names)}):")
    w.lines.append("    # forward")
    for n in nodes:
        if n.op == "const":
            expr = _const_src(w, n)
        else:
            expr = _OPS[n.op].forward(w, n)
        lhs = n.out.name if n.op != "max_pool2d" else f"{n.out.name}, {n.out.name}_idx"
        if n.op == "max_pool2d":
            w.used.add(f"{n.out.name}_idx")
        w.emit(f"{lhs} = {expr}", f"{_shape(n.out.shape)}  {n.where}")
        w.numel[n.out.name] = math.prod(n.out.shape)
        if n.op == "max_pool2d":
            w.numel[f"{n.out.name}_idx"] = math.prod(n.out.shape)
    loss_name = out.name
    if summed:
        loss_name = w.fresh("loss")
        w.emit(f"{loss_name} = {out.name}.sum()", "[]  a non-scalar loss is summed")

    # backward
    w.lines.append("")
    w.lines.append("    # backward: g_v = dL/dv, in reverse order")
    b = _Backward(w)
    b.grad_names = {name: w.fresh(f"g_{name}") for name in wrt}   # the returned gradients' names
    b.uses = uses = {}
    contrib: dict[int, list] = {}
    for n in nodes:
        if n.op == "const" or not n.out.wants:
            continue
        for key in _OPS[n.op].tensors:
            v = n.params.get(key)
            if isinstance(v, _Value) and v.wants:
                uses[id(v)] = uses.get(id(v), 0) + 1

    def finish(v: _Value, force_name: str | None = None):
        terms = contrib.get(id(v), [])
        if not terms:
            return None
        if len(terms) == 1:
            expr, comment = terms[0]
            if force_name is not None and expr == force_name:
                return expr
            if isinstance(expr, _Const) and force_name is None:
                return expr
            if _is_name(expr) and expr.startswith("g_") and force_name is None:
                w.lines.append(f"    # g_{v.name} is {expr}: {comment}")
                b.fresh.discard(expr)          # now read under two names' uses: not owned
                return expr
            name = force_name or w.fresh(f"g_{v.name}")
            if isinstance(expr, _Const):
                expr = b.tensor(expr, v)
            w.emit(f"{name} = {expr}", f"{_shape(v.shape)}  {comment}")
            w.numel[name] = math.prod(v.shape)
            if isinstance(expr, _New):
                b.fresh.add(name)
            return name
        if all(isinstance(e, _Const) for e, _ in terms) and force_name is None:
            return _Const(sum(e.c for e, _ in terms))
        name = force_name or w.fresh(f"g_{v.name}")
        exprs = [(b.tensor(e, v) if isinstance(e, _Const) else e, c) for e, c in terms]
        w.lines.append(f"    # {v.name} is used {len(exprs)} times: one term per use")
        lead = f"    {name} = ("
        for i, (e, c) in enumerate(exprs):
            head = lead if i == 0 else " " * (len(lead) - 1) + "+ "
            tail = ")" if i == len(exprs) - 1 else ""
            text = head + e + tail
            w.lines.append(text + " " * max(2, _COMMENT_COL - len(text)) + "# " + c)
        w.numel[name] = math.prod(v.shape)
        b.fresh.add(name)                      # a sum is a new tensor
        return name

    seed = _Const(1.0)
    if summed:
        contrib[id(out)] = [(seed, "d(sum)/d(each loss) = 1")]
        grads_of_out = finish(out)
    else:
        grads_of_out = seed
    pending = {id(out): grads_of_out}
    for n in reversed(nodes):
        if n.op == "const" or not n.out.wants:
            continue
        g = pending.get(id(n.out)) if n.out is out else finish(n.out)
        if g is None:
            continue
        terms = _OPS[n.op].backward(b, n, g)
        for key, (expr, comment) in terms.items():
            v = n.params[key]
            if uses.get(id(v), 0) > 1:
                comment = f"{v.name} in {n.out.name} = {_OPS[n.op].forward(w, n)}"
            contrib.setdefault(id(v), []).append((expr, comment))
    results = {}
    for name in wrt:
        v = rec.inputs[name]
        gname = b.grad_names[name]
        if id(v) not in contrib:
            w.emit(f"{gname} = torch.zeros_like({name})", f"{_shape(v.shape)}  the loss does not reach {name}")
        else:
            finish(v, force_name=gname)
        results[name] = gname
    w.lines.append(f"    return {loss_name}, {{" + ", ".join(f'"{k}": {v}' for k, v in results.items()) + "}")
    _free_dead(w, set(names))
    return "\n".join(w.lines) + "\n"


_FREE_MIN_NUMEL = 4096     # tensors at least this large are deleted after their last use


def _free_dead(w: _Writer, params: set) -> None:
    """``del`` each tensor the function made (forward value, cotangent, temporary) of at least
    ``_FREE_MIN_NUMEL`` elements after the statement that last reads it.

    Python keeps a function's locals until it returns, so without this the backward would hold
    every forward intermediate and every cotangent at once; freed, their memory is reused by the
    statements that follow (fewer fresh pages: the allocator's page faults are a large share of
    a CPU backward's time, docs/emit.md).  Names bound to the same tensor (``g_t1 = g_t2``, or
    ``g_z = g_z_2.mul_(...)``, an update in place) are deleted together, after the last use of any.
    """
    fn = ast.parse("\n".join(w.lines)).body[0]
    group: dict[str, str] = {}

    def root(a):
        while group.get(a, a) != a:
            a = group[a]
        return a

    order, last = [], {}
    for i, st in enumerate(fn.body):
        for node in ast.walk(st):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                last[node.id] = i
        if isinstance(st, ast.Assign):
            targets = [t.id for tg in st.targets for t in ast.walk(tg) if isinstance(t, ast.Name)]
            order += targets
            v = st.value
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr.endswith("_"):
                v = v.func.value                          # x.mul_(...) returns x itself
            if len(targets) == 1 and isinstance(v, ast.Name):
                group[targets[0]] = root(v.id)
    members: dict[str, list] = {}
    for name in order:
        members.setdefault(root(name), []).append(name)
    free_after: dict[int, list] = {}
    for r, names in members.items():
        end = max((last.get(a, -1) for a in names), default=-1)
        if (end < 0 or isinstance(fn.body[min(end + 1, len(fn.body) - 1)], ast.Return)   # returning frees them
                or r in params or any(a in params for a in names)
                or max(w.numel.get(a, 0) for a in names) < _FREE_MIN_NUMEL):
            continue
        free_after.setdefault(end, []).extend(names)
    for i in sorted(free_after, reverse=True):
        at = fn.body[i].end_lineno             # line numbers are 1-based: insert after the statement
        saved, w.lines = w.lines, []
        dead = free_after[i]
        w.emit(f"del {', '.join(dead)}", f"not used below: {'their' if len(dead) > 1 else 'its'} memory is reused")
        saved[at:at] = w.lines
        w.lines = saved


def _const_src(w: _Writer, n: _Node) -> str:
    """A tensor made inside the loss from no input (torch.linspace(...)): its call with literals."""
    func, args, kwargs = n.params["func"], n.params["args"], n.params["kwargs"]
    name = getattr(func, "__name__", "")
    qual = getattr(func, "__qualname__", "") or ""
    kw = ", ".join(f"{k}={w.lit(v)}" for k, v in kwargs.items())
    if qual.startswith(("TensorBase.", "Tensor.")) and args and isinstance(args[0], _Value):
        if name in _SHAPE_LIKE:
            return f"{args[0].name}.{_SHAPE_LIKE[name]}({', '.join(map(str, n.out.shape))})"
        rest = ", ".join([w.lit(a) for a in args[1:]] + ([kw] if kw else []))
        return f"{args[0].name}.{name}({rest})"
    if getattr(torch, name, None) is func:
        rest = ", ".join([w.lit(a) for a in args] + ([kw] if kw else []))
        return f"torch.{name}({rest})"
    raise EmitUnsupportedError(f"{n.where}: {_pretty(func)} makes a constant tensor emit cannot write out")


# ---------------------------------------------------------------------------
# Public entry point and verification
# ---------------------------------------------------------------------------

def _record(loss: Callable, inputs: Mapping[str, torch.Tensor], wrt: tuple) -> _Recording:
    """The loss's forward through ``gradcheck_kit.trace.record`` (on copies), bound to emit's templates."""
    from gradcheck_kit.trace import record

    try:
        trace = record(loss, inputs, wrt)
    except GradcheckKitError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise EmitUnsupportedError(f"the loss raised {type(e).__name__}: {first}") from e
    if not isinstance(trace.result, torch.Tensor):
        raise EmitUnsupportedError(f"the loss returned a {type(trace.result).__name__}, not a tensor")
    return _Recording(trace, wrt)


def _label(loss) -> str:
    code = getattr(loss, "__code__", None)
    if code is not None:
        return f"{getattr(loss, '__name__', 'loss')}() in {os.path.basename(code.co_filename)}"
    return getattr(loss, "__name__", "loss")


def backward_source(loss: Callable, inputs: Mapping[str, torch.Tensor], wrt: Sequence[str] | None = None) -> str:
    """Source of a module defining ``loss_and_grads(**inputs) -> (loss, {name: dL/dname})``, verified.

    ``loss(**inputs)`` must return a tensor (summed when not scalar, as ``check`` does); ``wrt``
    names the inputs to differentiate (default: every floating-point input).  The module imports
    only torch and torch.nn.functional, and its literals (shapes, output paddings) hold for
    inputs of these shapes.  Raises ``EmitUnsupportedError`` for an op with no template (naming
    the op and its call site) and ``EmitVerificationError`` when the written gradients disagree
    with autograd's (first or second order, float64, rtol 1e-10); both are ``EmitError``.
    """
    if not callable(loss):
        raise EmitUnsupportedError(f"loss must be callable, got {type(loss).__name__}")
    if not isinstance(inputs, Mapping) or not inputs:
        raise EmitUnsupportedError("inputs must be a non-empty dict name -> tensor")
    for k, t in inputs.items():
        if not isinstance(k, str) or not k.isidentifier() or k in ("torch", "F"):
            raise EmitUnsupportedError(f"input name {k!r} cannot be a parameter of the emitted function")
        if not isinstance(t, torch.Tensor):
            raise EmitUnsupportedError(f"inputs[{k!r}] is a {type(t).__name__}, not a tensor")
    if wrt is None:
        wrt = tuple(k for k, t in inputs.items() if t.is_floating_point())
    elif isinstance(wrt, str):
        wrt = (wrt,)
    wrt = tuple(wrt)
    for k in wrt:
        if k not in inputs:
            raise EmitUnsupportedError(f"wrt names {k!r}, which is not among the inputs {sorted(inputs)}")
        if not inputs[k].is_floating_point():
            raise EmitUnsupportedError(f"wrt names {k!r}, a {inputs[k].dtype} tensor; only floating inputs have "
                                       f"gradients")
    if not wrt:
        raise EmitUnsupportedError("no floating-point input to differentiate")
    label = _label(loss)
    rec = _record(loss, inputs, wrt)
    body = _write(rec, wrt, label)
    source = _header(label, rec, wrt) + body
    verify(source, loss, inputs, wrt, label)
    return source


def _header(label: str, rec: _Recording, wrt: tuple) -> str:
    import textwrap

    shapes = ", ".join(f"{k} {_shape(v.shape)}" for k, v in rec.inputs.items())
    grads = ", ".join(f'"{k}": dL/d{k}' for k in wrt)
    written = textwrap.fill(f"Written for inputs shaped {shapes}; the literals below (shapes, paddings) depend "
                            f"on them, so re-emit for other shapes.", width=96)
    return (f'"""Explicit backward of {label}, written out by gradcheck-kit emit.\n\n'
            f"    loss_and_grads(**inputs) -> (loss, {{{grads}}})\n\n"
            f"{written}\n\n"
            f"Every line is a public, differentiable torch op, so these gradients can be differentiated\n"
            f"again.  Checked against autograd (float64, first and second order) before it was written.\n"
            f'"""\n'
            f"import torch\nimport torch.nn.functional as F\n\n\n")


def verify(source: str, loss: Callable, inputs: Mapping[str, torch.Tensor], wrt: Sequence[str],
           label: str = "loss") -> None:
    """Execute ``source`` and compare it with ``loss`` and autograd, in float64.

    At the given inputs: the loss value, the gradients and their second derivatives (Hessian-vector
    products, ``check(double_backward=True)``).  At a second point (every floating input scaled
    elementwise by 1 + 0.01 N(0, 1), seeded): the loss value and the gradients again, so a value
    the loss read from a tensor (``.item()``) and the module froze into a literal is caught.
    Raises ``EmitVerificationError`` naming the first disagreement.
    """
    ns: dict = {"__name__": "gradcheck_kit_emitted"}
    try:
        exec(compile(source, f"<emitted backward of {label}>", "exec"), ns)
    except Exception as e:
        raise EmitVerificationError(f"{label}: the emitted module does not load: {type(e).__name__}: {e}") from e
    fn = ns.get("loss_and_grads")
    x64 = {k: (t.detach().to(torch.float64) if t.is_floating_point() else t.detach()).clone()
           for k, t in inputs.items()}
    gen = torch.Generator(device="cpu").manual_seed(12)
    moved = {k: (t * (1 + 0.01 * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device))
                 if t.is_floating_point() else t) for k, t in x64.items()}
    for point, xs, second in (("the inputs", x64, True), ("a nearby point", moved, False)):
        _verify_at(fn, loss, xs, tuple(wrt), label, point, second)


def _verify_at(fn, loss, xs, wrt, label, point, second) -> None:
    from gradcheck_kit.compare import check

    try:
        value, _ = fn(**xs)
        with torch.no_grad():
            ref = loss(**xs).sum()
    except Exception as e:
        raise EmitVerificationError(f"{label}: at {point} the emitted module raised {type(e).__name__}: {e}") from e
    if not isinstance(value, torch.Tensor) or not torch.allclose(value, ref, rtol=_RTOL, atol=0):
        raise EmitVerificationError(f"{label}: at {point} the emitted loss value {float(value):.17g} differs from "
                                    f"the loss's {float(ref):.17g} (a value frozen into a literal?)")

    def manual(**kw):
        return fn(**kw)[1]

    try:
        report = check(loss, xs, manual, wrt=wrt, reference="autograd", double_backward=second,
                       rtol=_RTOL, diagnose=False, allow_unused=True)
    except GradcheckKitError as e:
        raise EmitVerificationError(f"{label}: verifying the emitted gradients at {point} failed: {e}") from e
    # check() fails a second-order result outright when the gradients carry no graph; a gradient
    # that is constant in the inputs (a linear loss) carries none and is right where autograd's is 0
    bad = [r for r in report.results if not r.ok and not (r.max_abs_err == 0 and r.mismatched == 0)]
    if bad:
        r = bad[0]
        raise EmitVerificationError(
            f"{label}: at {point} the emitted {'second derivative' if r.order == 2 else 'gradient'} of {r.name} "
            f"differs from autograd's by up to {r.max_abs_err:.3g} (allowed {r.atol:.3g} + {r.rtol:g} |ref|, "
            f"{r.mismatched} of {r.numel} elements): a template for one of its ops is wrong")
