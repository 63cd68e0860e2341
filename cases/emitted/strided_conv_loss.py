"""Explicit backward of loss() in strided_conv_loss.py, written out by gradcheck-kit emit.

    loss_and_grads(**inputs) -> (loss, {"x": dL/dx, "k": dL/dk})

Written for inputs shaped x [2, 1, 64, 64], k [16, 1, 32, 32], y [2, 16, 2, 2]; the literals
below (shapes, paddings) depend on them, so re-emit for other shapes.

Every line is a public, differentiable torch op, so these gradients can be differentiated
again.  Checked against autograd (float64, first and second order) before it was written.
"""
import torch
import torch.nn.functional as F


def loss_and_grads(x, k, y):
    # forward
    z1 = F.conv2d(x, k, stride=32)                          # [2, 16, 2, 2]  strided_conv_loss.py:28
    z2 = z1 - y                                             # [2, 16, 2, 2]  strided_conv_loss.py:28
    z3 = z2.pow(2)                                          # [2, 16, 2, 2]  strided_conv_loss.py:28
    z4 = z3.sum(dim=[1, 2, 3])                              # [2]  strided_conv_loss.py:28
    losses = z4 * 0.5                                       # [2]  strided_conv_loss.py:28
    loss = losses.sum()                                     # []  a non-scalar loss is summed

    # backward: g_v = dL/dv, in reverse order
    g_z2 = z2                                               # [2, 16, 2, 2]  0.5 d(x^2)/dx = x
    # g_z1 is g_z2: d(a - b)/da = 1
    g_k = torch.einsum("ngcpuqv,ngopq->gocuv", x.reshape(2, 1, 1, 2, 32, 2, 32), g_z2.reshape(2, 1, 16, 2, 2)).reshape(16, 1, 32, 32)  # [16, 1, 32, 32]  stride = kernel, windows tile x: dL/dw[o, c, k] = sum_(n, j) x[n, c, j, k] g[n, o, j]
    g_x = F.conv_transpose2d(g_z2, k.contiguous(memory_format=torch.channels_last), stride=32)  # [2, 1, 64, 64]  the convolution's adjoint: conv_transpose, same stride/padding; w channels-last: oneDNN's NHWC path, the result is channels-last
    return loss, {"x": g_x, "k": g_k}
