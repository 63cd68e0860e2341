"""Explicit backward of loss() in conv_then_strided_loss.py, written out by gradcheck-kit emit.

    loss_and_grads(**inputs) -> (loss, {"x": dL/dx, "w1": dL/dw1})

Written for inputs shaped x [2, 4, 64, 64], w1 [1, 4, 3, 3], k [8, 1, 32, 32], y [2, 8, 2, 2];
the literals below (shapes, paddings) depend on them, so re-emit for other shapes.

Every line is a public, differentiable torch op, so these gradients can be differentiated
again.  Checked against autograd (float64, first and second order) before it was written.
"""
import torch
import torch.nn.functional as F


def loss_and_grads(x, w1, k, y):
    # forward
    z = F.conv2d(x, w1, padding=1)                          # [2, 1, 64, 64]  conv_then_strided_loss.py:33
    t1 = F.conv2d(z, k, stride=32)                          # [2, 8, 2, 2]  conv_then_strided_loss.py:34
    del z                                                   # not used below: its memory is reused
    t2 = t1 - y                                             # [2, 8, 2, 2]  conv_then_strided_loss.py:34
    t3 = t2.pow(2)                                          # [2, 8, 2, 2]  conv_then_strided_loss.py:34
    t4 = t3.sum(dim=[1, 2, 3])                              # [2]  conv_then_strided_loss.py:34
    losses = t4 * 0.5                                       # [2]  conv_then_strided_loss.py:34
    loss = losses.sum()                                     # []  a non-scalar loss is summed

    # backward: g_v = dL/dv, in reverse order
    g_t2 = t2                                               # [2, 8, 2, 2]  0.5 d(x^2)/dx = x
    # g_t1 is g_t2: d(a - b)/da = 1
    g_z = F.conv_transpose2d(g_t2, k.contiguous(memory_format=torch.channels_last), stride=32)  # [2, 1, 64, 64]  the convolution's adjoint: conv_transpose, same stride/padding; w channels-last: oneDNN's NHWC path, the result is channels-last
    x_rows = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 2)).reshape(2, -1, 4)  # x zero-padded (+1 spare row), one row of channels per position: [2, 4422, 4]
    g_z_rows = F.pad(g_z.permute(0, 2, 3, 1), (0, 0, 0, 2)).reshape(2, 4224, 1)  # g as rows, zero-padded to the padded width (cancels the wrap-around): [2, 4224, 1]
    g_w1 = torch.stack([torch.bmm(g_z_rows.transpose(1, 2), x_rows[:, off:off + 4224]).sum(0)
        for off in (0, 1, 2, 66, 67, 68, 132, 133, 134)], dim=-1).view(1, 4, 3, 3)  # [1, 4, 3, 3]  dL/dw[:, :, tap] = sum_n g_rows[n]^T x_pad[n, off + j, :], one GEMM per tap, off = tap . (66, 1)
    del x_rows, g_z_rows                                    # not used below: their memory is reused
    g_x = F.conv_transpose2d(g_z, w1.contiguous(memory_format=torch.channels_last), padding=1)  # [2, 4, 64, 64]  the convolution's adjoint: conv_transpose, same stride/padding; w channels-last: oneDNN's NHWC path, the result is channels-last
    return loss, {"x": g_x, "w1": g_w1}
