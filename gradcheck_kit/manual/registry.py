"""The rule registry: one ``Rule`` per torch function, looked up by name.

A rule is data, as an OpInfo is: the torch function it mirrors, the names of its
positional tensor arguments, an explicit backward, sample inputs, and optionally a
symbolic (sympy) forward.  ``register`` adds one; a duplicate name is an error at
import time.

Contract of a rule (other parts of the kit depend on it):

* ``rule.forward(*tensors, **params)`` computes what ``rule.torch_fn`` computes.
* ``rule.backward(grad_output, *tensors, needs_input_grad=None, **params)`` returns a
  tuple with one entry per positional argument: the gradient of
  ``<grad_output, forward(...)>`` with respect to that argument, or ``None`` where the
  argument is ``None``, not a floating tensor, listed in ``nondifferentiable``, or
  not asked for in ``needs_input_grad``.  ``nondifferentiable`` arguments that torch never
  differentiates either, being read only for their shape (``x.expand_as(other)``), are also
  listed in ``shape_only``: the rule engine then accepts them requiring grad (torch gives them
  no gradient from this op), where another ``nondifferentiable`` argument requiring grad is
  refused (``cross_entropy``'s ``weight``, which torch differentiates for probability targets).
* ``rounds=True``: the forward rounds to a coarser dtype (``x.float()`` of a float64 ``x``).
  Finite differences, which run in float64, see a staircase there, so the sweep and the
  mutation audit check such a rule against autograd only (and say so).
* ``rule.samples(device, dtype)`` yields ``Sample(args, kwargs, name)``.
* ``rule.symbolic(*arrays, **params)`` (optional) is the forward over numpy object
  arrays of sympy expressions, used by ``gradcheck_kit.derive``.

Extensions (all optional, so the positional contract above keeps working):

* **Keyword tensors.** ``register(..., keyword_tensors=("weight",))`` declares keyword
  parameters that may hold differentiable tensors (``mse_loss(..., weight=w)``).  The
  backward implementation then also receives ``needs_keyword_grad={"weight": bool}``
  and returns its positional gradients followed by one ``dict`` of keyword gradients.
  ``rule.backward`` always returns a ``Grads``: a tuple (one entry per positional
  argument) whose ``.keywords`` maps each declared keyword tensor that was passed to its
  gradient (or ``None``).  ``rule.all_grads(...)`` gives one ``{name: grad}`` dict.
* **Saved forward results.** ``register(..., save=fn)``: ``fn(*args, **params)`` runs
  the forward and returns ``(output, saved)`` where ``saved`` is a dict of tensors the
  backward can reuse (the output, max-pool indices, batch-norm statistics), as
  ``derivatives.yaml`` gives its formulas ``result``.  The backward implementation then
  accepts ``saved=None`` and must give the same answer with or without it.
  ``rule.forward_saved(*args, **params)`` returns ``(output, saved)`` for every rule
  (``saved`` is ``{}`` where the rule declares nothing), and ``rule.backward(...,
  saved=...)`` passes it on only to rules that take it.
* **Aliases.** ``register(..., aliases=(torch.flatten, torch.Tensor.flatten))``: other
  torch callables (functions or ``torch.Tensor`` methods) that compute the same thing
  with the same tensor arguments first, so ``x.permute(...)``, ``torch.permute(x, ...)``
  map onto one rule.  ``rule.mirrors_all`` lists the dotted names of all of them.

* **Sequence arguments.** ``register(..., sequence_args=("tensors",))`` declares
  positional arguments that hold a list or tuple of tensors (``torch.cat(tensors)``,
  ``torch.stack``, ``einsum(eq, [a, b])``).  Such an argument is differentiable when any
  of its elements is a floating tensor, and its gradient entry is a tuple with one
  gradient per element (``None`` for elements that are not floating tensors).  Its
  ``needs_input_grad`` entry may be one bool or one bool per element; the
  implementation always receives one bool (any element wanted) and returns a tuple (or
  list) per sequence argument, which ``rule.backward`` masks element by element.
* **Multi-output ops** (``split``, ``max_pool2d(return_indices=True)``): the forward
  returns a tuple and ``grad_output`` is a tuple with one entry per output, ``None`` for
  an output that got no gradient (integer outputs such as indices always get ``None``).

``needs_input_grad`` given to a backward implementation always has one entry per
declared tensor argument (``False`` for arguments not passed), so an implementation may
index it by position whatever the caller omitted.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = ["Sample", "Rule", "Grads", "register", "get", "names", "rules", "for_callable"]


@dataclass(frozen=True)
class Sample:
    """One sample input: positional ``args`` (tensors, ``None`` or numbers), keyword ``kwargs``."""

    args: tuple
    kwargs: dict
    name: str

    def __repr__(self) -> str:  # tensors print as Tensor[2x3, float64, cpu]
        from gradcheck_kit.manual._sampling import describe

        args = ", ".join(describe(a) for a in self.args)
        kw = ", ".join(f"{k}={describe(v)}" for k, v in self.kwargs.items())
        return f"Sample({self.name}: {args}{', ' if kw else ''}{kw})"


class Grads(tuple):
    """A rule's gradients: one entry per positional argument, plus ``.keywords`` for keyword tensors."""

    keywords: dict

    def __new__(cls, positional, keywords=None):
        obj = super().__new__(cls, positional)
        obj.keywords = dict(keywords or {})
        return obj


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def _is_tensor_sequence(x: Any) -> bool:
    return isinstance(x, (list, tuple))


@dataclass
class Rule:
    """An explicit backward formula for one torch function."""

    name: str
    torch_fn: Callable
    tensor_args: tuple[str, ...]
    backward_impl: Callable
    sample_fn: Callable[..., Iterable[Sample]]
    forward_impl: Callable | None = None
    symbolic: Callable | None = None
    nondifferentiable: frozenset[str] = field(default_factory=frozenset)
    differentiable_backward: bool = True
    doc: str = ""
    keyword_tensors: tuple[str, ...] = ()
    save_impl: Callable | None = None
    aliases: tuple = ()
    sequence_args: frozenset[str] = field(default_factory=frozenset)
    shape_only: frozenset[str] = field(default_factory=frozenset)
    rounds: bool = False

    # -- contract -----------------------------------------------------------
    def forward(self, *args, **params):
        fn = self.forward_impl or self.torch_fn
        return fn(*args, **params)

    def backward(self, grad_output, *args, needs_input_grad: Sequence[bool] | None = None, saved: dict | None = None,
                 **params) -> Grads:
        n = len(self.tensor_args)
        if len(args) > n:
            raise TypeError(f"{self.name}: backward takes at most {n} positional arguments "
                            f"{self.tensor_args}, got {len(args)}")
        wanted, per_element = self._needs(args, needs_input_grad)
        # One entry per declared tensor argument, so implementations may index any position.
        padded = wanted + (False,) * (n - len(wanted))
        extra = {}
        if self.keyword_tensors:
            extra["needs_keyword_grad"] = {k: _is_float_tensor(params.get(k)) and k not in self.nondifferentiable
                                           for k in self.keyword_tensors}
        if self.save_impl is not None and saved is not None:
            extra["saved"] = saved
        grads = tuple(self.backward_impl(grad_output, *args, needs_input_grad=padded, **extra, **params))
        keywords = {}
        if grads and isinstance(grads[-1], dict):
            keywords, grads = grads[-1], grads[:-1]
        if len(grads) < len(args):
            raise RuntimeError(f"rule {self.name!r} returned {len(grads)} gradients for {len(args)} arguments")
        # Entries nobody asked for, or that cannot have a gradient, are None.
        kw = {k: (keywords.get(k) if extra["needs_keyword_grad"][k] else None)
              for k in self.keyword_tensors if params.get(k) is not None} if self.keyword_tensors else {}
        out = []
        for i, (g, w) in enumerate(zip(grads[: len(args)], wanted)):
            if not w:
                out.append(None)
            elif i in per_element:
                out.append(self._sequence_grad(g, args[i], per_element[i]))
            else:
                out.append(g)
        return Grads(out, kw)

    def _sequence_grad(self, grad, arg, element_wanted) -> tuple:
        """One gradient per element of a sequence argument; None where not floating or not wanted."""
        if grad is None:
            return (None,) * len(arg)
        if not isinstance(grad, (list, tuple)) or len(grad) != len(arg):
            raise RuntimeError(f"rule {self.name!r} must return one gradient per element of its sequence "
                               f"argument ({len(arg)} elements), got {type(grad).__name__}")
        return tuple(g if w else None for g, w in zip(grad, element_wanted))

    def all_grads(self, grad_output, *args, **params) -> dict:
        """``{argument name: gradient}`` for positional and keyword tensors alike."""
        grads = self.backward(grad_output, *args, **params)
        return {**dict(zip(self.tensor_args, grads)), **grads.keywords}

    def forward_saved(self, *args, **params) -> tuple[Any, dict]:
        """``(output, saved)``: the forward, plus what the backward may reuse (``{}`` if nothing)."""
        if self.save_impl is None:
            return self.forward(*args, **params), {}
        return self.save_impl(*args, **params)

    def samples(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> list[Sample]:
        return list(self.sample_fn(device=torch.device(device), dtype=dtype))

    def differentiable_mask(self, args: Sequence[Any]) -> tuple[bool, ...]:
        """Which positional arguments can carry a gradient at all.

        A sequence argument (``sequence_args``) can when any of its elements is a floating tensor.
        """
        return tuple(
            name not in self.nondifferentiable
            and (any(_is_float_tensor(e) for e in a) if self.is_sequence_arg(name, a) else _is_float_tensor(a))
            for a, name in zip(args, self.tensor_args)
        )

    def is_sequence_arg(self, name: str, value: Any = ()) -> bool:
        """True for a declared sequence argument holding a list or tuple."""
        return name in self.sequence_args and _is_tensor_sequence(value)

    # -- helpers --------------------------------------------------------------
    def _needs(self, args, needs_input_grad) -> tuple[tuple[bool, ...], dict[int, tuple[bool, ...]]]:
        """(one bool per positional argument, {position: one bool per element} for sequence arguments)."""
        possible = self.differentiable_mask(args)
        if needs_input_grad is not None:
            needs = tuple(needs_input_grad)
            if len(needs) < len(args):
                raise ValueError(f"{self.name}: needs_input_grad has {len(needs)} entries for "
                                 f"{len(args)} positional arguments {self.tensor_args[:len(args)]}")
        else:
            needs = (True,) * len(args)
        wanted, per_element = [], {}
        for i, (a, name, p, w) in enumerate(zip(args, self.tensor_args, possible, needs)):
            if self.is_sequence_arg(name, a):
                ws = tuple(bool(b) for b in w) if isinstance(w, (list, tuple)) else (bool(w),) * len(a)
                if len(ws) != len(a):
                    raise ValueError(f"{self.name}: needs_input_grad for {name!r} has {len(ws)} entries "
                                     f"for {len(a)} elements")
                per_element[i] = tuple(p and wi and _is_float_tensor(e) for wi, e in zip(ws, a))
                wanted.append(any(per_element[i]))
            else:
                if isinstance(w, (list, tuple)):
                    raise ValueError(f"{self.name}: needs_input_grad for {name!r} must be one bool")
                wanted.append(p and bool(w))
        return tuple(wanted), per_element

    @property
    def mirrors(self) -> Callable:
        """The torch function this rule mirrors.

        Usually ``torch_fn`` itself; where torch's positional order cannot take the
        tensors first (``F.layer_norm(input, normalized_shape, weight, bias)``) the rule's
        ``torch_fn`` is a thin wrapper carrying the real function as ``.mirrors``.
        """
        return getattr(self.torch_fn, "mirrors", self.torch_fn)

    @property
    def mirrors_name(self) -> str:
        """``torch.nn.functional.conv2d``: dotted name of the mirrored function."""
        fn = self.mirrors
        import torch.nn.functional as F

        for prefix, namespace in (("torch.nn.functional", F), ("torch", torch)):
            if getattr(namespace, self.name, None) is fn:
                return f"{prefix}.{self.name}"
        return _dotted(fn)

    @property
    def mirrors_all(self) -> list[str]:
        """Dotted names of every torch callable this rule stands for: the function, then its aliases."""
        return [self.mirrors_name] + [_dotted(a) for a in self.aliases]

    @property
    def has_symbolic(self) -> bool:
        return self.symbolic is not None

    def __repr__(self) -> str:
        return f"Rule({self.name!r} mirrors {self.mirrors_name}, args={self.tensor_args})"


_NAMESPACES = ("torch.nn.functional", "torch", "torch.Tensor", "torch.linalg", "torch.special", "torch.fft")
_NAMES_BY_ID: dict[int, str] = {}


def _dotted(fn) -> str:
    """``torch.Tensor.permute``, ``torch.nn.functional.relu``, ``torch.flatten``: the public name of ``fn``.

    Found by identity in torch's public namespaces (``torch.special.softmax`` is not named
    ``softmax`` internally), preferring the first namespace listed; a function of ours keeps its
    module path.
    """
    if not _NAMES_BY_ID:
        import importlib

        for prefix in _NAMESPACES:
            mod, _, attr = prefix.rpartition(".")
            ns = getattr(importlib.import_module(mod), attr) if attr == "Tensor" else importlib.import_module(prefix)
            for name in dir(ns):
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    continue
                obj = getattr(ns, name, None)
                if callable(obj):
                    _NAMES_BY_ID.setdefault(id(obj), f"{prefix}.{name}")
    found = _NAMES_BY_ID.get(id(fn))
    if found is not None:
        return found
    owner = getattr(fn, "__self__", None)
    if type(owner).__name__ == "getset_descriptor" and getattr(fn, "__name__", "") == "__get__":
        return f"torch.Tensor.{owner.__name__}"   # a property's getter (x.T): named as the property
    name = getattr(fn, "__name__", repr(fn))
    qual = getattr(fn, "__qualname__", name).replace("TensorBase.", "Tensor.")
    return f"{getattr(fn, '__module__', None) or 'torch'}.{qual}"


def named_call(op: str, names: Sequence[str], args: tuple, kwargs: dict, keywords: Sequence[str] = ()) -> dict:
    """``{name: value}`` of a call, positional ``args`` named by ``names`` in order, ``kwargs`` as given.

    For a ``torch_fn.call_as_rule`` whose torch signature the tracer would misread (``x.prod(1)`` is
    ``dim=1``, not torch's documented ``dtype``): the call's arguments by name, so they bind as meant.
    Too many positionals, an unknown keyword or one given twice is an ``InvalidParameterError``.
    """
    from gradcheck_kit.errors import InvalidParameterError

    if len(args) > len(names) or set(kwargs) - {*names, *keywords}:
        raise InvalidParameterError(f"{op}: expected ({', '.join(names)}"
                                    + (f", *, {', '.join(keywords)}" if keywords else "") + ")")
    given = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in given:
            raise InvalidParameterError(f"{op}: got multiple values for {k!r}")
        given[k] = v
    return given


_REGISTRY: dict[str, Rule] = {}
_BY_CALLABLE: dict[Any, str] = {}


def register(name: str, *, torch_fn: Callable, tensor_args: Sequence[str], samples: Callable,
             forward: Callable | None = None, symbolic: Callable | None = None,
             nondifferentiable: Iterable[str] = (), differentiable_backward: bool = True,
             keyword_tensors: Sequence[str] = (), save: Callable | None = None, aliases: Sequence[Callable] = (),
             sequence_args: Sequence[str] = (), shape_only: Sequence[str] = (), rounds: bool = False):
    """Decorator registering ``backward`` as the explicit backward of ``torch_fn``.

    ::

        @register("relu", torch_fn=F.relu, tensor_args=("input",), samples=relu_samples)
        def relu_backward(grad_output, input, *, needs_input_grad, inplace=False):
            return (grad_output * (input > 0),)   # dL/dx = g * 1[x > 0]
    """

    def deco(backward: Callable) -> Callable:
        if name in _REGISTRY:
            raise RuntimeError(f"rule {name!r} is registered twice")
        unknown = [a for a in sequence_args if a not in tensor_args]
        if unknown:
            raise RuntimeError(f"rule {name!r}: sequence_args {unknown} are not among tensor_args {tuple(tensor_args)}")
        loose = [a for a in shape_only if a not in nondifferentiable]
        if loose:
            raise RuntimeError(f"rule {name!r}: shape_only {loose} must be nondifferentiable too")
        _REGISTRY[name] = Rule(
            name=name,
            torch_fn=torch_fn,
            tensor_args=tuple(tensor_args),
            backward_impl=backward,
            sample_fn=samples,
            forward_impl=forward,
            symbolic=symbolic,
            nondifferentiable=frozenset(nondifferentiable),
            differentiable_backward=differentiable_backward,
            doc=(backward.__doc__ or "").strip(),
            keyword_tensors=tuple(keyword_tensors),
            save_impl=save,
            aliases=tuple(aliases),
            sequence_args=frozenset(sequence_args),
            shape_only=frozenset(shape_only),
            rounds=bool(rounds),
        )
        for fn in (getattr(torch_fn, "mirrors", torch_fn), *aliases):
            if fn in _BY_CALLABLE and _BY_CALLABLE[fn] != name:
                raise RuntimeError(f"{_dotted(fn)} is mirrored by both {_BY_CALLABLE[fn]!r} and {name!r}")
            _BY_CALLABLE.setdefault(fn, name)
        return backward

    return deco


def get(name: str) -> Rule:
    """The rule called ``name``; an unknown name raises ``KeyError`` naming the closest ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no rule named {name!r}{hint}") from None


def names() -> list[str]:
    """Sorted names of every registered rule."""
    _load()
    return sorted(_REGISTRY)


def rules() -> list[Rule]:
    """Every registered rule, sorted by name."""
    return [_REGISTRY[n] for n in names()]


def for_callable(fn) -> Rule | None:
    """The rule that mirrors torch callable ``fn`` (a function or a ``torch.Tensor`` method), or None."""
    _load()
    try:
        name = _BY_CALLABLE.get(fn)
    except TypeError:  # unhashable
        return None
    return _REGISTRY[name] if name is not None else None


# Modules of gradcheck_kit.manual that hold no rules.
_NOT_FAMILIES = frozenset({"registry", "functional"})
_loaded = False


def _families() -> list[str]:
    """Every public module of ``gradcheck_kit.manual`` is a rule family (one per file)."""
    import pkgutil

    import gradcheck_kit.manual as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_FAMILIES)


def _load() -> None:
    """Import every family module once so that its rules are registered."""
    global _loaded
    if _loaded:
        return
    import importlib

    for fam in _families():
        importlib.import_module(f"gradcheck_kit.manual.{fam}")
    _loaded = True
