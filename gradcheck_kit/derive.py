"""Exact Jacobians with sympy: a third oracle, independent of autograd and of finite differences.

    >>> from gradcheck_kit import derive
    >>> derive.jacobian("conv1d", inputs={"input": (1, 1, 4), "weight": torch.tensor([[[3., 2.]]])},
    ...                 wrt="input")
    Matrix([[3, 2, 0, 0], [0, 3, 2, 0], [0, 0, 3, 2]])
    >>> derive.verify("conv2d")          # [VerifyResult(conv2d[...]: ok, max_abs_err=...), ...]

How it works.  A rule's symbolic forward (``rule.symbolic``) maps numpy object arrays of
sympy expressions to the output the same way.  A shape tuple in ``inputs`` becomes
fresh real symbols ``{name}_{i}_{j}...``; a tensor becomes exact rationals.  Row ``i`` of
the Jacobian is ``d y_i / d x`` for the flattened output ``y`` and the flattened input
``x``; only the symbols ``y_i`` contains are differentiated (and, inside a sum, only
the terms that contain them), so a convolution costs ``O(outputs x receptive field)``
and its Jacobian comes back as a ``SparseMatrix``: the banded Toeplitz matrix whose
transpose is the transposed convolution.

``verify`` evaluates those exact entries at the sample's own float64 values (as exact
binary rationals, so ties and kinks sit exactly where the float64 backward sees them and
``Piecewise`` picks the rule's convention), contracts with an exact dyadic cotangent
``c`` (representable in float64) and compares ``J^T c`` with the rule's explicit
backward in float64.  There is no finite-difference noise: a correct rule agrees to
rounding, about 1e-15 relative.

For speed, ``verify`` does not build the derivative trees: ``_Point.d`` applies sympy's
differentiation rules (sum, product, power, ``Piecewise`` by its active branch, and each
function's own ``fdiff``) over the forward expression and evaluates them exactly at the
point as it goes, memoising shared subexpressions (a batch-norm mean is evaluated once).
Rational arithmetic is exact (``Fraction``); transcendental values are taken to 40
digits.  ``jacobian()`` builds the symbolic entries with ``sympy.diff``; the tests check
that both agree.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import sympy

from gradcheck_kit.errors import GradcheckKitError, InvalidInputError, InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _symbolic

__all__ = ["NoSymbolicForwardError", "Derivation", "VerifyResult", "derivation", "jacobian",
           "gradient", "latex", "pretty", "jacobian_of", "gradient_of", "derivation_of", "apply",
           "verify", "verify_all", "symbolic_rules", "time_verify_conv2d", "MAX_ELEMENTS"]

#: samples whose differentiable inputs hold more elements than this are skipped by ``verify``
MAX_ELEMENTS = 500


class NoSymbolicForwardError(UnsupportedError):
    """The rule has no symbolic forward (``rule.symbolic`` is ``None``)."""


# -- inputs -> object arrays ------------------------------------------------------------

def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def _is_shape(x) -> bool:
    return (isinstance(x, (tuple, list)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                  and s >= 0 for s in x))


def _rule(name_or_rule):
    from gradcheck_kit.manual import registry

    if isinstance(name_or_rule, registry.Rule):
        return name_or_rule
    if not isinstance(name_or_rule, str):
        raise InvalidParameterError(f"a rule name must be a string, got {type(name_or_rule).__name__}")
    try:
        return registry.get(name_or_rule)
    except KeyError as e:
        raise InvalidParameterError(e.args[0]) from None


def _need_symbolic(rule):
    if rule.symbolic is None:
        raise NoSymbolicForwardError(f"rule {rule.name!r} has no symbolic forward, so derive cannot "
                                     f"build its Jacobian; 'gradcheck-kit list' shows which rules have one")


def _array_of(name: str, spec: Any, *, exact: bool = False):
    """One input: shape tuple -> symbols, tensor/array -> rationals (integers stay integers)."""
    if spec is None or isinstance(spec, (bool, int, float)) and not isinstance(spec, np.ndarray):
        return spec, False
    if _is_shape(spec):
        return _symbolic.symbols(name, spec), True
    if _is_tensor(spec):
        if spec.is_floating_point():
            return _symbolic.rationals(spec, exact=exact), False
        if spec.is_complex():
            raise UnsupportedError(f"input {name!r} is complex; derive handles real tensors only")
        return spec.detach().cpu().numpy(), False  # integer / bool tensors stay integer arrays
    if isinstance(spec, np.ndarray):
        if spec.dtype == object:
            return _symbolic.asarray(spec), any(getattr(e, "free_symbols", None) for e in spec.flat)
        if np.issubdtype(spec.dtype, np.floating):
            return _symbolic.rationals(spec, exact=exact), False
        return spec, False
    if isinstance(spec, sympy.Basic):
        return np.array(spec, dtype=object), bool(spec.free_symbols)
    raise InvalidInputError(f"input {name!r} must be a shape tuple, a tensor, a number or None, "
                            f"got {type(spec).__name__}")


def _as_output(out) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return _symbolic.asarray(out)
    if isinstance(out, sympy.MatrixBase):
        return _symbolic.asarray(np.array(out.tolist(), dtype=object))
    return _symbolic.asarray(np.array(out, dtype=object))


def _symbols_of(arr) -> list:
    return [] if arr is None or not isinstance(arr, np.ndarray) else [
        e for e in arr.flat if isinstance(e, sympy.Symbol)]


# -- differentiation ---------------------------------------------------------------------

def _terms(expr: sympy.Basic) -> tuple:
    return expr.args if expr.is_Add else (expr,)


def _diff_term(t: sympy.Basic, s: sympy.Symbol) -> sympy.Basic:
    """``d t / d s`` for one term of a sum; a product with ``s`` as a plain factor drops it."""
    # symbols compare with ==: sympy's cache may hand back an equal, not identical, object
    if t == s:
        return sympy.S.One
    if t.is_Mul:
        holders = [a for a in t.args if s in a.free_symbols]
        if len(holders) == 1 and holders[0] == s:
            return sympy.Mul(*[a for a in t.args if a != s])
    return t.diff(s)


def _by_symbol(expr: sympy.Basic, wanted) -> dict:
    """symbol -> the terms of ``expr`` (a sum, or one term) that contain it, for symbols in ``wanted``."""
    groups: dict = {}
    for t in _terms(expr):
        for s in t.free_symbols:
            if s in wanted:
                groups.setdefault(s, []).append(t)
    return groups


def _sparse_jacobian(out: np.ndarray, wrt_syms: Sequence[sympy.Symbol],
                     progress: Callable[[int, int], None] | None = None) -> sympy.MatrixBase:
    col = {s: j for j, s in enumerate(wrt_syms)}
    entries = {}
    for i, y in enumerate(out.flat):
        if progress is not None:
            progress(i, out.size)
        if not isinstance(y, sympy.Basic):
            continue
        for s, terms in _by_symbol(y, col).items():
            parts = [_diff_term(t, s) for t in terms]
            d = sympy.Add(*parts) if len(parts) != 1 else parts[0]
            if d != 0:
                entries[(i, col[s])] = d
    m, n = out.size, len(wrt_syms)
    if len(entries) == m * n and m * n:
        return sympy.Matrix(m, n, lambda i, j: entries[(i, j)])
    return sympy.SparseMatrix(m, n, entries)


@dataclass
class Derivation:
    """A symbolic forward evaluated on symbols: its output, and its Jacobian with respect to ``wrt``."""

    name: str
    arrays: dict            # input name -> object array (or number / None / integer array)
    output: np.ndarray      # object array with the output's shape
    wrt: tuple              # names of the inputs differentiated against
    _jac: sympy.MatrixBase | None = field(default=None, repr=False)

    @property
    def wrt_symbols(self) -> list:
        return [s for n in self.wrt for s in _symbols_of(self.arrays[n])]

    def jacobian(self, progress: Callable[[int, int], None] | None = None) -> sympy.MatrixBase:
        """d vec(output) / d vec(wrt): rows follow the output's row-major order, columns the inputs'.

        ``progress(row, rows)`` is called before each row is differentiated (for a progress bar).
        """
        if self._jac is None:
            self._jac = _sparse_jacobian(self.output, self.wrt_symbols, progress)
        return self._jac

    def simplified(self) -> "Derivation":
        """The same derivation with ``sympy.simplify`` applied to every output and Jacobian entry."""
        out = _symbolic.asarray(np.vectorize(lambda e: sympy.simplify(e) if isinstance(e, sympy.Basic) else e,
                                             otypes=[object])(self.output))
        jac = self.jacobian().applyfunc(sympy.simplify)
        return Derivation(self.name, self.arrays, out, self.wrt, jac)

    def gradient(self) -> sympy.MatrixBase:
        if self.output.size != 1:
            raise InvalidParameterError(f"{self.name} has {self.output.size} outputs (shape "
                                        f"{self.output.shape}); gradient needs a scalar output, use jacobian")
        return self.jacobian().T

    def forward(self) -> sympy.Matrix:
        """The output as a column vector in row-major order."""
        return sympy.Matrix(self.output.size, 1, list(self.output.flat))

    def _header(self) -> str:
        shape = "x".join(map(str, self.output.shape)) or "scalar"
        return f"{self.name}: output {shape}, row-major; Jacobian wrt {', '.join(self.wrt)}"

    def latex(self) -> str:
        y = sympy.latex(self.forward())
        jac = sympy.latex(sympy.Matrix(self.jacobian()))
        wrt = ", ".join(sympy.latex(sympy.Symbol(w)) for w in self.wrt)
        return (f"y = {y}\n\n"
                f"\\frac{{\\partial y}}{{\\partial ({wrt})}} = {jac}")

    def pretty(self) -> str:
        y = sympy.pretty(self.forward(), use_unicode=True)
        jac = sympy.pretty(sympy.Matrix(self.jacobian()), use_unicode=True)
        return f"{self._header()}\n\ny =\n{y}\n\ndy/d({', '.join(self.wrt)}) =\n{jac}"

    def __str__(self) -> str:
        return self.pretty()


def _resolve_wrt(wrt, arrays, symbolic_names, where) -> tuple:
    if wrt is None:
        if not symbolic_names:
            raise InvalidParameterError(f"{where}: no input is symbolic; give at least one input as a shape tuple")
        return tuple(symbolic_names)
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for n in names:
        if n not in arrays:
            raise InvalidParameterError(f"{where}: wrt={n!r} is not an input (inputs: {', '.join(arrays)})")
        if n not in symbolic_names:
            raise InvalidParameterError(f"{where}: wrt={n!r} has numeric values; give it as a shape tuple "
                                        f"to differentiate with respect to it")
    return names


def _check_required(rule, inputs) -> None:
    """Tensor arguments without a default in the rule's signature must be given."""
    import inspect

    try:
        sig = inspect.signature(rule.backward_impl)
    except (TypeError, ValueError):
        return
    for name in rule.tensor_args:
        p = sig.parameters.get(name)
        if p is not None and p.default is inspect.Parameter.empty and inputs.get(name) is None:
            raise InvalidInputError(f"{rule.name} needs input {name!r} (a shape tuple or a tensor)")


def derivation(rule_name, inputs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
               wrt: str | Sequence[str] | None = None) -> Derivation:
    """Run ``rule_name``'s symbolic forward on ``inputs`` (shape tuples -> symbols, tensors -> rationals)."""
    rule = _rule(rule_name)
    _need_symbolic(rule)
    inputs = dict(inputs)
    unknown = [k for k in inputs if k not in rule.tensor_args]
    if unknown:
        raise InvalidParameterError(f"{rule.name} has no tensor argument {unknown[0]!r} "
                                    f"(arguments: {', '.join(rule.tensor_args)})")
    _check_required(rule, inputs)
    arrays, symbolic_names = {}, []
    for name in rule.tensor_args:
        arr, is_sym = _array_of(name, inputs.get(name))
        arrays[name] = arr
        if is_sym:
            symbolic_names.append(name)
    # trailing optional arguments that were not given are left out, as torch's defaults
    args = list(arrays.values())
    while args and args[-1] is None and list(arrays)[len(args) - 1] not in inputs:
        args.pop()
    wrt_names = _resolve_wrt(wrt, arrays, symbolic_names, rule.name)
    out = _as_output(rule.symbolic(*args, **dict(params or {})))
    return Derivation(rule.name, arrays, out, wrt_names)


def derivation_of(fn: Callable, inputs: Mapping[str, Any], wrt: str | Sequence[str] | None = None,
                  name: str | None = None) -> Derivation:
    """Compose symbolic forwards: ``fn(**arrays)`` over object arrays (see ``apply``).

        >>> d = derive.derivation_of(lambda t, u: (t**2).sum() + np.vectorize(sympy.log)(u).sum(),
        ...                          {"t": (3,), "u": (2,)})
    """
    arrays, symbolic_names = {}, []
    for n, spec in dict(inputs).items():
        arr, is_sym = _array_of(n, spec)
        arrays[n] = arr
        if is_sym:
            symbolic_names.append(n)
    wrt_names = _resolve_wrt(wrt, arrays, symbolic_names, name or getattr(fn, "__name__", "fn"))
    out = _as_output(fn(**arrays))
    return Derivation(name or getattr(fn, "__name__", "fn"), arrays, out, wrt_names)


def apply(rule_name: str, *arrays, **params) -> np.ndarray:
    """The symbolic forward of one rule, for composing: ``apply("sum", apply("pow", t, 2))``."""
    rule = _rule(rule_name)
    _need_symbolic(rule)
    return _as_output(rule.symbolic(*arrays, **params))


def jacobian(rule_name, inputs, params=None, wrt=None) -> sympy.MatrixBase:
    """Exact Jacobian of the flattened output with respect to the flattened ``wrt`` input(s).

    A ``SparseMatrix`` where any entry is structurally zero (convolutions, pooling,
    elementwise ops), a dense ``Matrix`` otherwise.
    """
    return derivation(rule_name, inputs, params, wrt).jacobian()


def gradient(rule_name, inputs, params=None, wrt=None) -> sympy.MatrixBase:
    """The gradient (a column) of a scalar-valued rule: the transposed 1-row Jacobian."""
    return derivation(rule_name, inputs, params, wrt).gradient()


def jacobian_of(fn: Callable, inputs, wrt=None) -> sympy.MatrixBase:
    """Exact Jacobian of ``fn(**arrays)``, a Python function over object arrays."""
    return derivation_of(fn, inputs, wrt).jacobian()


def gradient_of(fn: Callable, inputs, wrt=None) -> sympy.MatrixBase:
    return derivation_of(fn, inputs, wrt).gradient()


def latex(rule_name, inputs, params=None, wrt=None) -> str:
    """LaTeX of the forward expression (``y = ...``) and of the Jacobian."""
    return derivation(rule_name, inputs, params, wrt).latex()


def pretty(rule_name, inputs, params=None, wrt=None) -> str:
    """A readable (unicode) print of the forward expression and of the Jacobian."""
    return derivation(rule_name, inputs, params, wrt).pretty()


# -- verification -------------------------------------------------------------------------

@dataclass
class VerifyResult:
    """One sample's exact cross-check: ``J^T c`` (sympy, exact) against the rule's float64 backward."""

    rule: str
    sample: str
    ok: bool                      # False only when a disagreement (or a failure) was found
    max_abs_err: float            # max |backward - J^T c| over every differentiable input
    tol: float = 0.0              # the bound max_abs_err was held to
    skipped: bool = False         # True: nothing was checked, see reason
    reason: str = ""              # why it was skipped or failed
    worst: str = ""               # "weight[2, 0, 1, 1]: backward 0.5, exact 0.25"
    errors: dict = field(default_factory=dict)   # input name -> max abs error
    forward_err: float = 0.0      # max |symbolic forward - torch forward| at the point
    n_inputs: int = 0             # differentiable input elements (Jacobian columns)
    n_outputs: int = 0            # output elements (Jacobian rows)
    nnz: int = 0                  # structurally nonzero Jacobian entries evaluated
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.rule} {self.sample}: skipped ({self.reason})"
        state = "ok" if self.ok else "DISAGREES"
        extra = f"; {self.reason}" if self.reason else ""
        worst = f"; worst {self.worst}" if not self.ok and self.worst else ""
        return (f"{self.rule} {self.sample}: {state}, max_abs_err={self.max_abs_err:.3g} (tol {self.tol:.1g}), "
                f"{self.n_outputs}x{self.n_inputs} Jacobian, {self.nnz} nonzeros, {self.seconds:.2f}s{extra}{worst}")


def _value(expr) -> Fraction | None:
    """An evaluated sympy number as an exact Fraction (transcendentals to 40 digits); None if not finite."""
    if isinstance(expr, Fraction):
        return expr
    if expr.is_Rational:
        return Fraction(int(expr.p), int(expr.q))
    if expr.free_symbols:
        raise InvalidInputError(f"expression still holds symbols {sorted(map(str, expr.free_symbols))[:3]} "
                                f"after substitution")
    v = expr.evalf(40)
    if not v.is_Float:
        if v.is_Rational:
            return Fraction(int(v.p), int(v.q))
        re, im = v.as_real_imag()
        if im != 0 or not re.is_Float:
            return None
        v = re
    if not v.is_finite:
        return None
    r = sympy.Rational(v)
    return Fraction(int(r.p), int(r.q))


_REL = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class _Point:
    """Exact evaluation at a rational point, memoised over common subexpressions.

    Add, Mul, integer Pow, relations and Piecewise are evaluated in ``Fraction``
    arithmetic; any other node (exp, log, sqrt, erf, ...) is rebuilt from its evaluated
    arguments and evaluated by sympy to 40 digits.  Nothing is simplified.
    """

    def __init__(self, values: dict):
        self.sym = values                                    # Symbol -> sympy Rational
        self.frac = {k: Fraction(int(v.p), int(v.q)) for k, v in values.items()}
        self.memo: dict = {}
        self.dmemo: dict = {}
        self.fs: dict = {}

    def __call__(self, e):
        if e.is_Symbol:
            v = self.frac.get(e)
            if v is None:
                raise InvalidInputError(f"symbol {e} has no value at the point")
            return v
        if e.is_Rational:
            return Fraction(int(e.p), int(e.q))
        try:
            return self.memo[e]
        except KeyError:
            pass
        v = self._eval(e)
        self.memo[e] = v
        return v

    def _eval(self, e):
        if e.is_Add or e.is_Mul:
            acc = None
            for a in e.args:
                v = self(a)
                if v is None:
                    return None
                acc = v if acc is None else (acc + v if e.is_Add else acc * v)
            return acc
        if e.is_Pow and e.exp.is_Integer:
            b = self(e.base)
            if b is None or (b == 0 and e.exp < 0):
                return None
            return b ** int(e.exp)
        if e.is_Piecewise:
            for expr, cond in e.args:
                c = self.truth(cond)
                if c is None:
                    return None
                if c:
                    return self(expr)
            return None  # no branch holds: undefined
        if e.is_Float:
            r = sympy.Rational(e)
            return Fraction(int(r.p), int(r.q))
        if (e.is_Function or e.is_Pow) and e.args:
            vals = [self(a) for a in e.args]
            if any(v is None for v in vals):
                return None
            return _value(e.func(*[_rat(v) for v in vals]))
        return _value(e.xreplace(self.sym) if e.free_symbols else e)

    def truth(self, c) -> bool | None:
        if c is sympy.true or c is True:
            return True
        if c is sympy.false or c is False:
            return False
        if c.is_Relational:
            a, b = self(c.lhs), self(c.rhs)
            if a is None or b is None:
                return None
            return _REL[c.rel_op](a, b)
        if isinstance(c, (sympy.And, sympy.Or)):
            vals = [self.truth(a) for a in c.args]
            if any(v is None for v in vals):
                return None
            return all(vals) if isinstance(c, sympy.And) else any(vals)
        if isinstance(c, sympy.Not):
            v = self.truth(c.args[0])
            return None if v is None else not v
        v = c.xreplace(self.sym)
        if v in (sympy.true, sympy.false):
            return bool(v)
        return None

    def free(self, e) -> frozenset:
        """``e.free_symbols``, cached (sympy recomputes it on every call)."""
        if e.is_Atom:
            return frozenset((e,)) if e.is_Symbol else frozenset()
        f = self.fs.get(e)
        if f is None:
            f = frozenset().union(*[self.free(a) for a in e.args])
            self.fs[e] = f
        return f

    def d(self, e, s):
        """``d e / d s`` at the point: sympy's differentiation rules applied to the expression tree,
        evaluated exactly as they go (no derivative tree is built; ``fdiff`` gives each function's
        derivative).  Node types without a rule here go through ``e.diff(s)``."""
        if e.is_Symbol:  # ==, not is: sympy's cache may hold an equal, distinct Symbol object
            return Fraction(1) if e == s else Fraction(0)
        if e.is_Atom or s not in self.free(e):
            return Fraction(0)
        key = (e, s)
        try:
            return self.dmemo[key]
        except KeyError:
            pass
        v = self._d(e, s)
        self.dmemo[key] = v
        return v

    def _d(self, e, s):
        if e.is_Add:
            acc = Fraction(0)
            for a in e.args:
                if s in self.free(a):
                    v = self.d(a, s)
                    if v is None:
                        return None
                    acc += v
            return acc
        if e.is_Mul:  # product rule: sum_i a_i' prod_{j != i} a_j
            vals = [self(a) for a in e.args]
            acc = Fraction(0)
            for i, a in enumerate(e.args):
                if s not in self.free(a):
                    continue
                da = self.d(a, s)
                if da is None:
                    return None
                if da == 0:
                    continue
                term = da
                for j, v in enumerate(vals):
                    if j != i:
                        if v is None:
                            return None
                        term *= v
                acc += term
            return acc
        if e.is_Pow:
            b, x = e.args
            if s not in self.free(x):  # d b^x = x b^(x - 1) b'
                db, bv, xv = self.d(b, s), self(b), self(x)
                if db is None or bv is None or xv is None:
                    return None
                if db == 0:
                    return Fraction(0)
                if x.is_Integer:
                    k = int(x)
                    if bv == 0 and k - 1 < 0:
                        return None
                    return k * bv ** (k - 1) * db
                p = _value(sympy.Pow(_rat(bv), _rat(xv - 1)))
                return None if p is None else xv * p * db
            return self(e.diff(s))
        if e.is_Piecewise:
            # sympy's d/ds Piecewise((e_k, c_k), ...) = Piecewise((d e_k/ds, c_k), ...): at the
            # point, the derivative of the first branch whose condition holds.
            for expr, cond in e.args:
                c = self.truth(cond)
                if c is None:
                    return None
                if c:
                    return self.d(expr, s)
            return None
        if e.is_Function and e.args:
            acc = Fraction(0)
            for i, a in enumerate(e.args):
                if s not in self.free(a):
                    continue
                da = self.d(a, s)
                if da is None:
                    return None
                if da == 0:
                    continue
                try:
                    f = e.fdiff(i + 1)
                except Exception:
                    return self(e.diff(s))
                if f.has(sympy.Derivative):
                    return self(e.diff(s))
                fv = self(f)
                if fv is None:
                    return None
                acc += fv * da
            return acc
        return self(e.diff(s))


def _rat(v: Fraction) -> sympy.Rational:
    return sympy.Rational(v.numerator, v.denominator)


def _cotangent(shape, seed: int):
    """Random nonzero dyadic rationals (+-k/4, k = 1..8): exact in float64 and in sympy."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(1, 9, tuple(shape), generator=gen)
    sign = torch.randint(0, 2, tuple(shape), generator=gen) * 2 - 1
    return (k * sign).to(torch.float64) / 4


def _select(rule, sample):
    samples = rule.samples(device="cpu", dtype=_torch().float64)
    if sample is None:
        return samples
    from gradcheck_kit.manual.registry import Sample

    if isinstance(sample, Sample):
        return [sample]
    if isinstance(sample, int) and not isinstance(sample, bool):
        if not -len(samples) <= sample < len(samples):
            raise InvalidParameterError(f"{rule.name} has {len(samples)} samples; sample={sample} is out of range")
        return [samples[sample]]
    if isinstance(sample, str):
        chosen = [s for s in samples if s.name == sample]
        if not chosen:
            import difflib

            close = difflib.get_close_matches(sample, [s.name for s in samples], n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidParameterError(f"{rule.name} has no sample named {sample!r}{hint}")
        return chosen
    if isinstance(sample, (list, tuple)):
        return [s for x in sample for s in _select(rule, x)]
    raise InvalidParameterError(f"sample must be a Sample, a sample name or an index, got {type(sample).__name__}")


def _torch():
    import torch

    return torch


def _verify_sample(rule, sample, *, seed: int, rtol: float, max_elements: int) -> VerifyResult:
    torch = _torch()
    t0 = time.perf_counter()
    args, kwargs = tuple(sample.args), dict(sample.kwargs)
    res = VerifyResult(rule.name, sample.name, ok=True, max_abs_err=0.0)
    mask = rule.differentiable_mask(args)
    n_in = sum(a.numel() for a, m in zip(args, mask) if m)
    res.n_inputs = n_in
    if not any(mask):
        res.skipped, res.reason = True, "no differentiable input"
        return res
    if n_in > max_elements:
        res.skipped = True
        res.reason = f"{n_in} differentiable input elements > {max_elements}; too big for a symbolic check"
        return res
    # An exact point has no NaN or infinity: such samples (the rules' NaN/inf parity samples) are
    # checked against torch by the rule tests, not symbolically.
    if any(not bool(torch.isfinite(a).all()) for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()):
        res.skipped, res.reason = True, "the sample holds NaN or infinity, which has no exact symbolic value"
        return res

    # symbols for the differentiable inputs, their float64 values as exact rationals at the point
    arrays, point, syms = [], {}, {}
    for a, m, name in zip(args, mask, rule.tensor_args):
        if m:
            s = _symbolic.symbols(name, tuple(a.shape))
            vals = a.detach().to("cpu", torch.float64).numpy()
            for idx in np.ndindex(vals.shape):
                point[s[idx]] = _symbolic.to_rational(float(vals[idx]))
            syms[name] = s
            arrays.append(s)
        else:
            arr, _ = _array_of(name, a, exact=True)
            arrays.append(arr)

    try:
        out = _as_output(rule.symbolic(*arrays, **kwargs))
    except GradcheckKitError as e:  # a configuration the symbolic forward declines: say so
        res.skipped, res.reason = True, f"symbolic forward declines this sample: {e}"
        res.seconds = time.perf_counter() - t0
        return res
    except Exception as e:  # a bug in the symbolic forward is a failed check, not a crash
        res.ok, res.reason = False, f"symbolic forward raised {type(e).__name__}: {e}"
        res.seconds = time.perf_counter() - t0
        return res
    ref = rule.forward(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
    res.n_outputs = int(ref.numel())
    if tuple(out.shape) != tuple(ref.shape):
        res.ok = False
        res.reason = f"symbolic forward has shape {tuple(out.shape)}, torch forward {tuple(ref.shape)}"
        res.seconds = time.perf_counter() - t0
        return res

    g = _cotangent(ref.shape, seed)
    cot = [Fraction(float(c)) for c in g.reshape(-1).tolist()]
    ref_flat = ref.detach().reshape(-1).tolist()

    at = _Point(point)
    acc = {s: Fraction(0) for s in point}
    fwd_err, nnz, nonfinite = 0.0, 0, []
    for i, y in enumerate(out.flat):
        yv = at(y)
        if yv is None:
            nonfinite.append(f"output {i}")
        elif math.isfinite(ref_flat[i]):
            fwd_err = max(fwd_err, abs(float(yv) - ref_flat[i]))
        c = cot[i]
        # row i of J, contracted with c_i: only the symbols y_i holds, term by term
        for s, terms in _by_symbol(y, acc).items():
            nnz += 1
            for t in terms:
                v = at.d(t, s)
                if v is None:
                    nonfinite.append(f"d output {i} / d {s}")
                    continue
                acc[s] += c * v
    res.nnz = nnz
    fscale = max(1.0, max((abs(v) for v in ref_flat if math.isfinite(v)), default=0.0))
    res.forward_err = fwd_err
    fwd_ok = fwd_err <= rtol * 10 * fscale

    # the rule's explicit backward in float64
    grads = rule.backward(g.clone(), *[a.clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
    worst_err, tol_used = 0.0, 0.0
    for a, m, name, gr in zip(args, mask, rule.tensor_args, grads):
        if not m:
            continue
        s = syms[name]
        exact = np.array([float(acc[e]) for e in s.flat], dtype=np.float64).reshape(s.shape)
        got = np.zeros(s.shape) if gr is None else gr.detach().to("cpu", torch.float64).numpy()
        if got.shape != exact.shape:
            res.ok = False
            res.reason = f"backward's d/d{name} has shape {got.shape}, expected {exact.shape}"
            continue
        diff = np.abs(got - exact)
        diff = np.where(np.isnan(diff), np.inf, diff)
        err = float(diff.max()) if diff.size else 0.0
        tol = rtol * max(1.0, float(np.abs(exact).max()) if exact.size else 0.0)
        res.errors[name] = err
        tol_used = max(tol_used, tol)
        if err > tol:
            res.ok = False
        if diff.size and err >= worst_err:
            worst_err = err
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
            res.worst = (f"{name}[{', '.join(map(str, idx))}]: backward {got[idx]:.17g}, "
                         f"exact {exact[idx]:.17g}")
    res.max_abs_err = worst_err
    res.tol = tol_used
    if nonfinite:
        res.reason = (res.reason + "; " if res.reason else "") + \
            f"not finite at the point: {', '.join(nonfinite[:3])}{' ...' if len(nonfinite) > 3 else ''}"
    if not fwd_ok:
        res.ok = False
        res.reason = (res.reason + "; " if res.reason else "") + \
            f"symbolic forward differs from torch's by {fwd_err:.3g}"
    res.seconds = time.perf_counter() - t0
    return res


def verify(name, sample=None, *, seed: int = 0, rtol: float = 1e-12,
           max_elements: int = MAX_ELEMENTS) -> list[VerifyResult]:
    """Check the rule's explicit backward against its exact symbolic Jacobian, sample by sample.

    ``sample``: ``None`` (every sample of ``rule.samples(dtype=float64)``), a sample name,
    an index, a ``Sample`` or a list of those.  Each result has ``ok`` and ``max_abs_err``;
    ``ok`` is False when ``|backward - J^T c| > rtol * max(1, max|J^T c|)`` for some
    element or when the symbolic forward disagrees with torch's forward.  Samples with
    more than ``max_elements`` differentiable input elements are skipped (``skipped``,
    ``reason``).
    """
    rule = _rule(name)
    _need_symbolic(rule)
    return [_verify_sample(rule, s, seed=seed, rtol=rtol, max_elements=max_elements)
            for s in _select(rule, sample)]


def symbolic_rules() -> list[str]:
    """Names of the rules that have a symbolic forward."""
    from gradcheck_kit.manual import registry

    return [r.name for r in registry.rules() if r.symbolic is not None]


def verify_all(*, seed: int = 0, rtol: float = 1e-12, max_elements: int = MAX_ELEMENTS,
               progress: Callable[[str], None] | None = None) -> dict[str, list[VerifyResult]]:
    """``verify`` every rule that has a symbolic forward; ``progress(name)`` is called after each."""
    out = {}
    for n in symbolic_rules():
        out[n] = verify(n, seed=seed, rtol=rtol, max_elements=max_elements)
        if progress is not None:
            progress(n)
    return out


# -- timing (used by benchmarks/) ----------------------------------------------------------

def time_verify_conv2d(shapes: Iterable[tuple] = ((1, 1, 4, 4), (1, 2, 8, 8), (1, 2, 12, 12), (1, 2, 16, 16)),
                       out_channels: int = 3, kernel: int = 3, repeat: int = 1) -> list[dict]:
    """Seconds of ``verify("conv2d", sample)`` per input shape (weight ``O x C x k x k``, no bias).

    Returns one dict per shape: ``shape``, ``input_elements``, ``differentiable_elements``
    (input + weight), ``seconds`` (best of ``repeat``), ``ok``, ``max_abs_err``.
    """
    torch = _torch()
    from gradcheck_kit.manual.registry import Sample

    rows = []
    for shape in shapes:
        shape = tuple(shape)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        w = torch.randn(out_channels, shape[1], kernel, kernel, generator=gen, dtype=torch.float64)
        s = Sample((x, w, None), {}, f"conv2d[{'x'.join(map(str, shape))}]")
        best, res = math.inf, None
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            res = verify("conv2d", s, max_elements=10**9)[0]
            best = min(best, time.perf_counter() - t0)
        rows.append(dict(shape=shape, input_elements=x.numel(), differentiable_elements=x.numel() + w.numel(),
                         seconds=best, ok=res.ok, max_abs_err=res.max_abs_err))
    return rows
