"""Every rule of the registry, over every one of its samples, through ``check``.

For a rule with forward f and a sample (args, kwargs), with a fixed seeded cotangent g:

    loss(**tensors)   = sum(f(*args, **kwargs) * g)          # so dloss/darg = the rule's VJP with g
    manual(**tensors) = rule.backward(g, *args, **kwargs)     # the explicit backward under test

The rule's differentiable keyword tensors (``weight`` of ``mse_loss(..., weight=w)``) are
checked too: they are inputs of ``loss`` and ``manual`` returns ``Grads.keywords`` for them.

    results = sweep(["conv2d", "relu"], device="cpu", dtype=torch.float64, reference="both")
    [(r.rule, r.sample, r.ok) for r in results]

Each result is a ``SweepResult`` with fields ``rule`` (name), ``sample`` (the sample's name),
``ok`` (bool), ``report`` (the ``compare.Report``, or None when the check could not run),
``error`` (the one-line error when it could not run, else None) and ``seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from gradcheck_kit.compare import DEFAULT_FD_LIMIT, Report, check

__all__ = ["SweepResult", "sweep", "sample_check"]


@dataclass
class SweepResult:
    rule: str
    sample: str
    ok: bool
    report: Report | None
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"rule": self.rule, "sample": self.sample, "ok": self.ok, "error": self.error,
                "seconds": self.seconds, "report": self.report.to_dict() if self.report is not None else None}


def _keyword_wrt(rule, kwargs) -> tuple[str, ...]:
    """The rule's differentiable keyword tensors this sample passes (``weight`` of ``mse_loss(..., weight=w)``)."""
    return tuple(k for k in rule.keyword_tensors
                 if isinstance(kwargs.get(k), torch.Tensor) and kwargs[k].is_floating_point()
                 and k not in rule.nondifferentiable)


def _loss_and_manual(rule, sample, seed: int):
    """(loss, manual, inputs, wrt) turning one rule sample into a ``check`` problem.

    Keyword tensors the rule declares differentiable are inputs too, under their own names
    (a positional argument of the same name would clash; the registry forbids none, so the
    keyword is then named ``<name>=``)."""
    args, kwargs = tuple(sample.args), dict(sample.kwargs)
    names = rule.tensor_args[: len(args)]
    mask = rule.differentiable_mask(args)
    kw_wrt = _keyword_wrt(rule, kwargs)
    kw_key = {k: (f"{k}=" if k in names else k) for k in kw_wrt}
    inputs = {n: a for n, a in zip(names, args) if isinstance(a, torch.Tensor)}
    inputs.update({kw_key[k]: kwargs[k] for k in kw_wrt})
    wrt = tuple(n for n, m in zip(names, mask) if m) + tuple(kw_key[k] for k in kw_wrt)

    def call(tensors):
        pos = [tensors.get(n, a) if isinstance(a, torch.Tensor) else a for n, a in zip(names, args)]
        kw = {**kwargs, **{k: tensors[kw_key[k]] for k in kw_wrt if kw_key[k] in tensors}}
        return pos, kw

    torch.manual_seed(seed)
    with torch.no_grad():
        out = rule.forward(*args, **kwargs)
    gen = torch.Generator().manual_seed(seed)

    def cotangent(o):  # None for integer outputs (max_pool's indices), which carry no gradient
        if not o.is_floating_point():
            return None
        return torch.randn(o.shape, generator=gen, dtype=torch.float64).to(device=o.device, dtype=o.dtype)

    multi = isinstance(out, tuple)  # multi-output ops (split, max(dim=)): one cotangent per output
    g = tuple(cotangent(o) for o in out) if multi else cotangent(out)

    def pair(y):
        return sum(((o * c).sum() for o, c in zip(y, g) if c is not None)) if multi else (y * g).sum()

    def loss(**tensors):
        # buffers a torch function updates in place (batch_norm's running stats) get a private copy
        tensors = {n: (t if n in wrt else t.clone()) for n, t in tensors.items()}
        pos, kw = call(tensors)
        torch.manual_seed(seed)  # a rule drawing from the global generator (dropout) draws the same
        return pair(rule.forward(*pos, **kw))

    def manual(**tensors):
        tensors = {n: (t if n in wrt else t.clone()) for n, t in tensors.items()}
        pos, kw = call(tensors)
        torch.manual_seed(seed)
        grads = rule.backward(g, *pos, **kw)
        out = {n: gr for n, gr, m in zip(names, grads, mask) if m and gr is not None}
        out.update({kw_key[k]: grads.keywords[k] for k in kw_wrt if grads.keywords.get(k) is not None})
        return out

    return loss, manual, inputs, wrt


def _finite(sample) -> bool:
    """Every floating tensor of the sample (positional or keyword) is finite."""
    return all(bool(t.isfinite().all()) for t in (*sample.args, *sample.kwargs.values())
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def sample_check(rule, sample, *, reference: str = "autograd", seed: int = 0, **options) -> Report:
    """``check`` of one rule on one sample (see the module docstring)."""
    loss, manual, inputs, wrt = _loss_and_manual(rule, sample, seed)
    if reference == "both" and not all(bool(t.isfinite().all()) for t in inputs.values() if t.is_floating_point()):
        # a NaN/inf sample (relu[nan,inf]): the loss is not finite, so there are no finite
        # differences to take; torch's autograd defines the gradient there and stays the reference
        reference = "autograd"
    options.setdefault("allow_unused", True)  # e.g. norm(p=0): autograd has no path, the gradient is 0
    return check(loss, inputs, manual, wrt=wrt, reference=reference, seed=seed, **options)


def sweep(rule_names: Iterable[str] | None = None, *, device="cpu", dtype: torch.dtype = torch.float64,
          reference: str = "autograd", progress: Callable | None = None, seed: int = 0,
          fd_mode: str = "auto", fd_limit: int | None = DEFAULT_FD_LIMIT, samples: Callable | None = None,
          raise_errors: bool = False) -> list[SweepResult]:
    """``check`` every (rule, sample) of the registry; one ``SweepResult`` per pair, in name order.

    ``rule_names``: rules to run (default: all).  ``progress(done, total, label)`` is called after
    each check (label "rule[sample]").  ``samples(rule, list) -> list`` may filter the samples of a
    rule.  An exception inside a check becomes ``ok=False`` with ``error`` set, unless
    ``raise_errors``.  Samples with NaN or inf inputs are left out: ``check`` compares finite
    gradients (finite differences do not exist there); the rule tests cover them.
    """
    from gradcheck_kit import manual as registry

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    names = list(rule_names) if rule_names is not None else registry.names()
    work = []
    for name in names:
        rule = registry.get(name)
        # NaN/inf samples (relu[nan,inf]) test torch's non-finite conventions; check() compares
        # finite gradients only, so they are left to the rule tests (tests/manual/test_rules.py)
        ss = [s for s in rule.samples(device, dtype) if _finite(s)]
        if samples is not None:
            ss = list(samples(rule, ss))
        work += [(rule, s) for s in ss]
    out = []
    for i, (rule, s) in enumerate(work):
        t0 = time.perf_counter()
        try:
            rep = sample_check(rule, s, reference=reference, seed=seed, fd_mode=fd_mode, fd_limit=fd_limit)
            res = SweepResult(rule.name, s.name, rep.ok, rep)
        except Exception as e:  # noqa: BLE001 - a sweep reports every failure and goes on
            if raise_errors:
                raise
            res = SweepResult(rule.name, s.name, False, None, f"{type(e).__name__}: {e}")
        res.seconds = time.perf_counter() - t0
        out.append(res)
        if progress is not None:
            progress(i + 1, len(work), f"{rule.name}[{s.name}]")
    return out
