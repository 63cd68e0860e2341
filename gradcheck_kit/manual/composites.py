"""The seeds' composites as rules of their own, each backward written through the rule library.

* ``strided_conv_loss(z, k, y, stride)`` (seed 002, problem 1), per sample::

      L[n] = 0.5 * || conv2d(z, k, stride)[n] - y[n] ||^2
      r = conv2d(z, k, stride) - y,   dL/dr = g[n] r          (g: grad_output, one per sample)
      dL/dz, dL/dk = conv2d backward of (g r),   dL/dy = -g r

* ``conv_relu_conv_loss(x, w1, w2, k, y, padding, stride)`` (seed 002, problem 3)::

      h = conv2d(x, w1, padding);  a = relu(h);  z = conv2d(a, w2, padding)
      L[n] = strided_conv_loss(z, k, y, stride)[n]
      (dz, dk, dy) = strided_conv_loss backward;  (da, dw2) = conv2d backward of dz at a
      dh = da * 1[h > 0]  (relu'(0) = 0, torch's convention);  (dx, dw1) = conv2d backward of dh at x

  ``conv_relu_conv_loss_and_grads`` computes the loss and the gradients asked for in one
  pass, reusing the forward's intermediates (the cases and the benchmark use it), as do
  ``strided_conv_loss_and_grads`` (problem 1) and ``conv_strided_loss_and_grads`` (problem 2).
  With ``fast=True`` (the default) they pick a formulation per shape (section "same
  convolutions" below; windows that tile z in ``_tiled_conv_backward``); ``fast=False`` runs
  each step through the conv2d rule.  Both are public, differentiable ops throughout.

* ``unfold_conv2d(input, weight, bias, stride, padding, dilation)`` (seed 001): the im2col
  convolution ``W_flat @ unfold(x) + b[:, None]`` viewed as ``[N, C_out, H', W']``; equals
  ``F.conv2d``.  With ``cols = unfold(x)`` (``[N, C k_h k_w, L]``) and ``g`` viewed ``[N, C_out, L]``::

      dL/dcols = W_flat^T g,   dL/dx = fold(dL/dcols)   (fold is unfold's adjoint)
      dL/dW    = sum_n g[n] cols[n]^T,   dL/db = sum_{n, l} g

* ``unfold_conv2d_custom(input, weight, bias, ..., op)``: the product inside the matmul
  replaced by a differentiable ``f(x, w)``:
  ``out[n, o, l] = sum_k f(cols[n, k, l], W[o, k]) + b[o]``, so::

      dL/dcols[n, k, l] = sum_o g[n, o, l] df/dx(cols[n, k, l], W[o, k])
      dL/dW[o, k]       = sum_{n, l} g[n, o, l] df/dw(cols[n, k, l], W[o, k])

  ``op`` is ``"mul"`` (plain convolution), ``"adder"`` (``f = -|x - w|``, AdderNet) or an
  object with ``fn(x, w)``, ``dfdx(x, w)`` and ``dfdw(x, w)``.  Kink of ``"adder"`` at
  ``x == w``: ``d|u|/du = sign(u) = 0`` at ``u = 0``, torch's convention for ``abs``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from gradcheck_kit.errors import InvalidParameterError, UnsupportedError
from gradcheck_kit.manual import _shapes
from gradcheck_kit.manual._sampling import Maker
from gradcheck_kit.manual.registry import Sample, get, register

__all__ = ["strided_conv_loss", "conv_relu_conv_loss", "conv_relu_conv_loss_and_grads",
           "strided_conv_loss_and_grads", "conv_strided_loss_and_grads",
           "unfold_conv2d", "unfold_conv2d_custom", "AdderOp", "MulOp", "resolve_op"]


def _needs(needs_input_grad, n: int) -> tuple[bool, ...]:
    return tuple(needs_input_grad) + (False,) * (n - len(needs_input_grad))


def _check_wrt(op: str, wrt, names) -> None:
    unknown = [n for n in wrt if n not in names]
    if unknown:
        raise InvalidParameterError(f"{op}: wrt names {unknown[0]!r}, not one of {names}")


def _check_batched(op: str, name: str, t: torch.Tensor) -> None:
    if t.dim() != 4:
        raise InvalidParameterError(f"{op}: {name} must be a batched 4-d tensor [N, C, H, W] "
                                    f"(the loss is per sample), got {t.dim()} dimensions")


# ---------------------------------------------------------------------------
# strided_conv_loss: 0.5 ||conv2d(z, k, stride) - y||^2 per sample (seed 002, problem 1)
# ---------------------------------------------------------------------------

def strided_conv_loss(z, k, y, stride=32):
    """Reference: ``0.5 * (F.conv2d(z, k, stride=stride) - y).pow(2).sum(dim=[1, 2, 3])``."""
    return 0.5 * (F.conv2d(z, k, stride=stride) - y).pow(2).sum(dim=[1, 2, 3])


def strided_conv_loss_samples(device, dtype):
    mk = Maker(device, dtype)
    # (z shape, k shape, stride, name): non-overlapping windows as in the seed, overlapping,
    # and a stride that leaves a tail of z unread (its gradient is 0 there).
    table = [
        ((2, 1, 8, 8), (3, 1, 4, 4), 4, "strided_conv_loss[s=k=4]"),
        ((2, 2, 7, 7), (3, 2, 3, 3), 2, "strided_conv_loss[s2,k3,overlap]"),
        ((1, 2, 9, 10), (2, 2, 4, 4), 4, "strided_conv_loss[s4,tail]"),
    ]
    for zs, ks, s, name in table:
        z, k = mk.randn(*zs), mk.randn(*ks)
        out = F.conv2d(z, k, stride=s)
        yield Sample((z, k, mk.randn(*out.shape)), {"stride": s}, name)
    z, k = mk.randn(2, 1, 8, 8), mk.randn(3, 1, 4, 4)
    yield Sample((mk.noncontiguous(z), k, mk.randn(2, 3, 2, 2)), {"stride": 4},
                 "strided_conv_loss[s=k=4,noncontiguous]")


def _strided_loss_backward(grad_output, z, k, y, stride, needs, r=None, fast=True):
    """(dz, dk, dy) given the residual ``r = conv2d(z, k, stride) - y`` (recomputed if None)."""
    need_z, need_k, need_y = needs
    if not any(needs):
        return None, None, None
    if r is None:
        r = F.conv2d(z, k, stride=stride) - y
    gr = grad_output.reshape(-1, 1, 1, 1) * r                      # dL/dr = g[n] r
    gz = gk = None
    if (need_z or need_k) and fast and _tiles(z, k, stride):
        gz, gk = _tiled_conv_backward(gr, z, k, need_z, need_k)
    elif need_z or need_k:
        gz, gk, _ = get("conv2d").backward(gr, z, k, None, needs_input_grad=(need_z, need_k, False),
                                           stride=stride)
    gy = -gr if need_y else None                                     # dL/dy = -g r
    return gz, gk, gy


def _tiles(z, k, stride) -> bool:
    """The windows of conv2d(z, k, stride) tile z exactly: stride == kernel, one group, no tail."""
    s = _shapes.ntuple(stride, 2, "stride")
    kh, kw = k.shape[-2:]
    return (s == (kh, kw) and k.shape[1] == z.shape[1] and z.dim() == 4
            and z.shape[2] % kh == 0 and z.shape[3] % kw == 0)


def _tiled_conv_backward(g, z, k, need_z, need_k):
    """Non-overlapping windows: z[n, c, a K + i, b K + j] = P[n, c, a, i, b, j] (a view), so

    y[n, o, a, b] = sum_{c, i, j} P[n, c, a, i, b, j] k[o, c, i, j]   is one GEMM and
    dL/dz as P = sum_o g[n, o, a, b] k[o, c, i, j],   dL/dk = sum_{n, a, b} g[n, o, a, b] P[n, c, a, i, b, j].
    """
    n, c, hh, ww = z.shape
    kh, kw = k.shape[-2:]
    gz = gk = None
    if need_z:
        gz = torch.einsum("noab,ocij->ncaibj", g, k).reshape(n, c, hh, ww)
    if need_k:
        patches = z.reshape(n, c, hh // kh, kh, ww // kw, kw)
        gk = torch.einsum("noab,ncaibj->ocij", g, patches)
    return gz, gk


# ---------------------------------------------------------------------------
# "same" convolutions (stride 1, odd k x k kernel, padding p = (k - 1) / 2), per shape
# ---------------------------------------------------------------------------
#
#   y[n, o, h, w] = sum_{c, i, j} W[o, c, i, j] x[n, c, h + i - p, w + j - p]      (0 outside x)
#
# Few output channels (seed 002's 32 -> 1 convolutions, O k^2 <= C): contract the channels
# first, then shift.  With Wm[(o, i, j), c] = W[o, c, i, j]:
#   U = Wm @ x                        [N, O k^2, H W]    (one GEMM that reads x once)
#   y[n, o, h, w] = sum_{i, j} U[n, (o, i, j), h + i - p, w + j - p]     (fold, i.e. col2im)
# and backwards, with the shifted copies G[n, (o, i, j), h, w] = g[n, o, h - i + p, w - j + p]
# (unfold of g, i.e. im2col):
#   dL/dx = Wm^T @ G                  [N, C, H W]
#   dL/dW[o, c, i, j] = sum_{n, hw} x[n, c, hw] G[n, (o, i, j), hw]
# fold/unfold order their taps the other way round (fold adds tap i at q + i - p), so the
# code uses the flipped kernel's taps.
#
# Many output channels (seed 002's 32 -> 32 convolution): dL/dW as k^2 GEMMs over shifted
# flat views of the padded input, with no im2col copy.  g is laid out "wide", with p zero
# columns on each side (width W + 2p); x is padded by p columns and p + 1 rows on each side
# and flattened per channel.  For every tap (i, j):
#   dL/dW[:, :, i, j] = sum_n g_wide[n] @ x_flat[n, :, off : off + H (W + 2p)]^T,
#   off = (i + 1)(W + 2p) + j - p;
# the zero columns of g_wide cancel the positions where the flat view wraps to the next row.
#   dL/dx = conv2d(g_wide, W flipped and in/out swapped, padding=(p, 0)):
# the transposed convolution, its column padding supplied by g_wide's zero columns.


def _same_padding(w: torch.Tensor, padding) -> int | None:
    """p when ``conv2d(., w, padding)`` is a stride-1 "same" convolution with an odd square kernel."""
    kh, kw = w.shape[-2:]
    if isinstance(padding, int):
        p = padding
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and padding[0] == padding[1]:
        p = padding[0]
    else:
        return None
    return p if kh == kw and kh % 2 == 1 and p == (kh - 1) // 2 else None


def _few_out(w: torch.Tensor) -> bool:
    return w.shape[0] * w.shape[2] * w.shape[3] <= w.shape[1]


def _taps(w: torch.Tensor) -> torch.Tensor:
    """Wm[(o, i, j), c] = W[o, c, k-1-i, k-1-j]: the flipped kernel, taps in unfold's order."""
    return w.flip(2, 3).permute(0, 2, 3, 1).reshape(-1, w.shape[1])


def _few_out_forward(x: torch.Tensor, w: torch.Tensor, p: int) -> torch.Tensor:
    """y = fold(Wm @ x): contract the channels, then add the k^2 shifted planes (col2im)."""
    n, c, hh, ww = x.shape
    k = w.shape[2]
    u = torch.matmul(_taps(w), x.reshape(n, c, hh * ww))                       # [N, O k^2, H W]
    # fold puts u[(o, i, j), q] at q + (i, j) - p; with the flipped taps that is
    # y[h] = sum_{i, j} W[o, c, i, j] x[h + (i, j) - p]
    return F.fold(u, (hh, ww), kernel_size=k, padding=p)


def _shifted(g: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """G = unfold(g): G[n, (o, i, j), h, w] = g[n, o, h + i - p, w + j - p] (0 outside g).

    With the flipped taps of ``_taps`` this is g[h - i' + p] for the kernel tap i' = k-1-i.
    """
    n, o, hh, ww = g.shape
    return F.unfold(g, k, padding=p).view(n, o * k * k, hh, ww)


def _few_out_input_grad(G: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dL/dx = Wm^T @ G, in G's spatial layout."""
    n, q, hh, ww = G.shape
    return torch.matmul(_taps(w).t(), G.reshape(n, q, hh * ww)).view(n, w.shape[1], hh, ww)


def _few_out_weight_grad(x: torch.Tensor, G: torch.Tensor, w_shape) -> torch.Tensor:
    """dL/dW[o, c, i, j] = sum_{n, hw} x[n, c, hw] G[n, (o, k-1-i, k-1-j), hw]."""
    n, c, hh, ww = x.shape
    o, k = w_shape[0], w_shape[2]
    gw = torch.bmm(x.reshape(n, c, hh * ww), G.reshape(n, -1, hh * ww).transpose(1, 2)).sum(0)   # [C, O k^2]
    return gw.view(c, o, k, k).transpose(0, 1).flip(2, 3).contiguous()


def _wide_weight_grad(x: torch.Tensor, g_wide: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """dL/dW by k^2 GEMMs over shifted flat views of the padded x (see above)."""
    n, c, hh, ww = x.shape
    o, wp = g_wide.shape[1], ww + 2 * p
    xf = F.pad(x, (p, p, p + 1, p + 1)).reshape(n, c, -1)
    gf = g_wide.reshape(n, o, hh * wp)
    span = hh * wp
    taps = []
    for i in range(k):
        for j in range(k):
            off = (i + 1) * wp + j - p
            taps.append(torch.bmm(gf, xf[:, :, off:off + span].transpose(1, 2)).sum(0))   # [O, C]
    return torch.stack(taps, dim=-1).view(o, c, k, k)


def _wide_input_grad(g_wide: torch.Tensor, w: torch.Tensor, p: int) -> torch.Tensor:
    """dL/dx = conv_transpose2d(g, W, padding=p) = conv2d(g_wide, flip(W)^T, padding=(p, 0))."""
    return F.conv2d(g_wide, w.flip(2, 3).transpose(0, 1), padding=(p, 0))


def strided_conv_loss_and_grads(z, k, y, stride=32, *, wrt: Sequence[str] = ("z",), grad_output=None,
                                fast: bool = True):
    """``(loss, {name: dL/dname})`` for seed 002's problem 1 in one pass (the residual is reused)."""
    _check_wrt("strided_conv_loss_and_grads", wrt, ("z", "k", "y"))
    _check_batched("strided_conv_loss", "z", z)
    r = F.conv2d(z, k, stride=stride) - y
    loss = 0.5 * r.pow(2).sum(dim=[1, 2, 3])
    g = torch.ones_like(loss) if grad_output is None else grad_output
    grads = _strided_loss_backward(g, z, k, y, stride, tuple(n in wrt for n in ("z", "k", "y")), r=r, fast=fast)
    return loss, {n: t for n, t in zip(("z", "k", "y"), grads) if t is not None}


def conv_strided_loss_and_grads(x, w1, k, y, padding=1, stride=32, *,
                                wrt: Sequence[str] = ("x", "w1"), grad_output=None, fast: bool = True):
    """``(loss, grads)`` for seed 002's problem 2: ``z = conv2d(x, w1, padding)``, then the strided loss.

    ``dz = conv2d backward of g r at (z, k)``; ``dx, dw1 = conv2d backward of dz at (x, w1)``
    (the few-output-channel formulation above when it applies and ``fast``).
    """
    names = ("x", "w1", "k", "y")
    _check_wrt("conv_strided_loss_and_grads", wrt, names)
    _check_batched("conv_strided_loss", "x", x)
    p = _same_padding(w1, padding) if fast else None
    few = p is not None and _few_out(w1)
    z = _few_out_forward(x, w1, p) if few else F.conv2d(x, w1, padding=padding)
    r = F.conv2d(z, k, stride=stride) - y
    loss = 0.5 * r.pow(2).sum(dim=[1, 2, 3])
    g = torch.ones_like(loss) if grad_output is None else grad_output
    want = {n: n in wrt for n in names}
    need_z = want["x"] or want["w1"]
    gz, gk, gy = _strided_loss_backward(g, z, k, y, stride, (need_z, want["k"], want["y"]), r=r, fast=fast)
    gx = gw1 = None
    if need_z and few:
        G = _shifted(gz, w1.shape[2], p)
        gw1 = _few_out_weight_grad(x, G, w1.shape) if want["w1"] else None
        gx = _few_out_input_grad(G, w1) if want["x"] else None
    elif need_z:
        gx, gw1, _ = get("conv2d").backward(gz, x, w1, None, needs_input_grad=(want["x"], want["w1"], False),
                                            padding=padding)
    return loss, {n: t for n, t in zip(names, (gx, gw1, gk, gy)) if t is not None}


@register("strided_conv_loss", torch_fn=strided_conv_loss, tensor_args=("z", "k", "y"),
          samples=strided_conv_loss_samples)
def strided_conv_loss_backward(grad_output, z, k, y, *, needs_input_grad, stride=32):
    """dL/dz, dL/dk = conv2d backward of g[n] (conv2d(z, k, s) - y); dL/dy = -g[n] (conv2d(z, k, s) - y)."""
    _check_batched("strided_conv_loss", "z", z)
    return _strided_loss_backward(grad_output, z, k, y, stride, _needs(needs_input_grad, 3))


# ---------------------------------------------------------------------------
# conv -> relu -> conv -> strided loss (seed 002, problem 3)
# ---------------------------------------------------------------------------

def conv_relu_conv_loss(x, w1, w2, k, y, padding=1, stride=32):
    """Reference: seed 002's loss with ordinary torch ops, one value per sample."""
    z = F.conv2d(F.relu(F.conv2d(x, w1, padding=padding)), w2, padding=padding)
    return 0.5 * (F.conv2d(z, k, stride=stride) - y).pow(2).sum(dim=[1, 2, 3])


_CRC_ARGS = ("x", "w1", "w2", "k", "y")


def conv_relu_conv_loss_and_grads(x, w1, w2, k, y, padding=1, stride=32, *,
                                  wrt: Sequence[str] = ("x", "w1", "w2"), grad_output=None, fast: bool = True):
    """``(loss, {name: dL/dname})`` for seed 002's conv -> relu -> conv, in one pass.

    ``loss`` is the per-sample loss ``[N]``; the gradients are those of
    ``<grad_output, loss>`` (``grad_output`` defaults to ones, i.e. the summed loss)
    for the names in ``wrt``.  Forward intermediates are kept and reused; gradients
    nobody asked for (and the branches only they need) are not computed.  With ``fast``
    the "same" 3x3 convolutions use the formulations above (few output channels: contract
    then shift; many: implicit-GEMM weight gradient on the wide layout); otherwise, and for
    other shapes, each step is the conv2d rule of the library.
    """
    _check_wrt("conv_relu_conv_loss_and_grads", wrt, _CRC_ARGS)
    _check_batched("conv_relu_conv_loss", "x", x)
    conv = get("conv2d")
    p1 = _same_padding(w1, padding) if fast else None                  # conv 1 is "same": wide layout
    p2 = _same_padding(w2, padding) if fast else None
    few2 = p2 is not None and _few_out(w2)                             # conv 2: contract, then shift
    h = F.conv2d(x, w1, padding=padding)
    a = F.relu(h, inplace=fast)         # relu'(h) = 1[h > 0] = 1[a > 0]: h itself is not kept
    del h
    z = _few_out_forward(a, w2, p2) if few2 else F.conv2d(a, w2, padding=padding)
    r = F.conv2d(z, k, stride=stride) - y
    loss = 0.5 * r.pow(2).sum(dim=[1, 2, 3])
    g = torch.ones_like(loss) if grad_output is None else grad_output
    want = {n: n in wrt for n in _CRC_ARGS}
    grads: dict[str, torch.Tensor] = {}

    need_z = want["x"] or want["w1"] or want["w2"]
    gz, gk, gy = _strided_loss_backward(g, z, k, y, stride, (need_z, want["k"], want["y"]), r=r, fast=fast)
    del z, r
    if want["k"]:
        grads["k"] = gk
    if want["y"]:
        grads["y"] = gy
    if not need_z:
        return loss, grads
    need_a = want["x"] or want["w1"]
    # conv 2 backward: (da, dw2); da in the wide layout when conv 1 is "same"
    if few2:
        G = _shifted(gz, w2.shape[2], p2)
        if want["w2"]:
            grads["w2"] = _few_out_weight_grad(a, G, w2.shape)
        ga = _few_out_input_grad(F.pad(G, (p1, p1)) if p1 else G, w2) if need_a else None
        del G
    else:
        ga, gw2, _ = conv.backward(gz, a, w2, None, needs_input_grad=(need_a, want["w2"], False),
                                   padding=padding)
        if want["w2"]:
            grads["w2"] = gw2
        if need_a and p1:
            ga = F.pad(ga, (p1, p1))
    if need_a:
        mask = a > 0                                                   # relu'(0) = 0, torch's convention
        del a
        if p1:
            mask = F.pad(mask, (p1, p1))
        fresh = fast and (few2 or p1)                                  # ga is our own new tensor
        gh = ga.mul_(mask) if fresh else ga * mask.to(ga.dtype)       # dL/dh = dL/da * 1[h > 0]
        del ga, mask
        if p1:                                                         # gh is wide: [0]*p1 + gh + [0]*p1
            if want["w1"]:
                grads["w1"] = _wide_weight_grad(x, gh, w1.shape[2], p1)
            if want["x"]:
                grads["x"] = _wide_input_grad(gh, w1, p1)
        else:
            gx, gw1, _ = conv.backward(gh, x, w1, None, needs_input_grad=(want["x"], want["w1"], False),
                                       padding=padding)
            grads.update({n: t for n, t in (("x", gx), ("w1", gw1)) if t is not None})
    return loss, {n: grads[n] for n in _CRC_ARGS if n in grads}


def conv_relu_conv_samples(device, dtype):
    mk = Maker(device, dtype)
    # (x, w1, w2, k shapes, padding, stride, name)
    table = [
        ((2, 3, 8, 8), (4, 3, 3, 3), (1, 4, 3, 3), (5, 1, 4, 4), 1, 4, "conv_relu_conv[p1,s4]"),
        ((1, 2, 10, 10), (3, 2, 3, 3), (2, 3, 3, 3), (4, 2, 4, 4), 0, 4, "conv_relu_conv[p0,s4,c2]"),
        ((2, 2, 7, 7), (2, 2, 3, 3), (1, 2, 3, 3), (3, 1, 3, 3), 1, 2, "conv_relu_conv[p1,s2,overlap]"),
        # C >= O k^2: the second convolution takes the contract-then-shift formulation
        ((2, 2, 6, 5), (9, 2, 3, 3), (1, 9, 3, 3), (2, 1, 3, 3), 1, 3, "conv_relu_conv[p1,s3,few-out]"),
        ((1, 2, 8, 8), (10, 2, 5, 5), (1, 10, 3, 3), (2, 1, 4, 4), 2, 4, "conv_relu_conv[p2,k5,s4]"),
    ]
    for xs, w1s, w2s, ks, p, s, name in table:
        x, w1, w2, k = mk.randn(*xs), mk.randn(*w1s), mk.randn(*w2s), mk.randn(*ks)
        y_shape = F.conv2d(F.conv2d(F.conv2d(x, w1, padding=p), w2, padding=p), k, stride=s).shape
        yield Sample((x, w1, w2, k, mk.randn(*y_shape)), {"padding": p, "stride": s}, name)
    # exact relu zeros: integer x and w1 make h == 0 at many points (relu'(0) = 0)
    x, w1 = mk.integers(2, 2, 6, 6, low=-1, high=2), mk.integers(2, 2, 3, 3, low=-1, high=2)
    w2, k = mk.randn(1, 2, 3, 3), mk.randn(3, 1, 3, 3)
    yield Sample((x, w1, w2, k, mk.randn(2, 3, 2, 2)), {"padding": 1, "stride": 3},
                 "conv_relu_conv[p1,s3,relu-zeros]")


@register("conv_relu_conv_loss", torch_fn=conv_relu_conv_loss, tensor_args=_CRC_ARGS,
          samples=conv_relu_conv_samples)
def conv_relu_conv_loss_backward(grad_output, x, w1, w2, k, y, *, needs_input_grad, padding=1, stride=32):
    """Chain rule through strided_conv_loss, conv2d, relu and conv2d backward (see the module doc)."""
    needs = _needs(needs_input_grad, 5)
    wrt = tuple(n for n, w in zip(_CRC_ARGS, needs) if w)
    _, grads = conv_relu_conv_loss_and_grads(x, w1, w2, k, y, padding, stride, wrt=wrt,
                                             grad_output=grad_output)
    return tuple(grads.get(n) for n in _CRC_ARGS)


# ---------------------------------------------------------------------------
# unfold convolutions (seed 001)
# ---------------------------------------------------------------------------

def _unfold_geometry(op: str, x, weight, stride, padding, dilation):
    if x.dim() != 4 or weight.dim() != 4:
        raise InvalidParameterError(f"{op}: input and weight must be 4-d ([N, C, H, W] and "
                                    f"[C_out, C, kH, kW]), got {x.dim()} and {weight.dim()} dimensions")
    if isinstance(padding, str):
        raise UnsupportedError(f"{op}: padding must be an int or a pair of ints, not {padding!r}")
    if weight.shape[1] != x.shape[1]:
        raise InvalidParameterError(f"{op}: weight has {weight.shape[1]} input channels, input has "
                                    f"{x.shape[1]} (groups are not supported)")
    ks = tuple(weight.shape[2:])
    s = _shapes.ntuple(stride, 2, "stride")
    p = _shapes.ntuple(padding, 2, "padding")
    d = _shapes.ntuple(dilation, 2, "dilation")
    out = tuple(_shapes.conv_output_size(L, kk, ss, pp, pp, dd)
                for L, kk, ss, pp, dd in zip(x.shape[2:], ks, s, p, d))
    if min(out) < 1:
        raise InvalidParameterError(f"{op}: the kernel (with dilation and padding) is larger than the input")
    return dict(kernel_size=ks, dilation=d, padding=p, stride=s), out


def unfold_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """Reference (seed 001): ``W_flat @ unfold(x) + b[:, None]`` viewed as the conv output."""
    geo, out = _unfold_geometry("unfold_conv2d", input, weight, stride, padding, dilation)
    cols = F.unfold(input, **geo)                                    # [N, C kh kw, L]
    res = weight.reshape(weight.shape[0], -1) @ cols                 # [N, C_out, L]
    res = res.view(input.shape[0], weight.shape[0], *out)
    return res if bias is None else res + bias.view(-1, 1, 1)        # bias broadcast as [C, 1, 1]


def _unfold_samples(name: str, extra: dict | None = None, ties: bool = False):
    def samples(device, dtype):
        mk = Maker(device, dtype)
        # (x shape, w shape, bias?, params, tag)
        table = [
            ((1, 2, 4, 4), (5, 2, 3, 3), False, {"padding": 1}, "seed001"),
            ((2, 2, 5, 6), (3, 2, 3, 2), True, {"stride": 2, "padding": 1}, "s2,p1,bias"),
            ((1, 3, 7, 7), (2, 3, 2, 3), True, {"stride": (2, 1), "dilation": 2}, "s21,d2"),
        ]
        for xs, ws, has_b, params, tag in table:
            kw = dict(params, **(extra or {}))
            b = mk.randn(ws[0]) if has_b else None
            yield Sample((mk.randn(*xs), mk.randn(*ws), b), kw, f"{name}[{tag}]")
        x = mk.channels_last(mk.randn(2, 2, 5, 5))
        yield Sample((x, mk.randn(2, 2, 3, 3), mk.randn(2)), dict({"padding": 1}, **(extra or {})),
                     f"{name}[p1,channels_last]")
        if ties:  # x == w exactly at some taps: the kink convention (sign(0) = 0) is checked
            x, w = mk.integers(1, 2, 4, 4, low=-1, high=2), mk.integers(2, 2, 2, 2, low=-1, high=2)
            yield Sample((x, w, None), dict(extra or {}), f"{name}[ties]")
    return samples


def _fold_cols(gcols, x_shape, geo):
    """dL/dx = fold(dL/dcols): unfold's adjoint, through the ``unfold`` rule when present."""
    try:
        rule = get("unfold")
    except KeyError:
        rule = None
    if rule is not None:
        x_proxy = torch.zeros((), dtype=gcols.dtype, device=gcols.device).expand(x_shape)
        return rule.backward(gcols, x_proxy, needs_input_grad=(True,), **geo)[0]
    return F.fold(gcols, x_shape[2:], **geo)


@register("unfold_conv2d", torch_fn=unfold_conv2d, tensor_args=("input", "weight", "bias"),
          samples=_unfold_samples("unfold_conv2d"))
def unfold_conv2d_backward(grad_output, input, weight, bias=None, *, needs_input_grad,
                           stride=1, padding=0, dilation=1):
    """dL/dx = fold(W_flat^T g), dL/dW = sum_n g[n] cols[n]^T, dL/db = sum g (see the module doc)."""
    geo, out = _unfold_geometry("unfold_conv2d", input, weight, stride, padding, dilation)
    need_x, need_w, need_b = _needs(needs_input_grad, 3)
    n, c_out = input.shape[0], weight.shape[0]
    g = grad_output.reshape(n, c_out, -1)                            # [N, C_out, L]
    w_flat = weight.reshape(c_out, -1)
    gx = gw = gb = None
    if need_x:
        gx = _fold_cols(w_flat.t() @ g, input.shape, geo)            # dL/dcols = W_flat^T g
    if need_w:
        cols = F.unfold(input, **geo)
        gw = torch.einsum("nol,nkl->ok", g, cols).reshape(weight.shape)
    if need_b and bias is not None:
        gb = g.sum(dim=(0, 2))
    return gx, gw, gb


# -- the replaced inner product ------------------------------------------------

class MulOp:
    """f(x, w) = x w: the ordinary convolution."""

    name = "mul"

    @staticmethod
    def fn(x, w):
        return x * w

    @staticmethod
    def dfdx(x, w):
        return w.expand(torch.broadcast_shapes(x.shape, w.shape))

    @staticmethod
    def dfdw(x, w):
        return x.expand(torch.broadcast_shapes(x.shape, w.shape))


class AdderOp:
    """f(x, w) = -|x - w| (AdderNet); df/dx = -sign(x - w), df/dw = sign(x - w), 0 at x == w."""

    name = "adder"

    @staticmethod
    def fn(x, w):
        return -(x - w).abs()

    @staticmethod
    def dfdx(x, w):
        return -torch.sign(x - w)       # d|u|/du = sign(u), sign(0) = 0 as torch's abs backward

    @staticmethod
    def dfdw(x, w):
        return torch.sign(x - w)


_OPS = {"mul": MulOp, "adder": AdderOp}


def resolve_op(op: Any):
    """``"mul"``, ``"adder"`` or an object with ``fn``, ``dfdx`` and ``dfdw``."""
    if isinstance(op, str):
        try:
            return _OPS[op]
        except KeyError:
            raise InvalidParameterError(f"unfold_conv2d_custom: op must be one of {sorted(_OPS)} or an "
                                        f"object with fn, dfdx and dfdw, got {op!r}") from None
    missing = [m for m in ("fn", "dfdx", "dfdw") if not callable(getattr(op, m, None))]
    if missing:
        raise InvalidParameterError(f"unfold_conv2d_custom: op {op!r} has no callable {missing[0]}(x, w)")
    return op


def unfold_conv2d_custom(input, weight, bias=None, stride=1, padding=0, dilation=1, op="adder"):
    """Reference: ``out[n, o, l] = sum_k f(cols[n, k, l], W[o, k]) + b[o]``, by broadcasting."""
    f = resolve_op(op)
    geo, out = _unfold_geometry("unfold_conv2d_custom", input, weight, stride, padding, dilation)
    cols = F.unfold(input, **geo)                                    # [N, K, L]
    w_flat = weight.reshape(weight.shape[0], -1)                     # [C_out, K]
    res = f.fn(cols[:, None, :, :], w_flat[None, :, :, None]).sum(dim=2)   # [N, C_out, L]
    res = res.view(input.shape[0], weight.shape[0], *out)
    return res if bias is None else res + bias.view(-1, 1, 1)


@register("unfold_conv2d_custom", torch_fn=unfold_conv2d_custom, tensor_args=("input", "weight", "bias"),
          samples=_unfold_samples("unfold_conv2d_custom", {"op": "adder"}, ties=True))
def unfold_conv2d_custom_backward(grad_output, input, weight, bias=None, *, needs_input_grad,
                                  stride=1, padding=0, dilation=1, op="adder"):
    """dL/dcols = sum_o g df/dx, dL/dx = fold(dL/dcols), dL/dW = sum_{n,l} g df/dw, dL/db = sum g."""
    f = resolve_op(op)
    geo, out = _unfold_geometry("unfold_conv2d_custom", input, weight, stride, padding, dilation)
    need_x, need_w, need_b = _needs(needs_input_grad, 3)
    n, c_out = input.shape[0], weight.shape[0]
    g = grad_output.reshape(n, c_out, 1, -1)                         # [N, C_out, 1, L]
    gx = gw = gb = None
    if need_x or need_w:
        cols = F.unfold(input, **geo)[:, None, :, :]                 # [N, 1, K, L]
        w_b = weight.reshape(c_out, -1)[None, :, :, None]            # [1, C_out, K, 1]
        if need_x:
            gcols = (g * f.dfdx(cols, w_b)).sum(dim=1)               # [N, K, L]
            gx = _fold_cols(gcols, input.shape, geo)
        if need_w:
            gw = (g * f.dfdw(cols, w_b)).sum(dim=(0, 3)).reshape(weight.shape)
    if need_b and bias is not None:
        gb = grad_output.reshape(n, c_out, -1).sum(dim=(0, 2))
    return gx, gw, gb
