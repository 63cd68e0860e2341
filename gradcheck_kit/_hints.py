"""Diagnosis of a failing gradient: which kind of bug makes manual differ from the reference.

Two kinds of evidence, cheapest first:

1. the two tensors alone (m = manual, r = reference, bad = mismatch mask):
   * m = c r               constant factor (c = -1: sign flip; c = 1/N: mean vs sum over N; also
                           small ones such as 1.001, when the fit is far tighter than |c - 1|)
   * m = r + c             constant offset
   * m = T(r)              kernel gradient spatially flipped / transposed / channels swapped;
                           one axis flipped; rolled (or shifted with zeros) along one axis
   * one element           an indexing error
   * bad only where r = 0  a missing mask (ReLU, max-pool routing)
   * bad on the border     padding
   * bad on i = p (mod s)  a stride phase (output_padding, zero insertion)
2. counterfactual references: autograd on the same loss with one thing changed, traced by a
   ``TorchFunctionMode`` (so no change to the user's code); if m equals one of them, that
   change is the bug:
   * relu'(0) = 1 instead of torch's 0: not a bug, a valid subgradient at exact zeros (said so)
   * ReLU as straight-through (forward relu, backward identity): a dropped ReLU mask
   * leaky_relu differentiated as relu: a dropped negative slope
   * one use of a tensor used several times detached: a dropped shared-weight term
   * the kernel of a convolution flipped / transposed for the input gradient only
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_MAX_COUNTERFACTUALS = 16


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> bool:
    nb = float(b.norm())
    if nb == 0:
        return float(a.norm()) == 0
    return float((a - b).norm()) <= tol * nb


def _fname(func) -> str:
    mod = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    name = name.replace("TensorBase.", "Tensor.")
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod == "torch" or mod.startswith("torch._C"):
        return f"torch.{name}"
    return name if "Tensor" in name else f"{mod}.{name}".strip(".")


def _tensor_args(args, kwargs):
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            yield (i, None), a
        elif isinstance(a, (list, tuple)):
            for j, b in enumerate(a):
                if isinstance(b, torch.Tensor):
                    yield (i, j), b
    for k, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            yield (k, None), a


def _outs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


class _Recorder(TorchFunctionMode):
    """Numbers every torch call and records where each grad-carrying tensor is used."""

    def __init__(self, leaves: dict):
        super().__init__()
        self.k = 0
        self.labels = {id(t): repr(n) for n, t in leaves.items()}
        self.keep = list(leaves.values())
        self.uses: dict[int, list] = {}
        self.convs = 0
        self.relus = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONVS:
            self.convs += 1
        if func in _RELUS:
            self.relus += 1
        k = self.k
        self.k += 1
        outs = _outs(out)
        if any(o.requires_grad for o in outs):
            for pos, t in _tensor_args(args, kwargs):
                if id(t) in self.labels and t.requires_grad:
                    self.uses.setdefault(id(t), []).append((k, pos, _fname(func)))
            for o in outs:
                if o.requires_grad and id(o) not in self.labels:
                    self.labels[id(o)] = f"the result of {_fname(func)} (op #{k})"
                    self.keep.append(o)
        return out


class _DropUse(TorchFunctionMode):
    """Replays the loss with the argument at (call k, position pos) detached."""

    def __init__(self, k: int, pos):
        super().__init__()
        self.k, self.target, self.pos = 0, k, pos

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if self.k == self.target:
            i, j = self.pos
            if isinstance(i, str):
                kwargs[i] = kwargs[i].detach()
            else:
                args = list(args)
                if j is None:
                    args[i] = args[i].detach()
                else:
                    seq = list(args[i])
                    seq[j] = seq[j].detach()
                    args[i] = type(args[i])(seq) if isinstance(args[i], tuple) else seq
                args = tuple(args)
        self.k += 1
        return func(*args, **kwargs)


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}


class _StraightThroughRelu(TorchFunctionMode):
    """relu in the forward, identity in the backward: what a gradient without the ReLU mask computes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0]
            return torch.relu(x.detach()) + (x - x.detach())
        return func(*args, **kwargs)


class _ReluOneAtZero(TorchFunctionMode):
    """relu in the forward, relu'(0) = 1 in the backward (mask 1[x >= 0]): the other valid tie convention."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0]
            return torch.relu(x.detach()) + (x - x.detach()) * (x.detach() >= 0).to(x.dtype)
        return func(*args, **kwargs)


_LEAKY = {F.leaky_relu, torch._C._nn.leaky_relu} if hasattr(torch._C._nn, "leaky_relu") else {F.leaky_relu}


class _LeakyAsRelu(TorchFunctionMode):
    """leaky_relu in the forward, relu's mask in the backward: the negative slope dropped from the gradient."""

    def __init__(self):
        super().__init__()
        self.applied = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LEAKY:
            self.applied += 1
            x = args[0]
            y = func(x.detach(), *args[1:], **kwargs)
            return y + (x - x.detach()) * (x.detach() > 0).to(x.dtype)
        return func(*args, **kwargs)


_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


class _ConvKernelBackward(TorchFunctionMode):
    """The ``target``-th convolution's input gradient uses T(weight); its forward and weight gradient stay exact."""

    def __init__(self, transform: Callable, target: int):
        super().__init__()
        self.transform, self.target = transform, target
        self.seen = 0
        self.applied = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _CONVS:
            self.seen += 1
        if func in _CONVS and self.seen - 1 == self.target and len(args) >= 2 and isinstance(args[0], torch.Tensor):
            x, w = args[0], args[1]
            tw = self.transform(w)
            if tw is not None and tw.shape == w.shape and not torch.equal(tw, w):
                self.applied += 1
                rest = args[2:]
                y = func(x.detach(), w, *rest, **kwargs)
                kw2 = dict(kwargs)
                if "bias" in kw2:
                    kw2["bias"] = None
                    rest2 = rest
                else:
                    rest2 = (None,) + tuple(rest[1:]) if rest else ()
                yx = func(x, tw.detach(), *rest2, **kw2)
                return y + (yx - yx.detach())
        return func(*args, **kwargs)


def _flip_spatial(w):
    return w.flip(tuple(range(2, w.dim()))) if w.dim() >= 3 else None


def _transpose_hw(w):
    return w.transpose(-1, -2) if w.dim() >= 4 and w.shape[-1] == w.shape[-2] else None


class Context:
    """What the diagnosis may re-run: the loss on the reference's tensors, with counterfactual changes."""

    def __init__(self, loss: Callable, tensors: dict, wrt, run: Callable, info: dict):
        self.loss, self.tensors, self.wrt, self.run, self.info = loss, tensors, tuple(wrt), run, info
        self._cache: dict = {}
        self._uses = None
        self.n_convs = 0
        self.n_relus = 0
        self.budget = _MAX_COUNTERFACTUALS

    def _grads(self, key, mode_factory) -> dict | None:
        if key in self._cache:
            return self._cache[key]
        if self.budget <= 0:
            return None
        self.budget -= 1
        self._cache[key] = self._compute(mode_factory)
        return self._cache[key]

    def _compute(self, mode_factory) -> dict | None:
        leaves = {n: (t.detach().requires_grad_(True) if n in self.wrt else
                      (t.detach() if isinstance(t, torch.Tensor) else t)) for n, t in self.tensors.items()}
        mode = mode_factory()
        with torch.enable_grad():
            with mode:
                out = self.run(self.loss, leaves, "loss")
            out = out.sum()
            if not out.requires_grad:
                return None
            gs = torch.autograd.grad(out, [leaves[n] for n in self.wrt], allow_unused=True)
        return {n: (g.detach() if g is not None else torch.zeros_like(leaves[n]).detach())
                for n, g in zip(self.wrt, gs)}

    def relu_one_at_zero(self) -> dict | None:
        """Autograd's gradients with relu'(0) = 1 (None when the loss calls no relu)."""
        self.uses()
        return self._grads("relu0", _ReluOneAtZero) if self.n_relus else None

    def uses(self) -> list:
        """[(label, k, pos, fname, use_no, n_uses)] for tensors used more than once."""
        if self._uses is None:
            leaves = {n: (t.detach().requires_grad_(True) if n in self.wrt else t) for n, t in self.tensors.items()}
            rec = _Recorder({n: leaves[n] for n in self.wrt})
            with torch.enable_grad(), rec:
                self.run(self.loss, leaves, "loss")
            found = []
            for key, uses in rec.uses.items():
                if len(uses) >= 2:
                    for j, (k, pos, fname) in enumerate(uses):
                        found.append((rec.labels[key], k, pos, fname, j + 1, len(uses)))
            self._uses = found
            self.n_convs, self.n_relus = rec.convs, rec.relus
        return self._uses

    def counterfactuals(self):
        """Yields (description template, grads) lazily; the template takes the input name."""
        uses = self.uses()
        g = self._grads("relu", _StraightThroughRelu) if self.n_relus else None
        if g is not None:
            yield ("it equals the gradient with the ReLU mask dropped: the backward of relu must multiply by "
                   "1[pre-activation > 0] (a mask that zeroes the gradient where the unit was off)"), g
        holder = {}

        def leaky():
            holder["mode"] = _LeakyAsRelu()
            return holder["mode"]
        g = self._grads("leaky", leaky)
        if g is not None and holder.get("mode") is not None and holder["mode"].applied:
            yield ("it equals the gradient with leaky_relu's negative slope dropped: where x < 0 the derivative "
                   "is negative_slope, not 0"), g
        for label, k, pos, fname, j, n in uses:
            g = self._grads(("use", k, pos), lambda k=k, pos=pos: _DropUse(k, pos))
            if g is not None:
                yield (f"it misses the term through use {j} of {n} of {label} (in {fname}, op #{k}): a tensor "
                       f"used several times (a shared weight, or an intermediate feeding two branches) gets the "
                       f"SUM of the gradients of all its uses"), g
        for c in range(min(self.n_convs, 4)):
            for what, tf in (("spatially flipped", _flip_spatial), ("transposed (H and W swapped)", _transpose_hw)):
                holder = {}

                def factory(tf=tf, holder=holder, c=c):
                    holder["mode"] = _ConvKernelBackward(tf, c)
                    return holder["mode"]

                g = self._grads(("conv", c, what), factory)
                if g is not None and (holder.get("mode") is None or holder["mode"].applied):
                    nth = f"convolution #{c + 1} (of {self.n_convs})" if self.n_convs > 1 else "the convolution"
                    yield (f"it equals the gradient computed with the kernel of {nth} {what} in the input's "
                           f"backward: the input gradient is conv_transpose with the SAME kernel (the adjoint "
                           f"of a correlation), so do not flip it"), g


def _sizes(ctx: Context | None, m: torch.Tensor) -> dict:
    """Integers N that a 1/N or N factor may come from, with what they are."""
    out: dict[int, str] = {}
    if ctx is not None:
        shape = ctx.info.get("shape") or ()
        numel = math.prod(shape) if shape else 1
        if numel > 1:
            out.setdefault(numel, f"the {numel} elements of the loss output (mean vs sum reduction)")
        for n, t in ctx.tensors.items():
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] > 1:
                out.setdefault(int(t.shape[0]), f"dim 0 of {n!r} (batch size: mean vs sum over the batch)")
        for n, t in ctx.tensors.items():
            if isinstance(t, torch.Tensor) and t.numel() > 1:
                out.setdefault(int(t.numel()), f"the number of elements of {n!r} (mean vs sum reduction)")
                for d, s in enumerate(t.shape):
                    out.setdefault(int(s), f"dim {d} of {n!r}")
    return out


def _factor_hint(c: float, ctx, m) -> str:
    sign = "-" if c < 0 else ""
    a = abs(c)
    if abs(c + 1) < 1e-3:
        return "sign flip: manual = -reference (a subtraction reversed, or gradient ascent instead of descent)"
    sizes = _sizes(ctx, m)
    for val, inv in ((a, False), (1 / a if a else math.inf, True)):
        nv = round(val)
        if nv >= 2 and abs(val - nv) <= 1e-3 * val:
            what = sizes.get(nv)
            sgn = " and a sign flip" if c < 0 else ""
            if inv:
                return (f"constant factor {sign}1/{nv}{sgn}: manual = {sign}reference / {nv}"
                        + (f"; {nv} is {what}" if what else "; a mean where the loss sums (or a 1/N too many)"))
            if nv == 2:
                extra = "a term counted twice, or the 1/2 of 0.5*||.||^2 dropped"
            else:
                extra = "a sum where the loss takes a mean, or a term counted N times"
            return (f"constant factor {sign}{nv}{sgn}: manual = {sign}{nv} x reference"
                    + (f"; {nv} is {what}" if what and nv != 2 else f" ({extra})"))
    return f"constant factor: manual = {c:.6g} x reference (a missing or extra scale)"


def _transforms(shape):
    d = len(shape)
    out = []
    if d >= 3:
        sp = tuple(range(2, d))
        out.append(("the kernel gradient is spatially flipped (manual = reference flipped over the spatial dims): "
                    "a convolution where a correlation is needed", lambda t: t.flip(sp)))
    if d >= 2 and shape[-1] == shape[-2] and shape[-1] > 1:
        what = "spatially transposed (H and W swapped)" if d >= 4 else "transposed"
        out.append((f"manual = reference {what}: the operands of a product are swapped (x^T g vs g^T x)",
                    lambda t: t.transpose(-1, -2)))
    if d >= 3 and shape[0] == shape[1] and shape[0] > 1:
        out.append(("manual = reference with dims 0 and 1 swapped: in/out channels (or batch and channel "
                    "axes) of the weight gradient exchanged", lambda t: t.transpose(0, 1)))
        out.append(("manual = reference with channels swapped and the kernel flipped: a conv_transpose "
                    "weight layout mistaken for conv's", lambda t: t.transpose(0, 1).flip(tuple(range(2, d)))))
    return out


def _axis_transforms(shape):
    """One axis flipped; rolled, or shifted with zeros, by a few places along one axis."""
    out = []
    for d, size in enumerate(shape):
        if size > 1:
            out.append((f"manual = reference flipped along dim {d} only (an index reversed on one axis: i for n-1-i)",
                        lambda t, d=d: t.flip(d)))
    for d, size in enumerate(shape):
        for s in (1, -1, 2, -2, 3, -3):
            if size > 2 * abs(s):
                out.append((f"manual = reference rolled by {s} along dim {d} (a circular shift: an index off by "
                            f"{abs(s)}, wrapping around)", lambda t, d=d, s=s: t.roll(s, d)))
                out.append((f"manual = reference shifted by {s} along dim {d}, zeros shifted in (an index or window "
                            f"offset off by {abs(s)})", lambda t, d=d, s=s: _shift(t, s, d)))
    return out


def _shift(t, s, d):
    out = torch.zeros_like(t)
    n = t.shape[d]
    if s > 0:
        out.narrow(d, s, n - s).copy_(t.narrow(d, 0, n - s))
    else:
        out.narrow(d, 0, n + s).copy_(t.narrow(d, -s, n + s))
    return out


def _kink_hint(name, m, r, bad, ctx) -> str | None:
    """Mismatches that are a tie convention at ReLU inputs exactly 0, not a bug: say what is known."""
    if bad is None or not bool(bad.any()):
        return None
    g = ctx.relu_one_at_zero()
    if g is None:
        return None
    g = g[name].to("cpu", torch.float64)
    if _close(g, r, 1e-9) or not _close(m, g, 1e-6):
        return None
    nb = int(bad.sum())
    return (f"all {nb} mismatches sit on ReLU inputs exactly 0, where torch uses relu'(0) = 0; your gradient "
            f"matches relu'(0) = 1, which is also a valid subgradient: a tie convention, not a wrong formula "
            f"(reference='fd' accepts it; use (x > 0) to match torch exactly)")


def _spatial_dims(t: torch.Tensor):
    return tuple(range(2, t.dim())) if t.dim() >= 3 else ()


def _structure_hint(m, r, bad) -> str | None:
    n = r.numel()
    idx = bad.nonzero()
    nb = idx.shape[0]
    if nb == 0 or nb == n:
        return None
    if nb == 1:
        i = tuple(int(v) for v in idx[0])
        where = " (where the reference is 0: a missing mask?)" if float(r[i]) == 0 else ""
        return f"a single element differs, at index {i}{where}: an indexing error or a misplaced write"
    rb = r[bad]
    # mismatch only where the reference vanishes, and the reference holds zeros the manual does not
    if bool((rb == 0).all()):
        zeros = int((r == 0).sum())
        return (f"mismatch only where the reference gradient is 0 ({nb} of its {zeros} zeros): a missing mask "
                f"that should zero the gradient there (ReLU 1[x > 0], max-pool routing, clamp)")
    sp = _spatial_dims(r)
    if sp:
        sizes = [r.shape[d] for d in sp]
        for b in (1, 2):
            if any(s <= 2 * b for s in sizes):
                break
            trail = torch.zeros(nb, dtype=torch.bool)
            lead = torch.zeros(nb, dtype=torch.bool)
            for d, s in zip(sp, sizes):
                trail |= idx[:, d] >= s - b
                lead |= idx[:, d] < b
            dims = ", ".join(str(d) for d, s in zip(sp, sizes) if bool((idx[:, d] >= s - b).any()))
            if bool(trail.all()):
                return (f"mismatch confined to the trailing edge (last {b} index(es) of dim {dims}): a missing "
                        f"output_padding (a stride that does not divide the size) or an off-by-one padding")
            dims = ", ".join(str(d) for d, s in zip(sp, sizes) if bool((idx[:, d] < b).any()))
            if bool(lead.all()):
                return (f"mismatch confined to the leading edge (first {b} index(es) of dim {dims}): an "
                        f"off-by-one padding or a shifted window")
            border = torch.zeros(nb, dtype=torch.bool)
            for d, s in zip(sp, sizes):
                border |= (idx[:, d] < b) | (idx[:, d] >= s - b)
            if bool(border.all()):
                return (f"mismatch confined to the border (width {b}) of the spatial dims: the padding is off "
                        f"by one, or the contributions of the padded border were dropped")
        for d, s in zip(sp, sizes):
            col = idx[:, d]
            if int(col.unique().numel()) < 2:
                continue
            for st in (2, 3, 4):
                if s < 2 * st:
                    continue
                res = (col % st).unique()
                if res.numel() == 1:
                    p = int(res[0])
                    return (f"mismatch only at positions {p} (mod {st}) along dim {d}: a stride-phase error (the "
                            f"transpose of a stride-{st} convolution needs the right output_padding / zero "
                            f"insertion phase)")
    return None


def diagnose(name: str, m: torch.Tensor, r: torch.Tensor, bad: torch.Tensor | None, ctx: Context | None = None) -> str:
    """A one-sentence guess at the bug that makes ``m`` (manual) differ from ``r`` (reference)."""
    m = m.detach().to("cpu", torch.float64)
    r = r.detach().to("cpu", torch.float64)
    if bad is None:
        bad = (m - r).abs() > 1e-6 * max(float(r.abs().max()), 1e-30) if r.numel() else torch.zeros(0, dtype=torch.bool)
    bad = bad.to("cpu")
    rn = float(r.norm())
    if float(m.norm()) == 0 and rn > 0:
        return "manual's gradient is zero everywhere: the gradient is missing or never accumulated"
    if not bool(torch.isfinite(m).all()):
        i = tuple(int(v) for v in (~torch.isfinite(m)).nonzero()[0])
        return f"manual's gradient holds NaN/Inf (first at index {i}): a division by zero or log of 0"
    if rn > 0:
        c = float((m * r).sum()) / rn ** 2
        # a factor, also a small one (1.001): the fit must be much tighter than |c - 1|
        if abs(c - 1) > 1e-6 and _close(m, c * r, min(1e-3, abs(c - 1) / 20)):
            return _factor_hint(c, ctx, m)
    d = m - r
    if r.numel() > 1:
        off = float(d.mean())
        if off != 0 and float((d - off).abs().max()) <= 1e-3 * abs(off):
            return (f"constant offset: manual = reference + {off:.6g} everywhere (a constant added to the gradient, "
                    f"e.g. a bias term's or a regulariser's derivative counted in the wrong place)")
    for text, tf in _transforms(tuple(r.shape)) + _axis_transforms(tuple(r.shape)):
        rt = tf(r)
        if not _close(rt, r) and _close(m, rt):
            return text
    if ctx is not None and name in ctx.wrt:
        kink = _kink_hint(name, m, r, bad, ctx)
        if kink:
            return kink
    hint = _structure_hint(m, r, bad)
    if hint:
        return hint
    if ctx is not None and name in ctx.wrt:
        for text, g in ctx.counterfactuals():
            gn = g[name].to("cpu", torch.float64)
            if not _close(gn, r, 1e-6) and _close(m, gn):
                return text
    nb = int(bad.sum())
    return (f"{nb} of {r.numel()} elements differ with no recognised pattern (not a constant factor, sign, flip, "
            f"transpose, mask, border, stride phase or shared-weight term): re-derive the formula term by term")
