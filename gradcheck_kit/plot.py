"""Pictures of where a gradient is wrong: heatmaps of manual - reference, and a Jacobian's structure.

    pictures = plot_report(report, "out/", tensors=gradient_pairs(loss, inputs, manual))
    jacobian_picture(derive.derivation("conv1d", {"input": (1, 1, 8), "weight": (1, 1, 3)}), "J.png")

A gradient error has a shape: a border ring means padding, a checkerboard a stride phase,
one channel a grouping bug, a mirrored pattern a flipped kernel.  Each failing input gets
one PNG with two panels laid out as the tensor is (a line for 1-d, a matrix for 2-d, an
N x C grid of H x W maps for 4-d; 3-d is one row of maps, more dimensions fold the leading
ones into rows): the error ``manual - reference`` on the left, the reference on the right.
The error uses a diverging map whose centre, an error of exactly 0, is pure white, so the
pixels that are not white are exactly the elements that differ.  The worst element is
boxed in black.  matplotlib (the ``[plot]`` extra) is imported only here, inside the
functions that draw.

A failing ``Result`` keeps the tensors it compared (``result.tensors``); otherwise ``gradient_pairs`` recomputes them
from the problem: the subject (``manual``'s gradients, or autograd's when there is no
``manual``) and a float64 CPU reference (autograd, or central differences for the
autograd-vs-finite-difference check).  A result carrying ``tensors = (manual, reference)``
is drawn from those instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from gradcheck_kit.errors import GradcheckKitError

__all__ = ["Picture", "PlotUnavailableError", "MissingTensorsError", "gradient_pairs", "heatmap", "plot_report", "jacobian_picture",
           "MAX_MAPS", "FD_PICTURE_LIMIT"]

MAX_MAPS = 8              # rows and columns of maps drawn per panel (the worst element's map is always shown)
FD_PICTURE_LIMIT = 4096   # input elements up to which a finite-difference reference is recomputed for a picture


class PlotUnavailableError(GradcheckKitError, ImportError):
    """matplotlib is not installed (the ``[plot]`` extra)."""


class MissingTensorsError(GradcheckKitError, ValueError):
    """A failing result to draw, but neither the result nor the caller holds the tensors it compared."""


@dataclass
class Picture:
    """One PNG: its path, the input it shows, and the pixel box (x0, y0, x1, y1) of every error map.

    ``error_boxes`` maps the map's leading index ((n, c) for 4-d, () for 1-d/2-d) to the
    box of that map inside the PNG (pixels from the top left), so a program can read the
    picture back (``tests/test_plot.py`` does).
    """

    path: Path
    name: str
    shape: tuple
    error_boxes: dict = field(default_factory=dict)


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailableError("pictures need matplotlib: pip install 'gradcheck-kit[plot]'") from None
    matplotlib.use("Agg", force=True)  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _error_cmap():
    """Blue (manual < reference) - white (equal) - red (manual > reference); 0 is exactly white."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("gradcheck_error", ["#2166ac", "#ffffff", "#b2182b"], N=255)


# -- recomputing the compared tensors -------------------------------------------------------------------

def _seeded_call(fn: Callable, kwargs: dict, seed: int):
    """``fn(**kwargs)`` after reseeding torch's generator, as ``check`` does before every call."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(**kwargs)


def _summed(out):
    return out.sum() if out.dim() > 0 else out


def _cpu64(t):
    import torch

    return t.detach().to("cpu", torch.float64) if t.is_floating_point() else t.detach().cpu()


def gradient_pairs(loss: Callable, inputs: Mapping[str, Any], manual: Callable | None = None, *, wrt=None,
                   seed: int = 0, names=None, fd_limit: int = FD_PICTURE_LIMIT) -> dict:
    """``{name: (subject, reference)}`` as float64 CPU tensors, for the inputs in ``names`` (default all).

    With ``manual``: subject = ``manual(**inputs)`` (on the inputs as given), reference = autograd of
    the summed loss on float64 CPU copies.  Without: subject = autograd, reference = central
    differences (step 1e-6) for inputs of at most ``fd_limit`` elements; larger ones are left out.
    """
    import torch

    floating = [n for n, t in inputs.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    wrt = tuple(wrt) if wrt else tuple(floating)
    want = [n for n in wrt if names is None or n in names]
    if not want:
        return {}
    ref_in = {n: (_cpu64(t).requires_grad_(n in wrt) if isinstance(t, torch.Tensor) and t.is_floating_point()
                  else (t.detach().cpu() if isinstance(t, torch.Tensor) else t)) for n, t in inputs.items()}
    with torch.enable_grad():
        out = _summed(_seeded_call(loss, ref_in, seed))
        grads = torch.autograd.grad(out, [ref_in[n] for n in wrt], allow_unused=True)
    auto = {n: (g if g is not None else torch.zeros_like(ref_in[n])).detach() for n, g in zip(wrt, grads)}
    if manual is not None:
        copies = {n: (t.detach().clone() if isinstance(t, torch.Tensor) else t) for n, t in inputs.items()}
        res = _seeded_call(manual, copies, seed)
        return {n: (_cpu64(res[n]), auto[n]) for n in want
                if isinstance(res, Mapping) and isinstance(res.get(n), torch.Tensor)}
    pairs = {}
    plain = {n: (t.detach() if isinstance(t, torch.Tensor) else t) for n, t in ref_in.items()}
    h = 1e-6
    for n in want:
        x = plain[n]
        if x.numel() > fd_limit:
            continue
        fd = torch.zeros_like(x)
        flat, out_flat = x.reshape(-1), fd.reshape(-1)
        with torch.no_grad():
            for i in range(x.numel()):
                keep = float(flat[i])
                flat[i] = keep + h
                fp = float(_summed(_seeded_call(loss, plain, seed)))
                flat[i] = keep - h
                fm = float(_summed(_seeded_call(loss, plain, seed)))
                flat[i] = keep
                out_flat[i] = (fp - fm) / (2 * h)  # central difference: f'(x) + O(h^2)
        pairs[n] = (auto[n], fd)
    return pairs


# -- heatmaps -------------------------------------------------------------------------------------------

def _as_maps(a):
    """A numpy array as (rows, cols, H, W) maps and a function index -> (row, col, i, j)."""
    import numpy as np

    a = np.asarray(a, dtype=float)
    shape = a.shape
    if a.ndim == 0:
        return a.reshape(1, 1, 1, 1), lambda idx: (0, 0, 0, 0)
    if a.ndim == 1:  # drawn as a line, but kept as one 1 x L map for the shared code
        return a.reshape(1, 1, 1, -1), lambda idx: (0, 0, 0, idx[0])
    if a.ndim == 2:
        return a.reshape(1, 1, *shape), lambda idx: (0, 0, idx[0], idx[1])
    if a.ndim == 3:
        return a.reshape(1, *shape), lambda idx: (0, idx[0], idx[1], idx[2])
    lead = shape[:-3]
    rows = int(np.prod(lead))
    maps = a.reshape(rows, *shape[-3:])

    def at(idx):
        r = int(np.ravel_multi_index(tuple(idx[:-3]), lead))
        return (r, idx[-3], idx[-2], idx[-1])
    return maps, at


def _pick(n: int, keep: int | None) -> list[int]:
    """At most MAX_MAPS indices of range(n), always including ``keep``."""
    chosen = list(range(min(n, MAX_MAPS)))
    if keep is not None and keep not in chosen:
        chosen[-1] = keep
    return chosen


def _worst(diff, worst_index):
    import numpy as np

    if worst_index is not None and len(worst_index) == diff.ndim:
        return tuple(int(i) for i in worst_index)
    if diff.size == 0:
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(diff))), diff.shape))


def heatmap(name: str, manual, reference, path, *, hint: str | None = None, worst_index=None,
            title: str | None = None) -> Picture:
    """Draw manual - reference (left) and the reference (right) for one input; save a PNG at ``path``."""
    import numpy as np

    plt = _plt()
    from matplotlib.patches import Rectangle

    m = np.asarray(_numpy(manual), dtype=float)
    r = np.asarray(_numpy(reference), dtype=float)
    diff = m - r
    worst = _worst(diff, worst_index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lim = float(np.nanmax(np.abs(diff))) if diff.size else 0.0
    lim = lim if lim > 0 and math.isfinite(lim) else 1.0
    rlim = float(np.nanmax(np.abs(r))) if r.size else 0.0
    rlim = rlim if rlim > 0 and math.isfinite(rlim) else 1.0
    head = title or f"{name} [{'x'.join(map(str, diff.shape)) or 'scalar'}]: manual - reference (left), reference (right)"
    if worst is not None:
        head += f"\nworst element {worst}: manual {m[worst]:.4g}, reference {r[worst]:.4g}"
    if hint:  # wrapped, so a long hint stays inside the figure's width
        import textwrap

        head += "\n" + "\n".join(textwrap.wrap(f"hint: {hint}", width=100))
    pic = Picture(path=path, name=name, shape=tuple(diff.shape))

    if diff.ndim <= 1:  # a line: error and reference against the flat index
        fig, (ax_e, ax_r) = plt.subplots(1, 2, figsize=(11, 3.4), constrained_layout=True)
        xs = np.arange(diff.size)
        ax_e.axhline(0, color="0.7", lw=0.8)
        ax_e.plot(xs, diff.reshape(-1), ".-", color="#b2182b", lw=1)
        ax_e.set_title("manual - reference", fontsize=9)
        ax_r.plot(xs, r.reshape(-1), ".-", color="#2166ac", lw=1)
        ax_r.set_title("reference", fontsize=9)
        if worst is not None:
            k = int(worst[0]) if worst else 0
            ax_e.plot([k], [diff.reshape(-1)[k]], "s", mfc="none", mec="black", ms=10)
        for ax in (ax_e, ax_r):
            ax.set_xlabel("index")
        fig.suptitle(head, fontsize=9)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return pic

    dmaps, at = _as_maps(diff)
    rmaps, _ = _as_maps(r)
    wr = at(worst) if worst is not None else None
    rows = _pick(dmaps.shape[0], wr[0] if wr else None)
    cols = _pick(dmaps.shape[1], wr[1] if wr else None)
    H, W = dmaps.shape[2], dmaps.shape[3]
    cell = max(0.35, min(2.6, 6.0 / max(len(cols), 1) * min(1.0, W / max(H, 1))))
    fig_w = 2 * len(cols) * cell * max(W / max(H, 1), 0.3) + 1.6
    head_in = 0.2 * (head.count("\n") + 1) + 0.35   # inches of title above the maps
    fig_h = min(max(len(rows) * cell + 0.5 + head_in, 3.0), 30)
    fig = plt.figure(figsize=(min(max(fig_w, 6.0), 30), fig_h))
    grid = fig.add_gridspec(len(rows), 2 * len(cols) + 1, wspace=0.08, hspace=0.25, left=0.04, right=0.98,
                            bottom=0.4 / fig_h, top=1 - head_in / fig_h,
                            width_ratios=[1] * len(cols) + [0.25] + [1] * len(cols))
    cmap = _error_cmap()
    axes = {}
    for a, ri in enumerate(rows):
        for b, ci in enumerate(cols):
            ax_e = fig.add_subplot(grid[a, b])
            ax_r = fig.add_subplot(grid[a, len(cols) + 1 + b])
            ax_e.imshow(dmaps[ri, ci], cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest",
                        resample=False, aspect="auto")
            ax_r.imshow(rmaps[ri, ci], cmap="viridis", vmin=-rlim, vmax=rlim, interpolation="nearest",
                        aspect="auto")
            for ax in (ax_e, ax_r):
                ax.set_xticks([])
                ax.set_yticks([])
            if diff.ndim >= 3:
                lab = f"[{ri},{ci}]" if diff.ndim >= 4 else f"[{ci}]"
                ax_e.set_title(lab, fontsize=7, pad=2)
                ax_r.set_title(lab, fontsize=7, pad=2)
            key = (ri, ci) if diff.ndim >= 4 else ((ci,) if diff.ndim == 3 else ())
            axes[key] = ax_e
            if wr is not None and (ri, ci) == (wr[0], wr[1]):
                ax_e.add_patch(Rectangle((wr[3] - 0.5, wr[2] - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
    fig.suptitle(head, fontsize=9)
    fig.text(0.01, 0.01, f"error scale +-{lim:.3g} (white = equal); reference scale +-{rlim:.3g}", fontsize=7)
    fig.savefig(path, dpi=100)
    height = fig.get_size_inches()[1] * 100
    for key, ax in axes.items():
        bb = ax.get_window_extent()
        pic.error_boxes[key] = (bb.x0, height - bb.y1, bb.x1, height - bb.y0)
    plt.close(fig)
    return pic


def _numpy(t):
    if hasattr(t, "detach"):
        return t.detach().to("cpu").double().numpy()
    return t


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "input"


def plot_report(report, directory, tensors: Mapping[str, tuple] | None = None, *, prefix: str = "",
                strict: bool = True) -> list[Picture]:
    """One PNG per failing input of ``report`` in ``directory``; returns the pictures drawn.

    The tensors come from ``result.tensors`` (a ``(manual, reference)`` pair) when the result
    keeps them, else from ``tensors[name]`` (see ``gradient_pairs``).  Only first-order
    gradient results are drawn (not Hessian-vector products, not a mode's results), one
    picture per input.  A failing input with no tensors raises ``MissingTensorsError``
    (``strict=False``: it is skipped, as the CLI does where a reference is too big to redo).
    """
    directory = Path(directory)
    out = []
    seen, missing = set(), []
    for res in getattr(report, "results", []) or []:
        if getattr(res, "ok", True) or getattr(res, "order", 1) != 1 or getattr(res, "mode", None):
            continue
        name = getattr(res, "name", "input")
        if name in seen:
            continue
        pair = getattr(res, "tensors", None) or (tensors or {}).get(name)
        if pair is None:
            missing.append(name)
            continue
        seen.add(name)
        fname = f"{prefix}{_safe(name)}.png"
        device = getattr(res, "device", "")
        title = (f"{prefix}{name} [{'x'.join(map(str, getattr(res, 'shape', ()))) or 'scalar'}, "
                 f"{getattr(res, 'dtype', '')}, {device}] vs {getattr(res, 'reference', 'reference')}: "
                 f"manual - reference (left), reference (right); "
                 f"{getattr(res, 'mismatched', '?')}/{getattr(res, 'projections', None) or getattr(res, 'numel', '?')}"
                 f" mismatched")
        out.append(heatmap(name, pair[0], pair[1], directory / fname, hint=getattr(res, "hint", None),
                           worst_index=getattr(res, "worst_index", None), title=title))
    missing = [n for n in missing if n not in seen]
    if missing and strict:
        raise MissingTensorsError(
            f"cannot draw {', '.join(map(repr, missing))}: the report does not keep the tensors it compared; "
            f"pass tensors=gradcheck_kit.plot.gradient_pairs(loss, inputs, manual) to plot_report")
    return out


# -- the Jacobian's structure ---------------------------------------------------------------------------

def jacobian_picture(jacobian, path, *, title: str | None = None, max_side: int = 2000) -> Path:
    """Draw a Jacobian (a sympy matrix, a ``derive.Derivation`` or an array): nonzeros coloured by value.

    Symbolic entries (not numbers) are drawn in grey: the picture then shows the sparsity
    pattern, e.g. the band of a convolution's Jacobian with respect to its input.
    """
    import numpy as np

    plt = _plt()
    header = None
    if hasattr(jacobian, "wrt_symbols"):  # a derive.Derivation
        header = jacobian._header() if hasattr(jacobian, "_header") else None
        jacobian = jacobian.jacobian()
    rows, cols = (jacobian.shape if hasattr(jacobian, "shape") else np.asarray(jacobian).shape)
    if rows > max_side or cols > max_side:
        raise GradcheckKitError(f"a {rows} x {cols} Jacobian is too large to draw (at most {max_side} per side)")
    vals = np.full((rows, cols), np.nan)
    symbolic = np.zeros((rows, cols), dtype=bool)
    items = (jacobian.todok().items() if hasattr(jacobian, "todok")
             else (((i, j), jacobian[i, j]) for i in range(rows) for j in range(cols)))
    for (i, j), e in items:
        try:
            v = float(e)
        except (TypeError, ValueError):
            symbolic[i, j] = True
            continue
        if v != 0:
            vals[i, j] = v
    fig_w = min(max(cols / 8, 6.5), 16)
    fig_h = min(max(rows / 8, 3), 16) + 0.8
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), constrained_layout=True)
    ax.imshow(np.where(symbolic, 1.0, np.nan), cmap="Greys", vmin=0, vmax=2, interpolation="nearest",
              aspect="auto")
    if np.isfinite(vals).any():
        lim = float(np.nanmax(np.abs(vals)))
        im = ax.imshow(vals, cmap=_error_cmap(), vmin=-lim, vmax=lim, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.8)
    nnz = int(symbolic.sum() + np.isfinite(vals).sum())
    ax.set_xlabel("input element (row-major)")
    ax.set_ylabel("output element (row-major)")
    ax.set_title((title or header or "Jacobian") + f"\n{rows} x {cols}, {nnz} nonzeros "
                 f"(grey: symbolic entries, colour: numeric values)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
