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

__all__ = ["SweepResult", "sweep", "sample_check", "AccuracyResult", "float32_accuracy", "accuracy_table",
           "ACCURACY_FLOOR"]


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


def _keep_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s strides (a differentiable copy when they differ).

    ``check`` hands the loss contiguous copies; a rule whose forward depends on memory layout for
    the same seed (dropout draws its mask in memory order) must see the sample's own layout."""
    if t.stride() == like.stride() or t.shape != like.shape:
        return t
    out = torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _loss_and_manual(rule, sample, seed: int):
    """(loss, manual, inputs, wrt) turning one rule sample into a ``check`` problem.

    Keyword tensors the rule declares differentiable are inputs too, under their own names (or
    ``<name>=`` if a positional argument has that name); the elements of a sequence argument
    (``torch.cat(tensors)``) are inputs ``tensors[0]``, ``tensors[1]``, ..."""
    args, kwargs = tuple(sample.args), dict(sample.kwargs)
    names = rule.tensor_args[: len(args)]
    mask = rule.differentiable_mask(args)
    is_seq = getattr(rule, "is_sequence_arg", lambda n, a: False)
    seq = {n: a for n, a in zip(names, args) if is_seq(n, a)}
    kw_wrt = _keyword_wrt(rule, kwargs)
    kw_key = {k: (f"{k}=" if k in names else k) for k in kw_wrt}
    inputs, wrt = {}, []
    for n, a, m in zip(names, args, mask):
        if n in seq:
            for j, e in enumerate(a):
                if isinstance(e, torch.Tensor):
                    inputs[f"{n}[{j}]"] = e
                    if m and e.is_floating_point():
                        wrt.append(f"{n}[{j}]")
        elif isinstance(a, torch.Tensor):
            inputs[n] = a
            if m:
                wrt.append(n)
    inputs.update({kw_key[k]: kwargs[k] for k in kw_wrt})
    wrt = tuple(wrt) + tuple(kw_key[k] for k in kw_wrt)
    originals = dict(inputs)

    def call(tensors):
        tensors = {n: _keep_layout(t, originals[n]) for n, t in tensors.items()}
        pos = []
        for n, a in zip(names, args):
            if n in seq:
                pos.append(type(a)(tensors.get(f"{n}[{j}]", e) if isinstance(e, torch.Tensor) else e
                                   for j, e in enumerate(a)))
            else:
                pos.append(tensors.get(n, a) if isinstance(a, torch.Tensor) else a)
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
        out = {}
        for n, a, gr, m in zip(names, args, grads, mask):
            if not m or gr is None:
                continue
            if n in seq:
                out.update({f"{n}[{j}]": ge for j, ge in enumerate(gr) if f"{n}[{j}]" in wrt and ge is not None})
            else:
                out[n] = gr
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
    options.setdefault("allow_unused", True)  # e.g. norm(p=0): autograd has no path, the gradient is 0
    narrowed = rule.rounds and reference in ("fd", "finite-difference", "both")
    if narrowed:  # a rounding forward is a staircase to float64 differences: autograd alone (registry doc)
        reference = "autograd"
    rep = check(loss, inputs, manual, wrt=wrt, reference=reference, seed=seed, **options)
    if narrowed:
        rep.notes.append(f"{rule.name} rounds to a coarser dtype, so finite differences (float64) cannot "
                         f"check it: compared with autograd only")
    return rep


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


# -- float32 accuracy ------------------------------------------------------------------------

#: relative error floor for torch's own float32 error (one float32 ulp): a rule is compared with
#: ``max(torch's error, floor)``, so a torch answer that happens to be exact does not divide by 0
ACCURACY_FLOOR = 2.0 ** -23


@dataclass
class AccuracyResult:
    """One rule x sample in float32: errors against the float64 autograd truth at the same point.

    ``rule_error`` / ``torch_error``: max over the differentiable arguments of
    ``max|grad32 - truth| / max|truth|`` (norm-wise relative); ``ratio = rule_error /
    max(torch_error, ACCURACY_FLOOR)``; ``worst`` names the argument giving ``rule_error``.
    ``skipped`` says why nothing was measured (non-finite truth, no differentiable input).
    """

    rule: str
    sample: str
    rule_error: float = 0.0
    torch_error: float = 0.0
    ratio: float = 0.0
    worst: str = ""
    skipped: str | None = None


def _to64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to64(e) for e in x)
    return x


def _leaf(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().clone(memory_format=torch.preserve_format)
        return x.requires_grad_(True) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_leaf(e) for e in x)
    return x


def _floats(x) -> list:
    """The floating tensors in ``x`` (a tensor, a list of them, or anything else), in order."""
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() else []
    if isinstance(x, (list, tuple)):
        return [t for e in x for t in _floats(e)]
    return []


def _grad_list(x, g) -> list:
    """The rule's gradient entry ``g`` for argument ``x``, flattened as ``_floats(x)``."""
    if isinstance(x, torch.Tensor):
        return [g] if x.is_floating_point() else []
    if isinstance(x, (list, tuple)):
        gs = g if isinstance(g, (list, tuple)) else [None] * len(x)
        return [t for e, ge in zip(x, gs) for t in _grad_list(e, ge)]
    return []


def _accuracy_one(rule, sample, seed: int) -> AccuracyResult:
    res = AccuracyResult(rule.name, sample.name)
    args, kwargs = tuple(sample.args), dict(sample.kwargs)
    mask = rule.differentiable_mask(args)
    kw_names = _keyword_wrt(rule, kwargs)

    def leaves_of(a, kw):
        pos = [(f"{n}[{j}]" if isinstance(x, (list, tuple)) else n, t)
               for n, x, m in zip(rule.tensor_args, a, mask) if m for j, t in enumerate(_floats(x))]
        return pos + [(k, kw[k]) for k in kw_names]

    def autograd(a, kw):
        a, kw = tuple(_leaf(x) if m else x for x, m in zip(a, mask)), {k: (_leaf(v) if k in kw_names else v)
                                                                        for k, v in kw.items()}
        torch.manual_seed(seed)
        out = rule.torch_fn(*a, **kw)
        outs = out if isinstance(out, tuple) else (out,)
        named = leaves_of(a, kw)
        pairs = [(o, c) for o, c in zip(outs, cot) if c is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], [t for _, t in named],
                                    [c.to(o.dtype) for o, c in pairs], allow_unused=True)
        return {n: (torch.zeros_like(t) if gr is None else gr) for (n, t), gr in zip(named, grads)}

    torch.manual_seed(seed)
    with torch.no_grad():
        out32 = rule.torch_fn(*args, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    # one cotangent, representable in float32, so both precisions see the same g
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(torch.float64).to(o.device)
           if isinstance(o, torch.Tensor) and o.is_floating_point() else None
           for o in (out32 if isinstance(out32, tuple) else (out32,))]
    if not any(c is not None for c in cot) or not (any(mask) or kw_names):
        res.skipped = "no differentiable input or output"
        return res
    truth = autograd(tuple(_to64(a) for a in args), {k: _to64(v) for k, v in kwargs.items()})
    theirs = autograd(args, kwargs)
    g32 = tuple(None if c is None else c.to(torch.float32) for c in cot)
    torch.manual_seed(seed)
    grads = rule.backward(g32 if isinstance(out32, tuple) else g32[0], *args, **kwargs)
    mine = {}
    for n, x, m, gr in zip(rule.tensor_args, args, mask, grads):
        if m:
            for j, t in enumerate(_grad_list(x, gr)):
                mine[f"{n}[{j}]" if isinstance(x, (list, tuple)) else n] = t
    mine.update({k: grads.keywords.get(k) for k in kw_names})
    for name, t in truth.items():
        if not bool(t.isfinite().all()):
            res.skipped = f"the float64 gradient of {name!r} is not finite"
            return res
        scale = float(t.abs().max()) if t.numel() else 0.0
        if scale == 0.0:
            continue
        m = mine.get(name)
        m = torch.zeros_like(t) if m is None else m.detach().to(torch.float64)
        e_rule = float((m - t).abs().max()) / scale
        e_torch = float((theirs[name].detach().to(torch.float64) - t).abs().max()) / scale
        if e_rule >= res.rule_error:
            res.rule_error, res.worst = e_rule, name
        res.torch_error = max(res.torch_error, e_torch)
        res.ratio = max(res.ratio, e_rule / max(e_torch, ACCURACY_FLOOR))
    return res


def float32_accuracy(rule_names: Iterable[str] | None = None, *, device="cpu", seed: int = 0,
                     samples: Callable | None = None) -> list[AccuracyResult]:
    """Every (rule, float32 sample): the rule's float32 error against a float64 autograd truth at
    the same point, next to torch's own float32 autograd error on the same call."""
    from gradcheck_kit import manual as registry

    out = []
    for name in (list(rule_names) if rule_names is not None else registry.names()):
        rule = registry.get(name)
        ss = [s for s in rule.samples(device, torch.float32) if _finite(s)]
        if samples is not None:
            ss = list(samples(rule, ss))
        out += [_accuracy_one(rule, s, seed) for s in ss]
    return out


def accuracy_table(results: list[AccuracyResult]) -> str:
    """Per rule: samples measured, worst ratio (and its sample), the rule's and torch's errors there."""
    by_rule: dict[str, list[AccuracyResult]] = {}
    for r in results:
        by_rule.setdefault(r.rule, []).append(r)
    lines = [f"{'rule':34} {'n':>3} {'max ratio':>9} {'rule err':>9} {'torch err':>9}  worst sample"]
    for name, rs in by_rule.items():
        done = [r for r in rs if r.skipped is None]
        if not done:
            lines.append(f"{name:34} {0:>3} {'-':>9} {'-':>9} {'-':>9}  (skipped: {rs[0].skipped})")
            continue
        w = max(done, key=lambda r: r.ratio)
        lines.append(f"{name:34} {len(done):>3} {w.ratio:>9.2f} {w.rule_error:>9.2e} {w.torch_error:>9.2e}  "
                     f"{w.sample} d/d{w.worst}")
    return "\n".join(lines)
