"""Four real blocks written only with ops that have rules, their gradients checked rule by rule.

Each model is written once against an ``op(name, *args, **params)`` callable.  Run with
``autograd_op`` it is plain torch (each rule's ``torch_fn``) and autograd gives the
reference gradients.  Run with a ``Tape`` it records every call (the rule, its inputs,
its output and what ``forward_saved`` kept); ``Tape.backward`` then walks the record in
reverse and chains the rules' explicit backwards by hand, accumulating gradients of
tensors used more than once (residuals, shared LSTM weights).  Every parameter's
gradient must equal autograd's in float64 to ~1e-10.

The tape is a small local helper for this test, not a product API (the product engine is
``gradcheck_kit.manual.functional``/``use_rules``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gradcheck_kit import manual
from gradcheck_kit.manual._sampling import Maker


def autograd_op(name, *args, **params):
    return manual.get(name).torch_fn(*args, **params)


class Tape:
    """Records each rule call; ``backward`` chains the rules' backwards in reverse."""

    def __init__(self, overrides: dict | None = None, accumulate: bool = True):
        self.nodes = []
        self.overrides = overrides or {}
        self.accumulate = accumulate

    def rule(self, name):
        return self.overrides.get(name) or manual.get(name)

    def __call__(self, name, *args, **params):
        rule = self.rule(name)
        out, saved = rule.forward_saved(*args, **params)
        ins = {id(a) for a in _tensors(args)} | {id(v) for v in params.values() if isinstance(v, torch.Tensor)}
        assert not ins & {id(o) for o in _tensors((out,))}, f"{name} returned one of its inputs"
        self.nodes.append((rule, args, params, out, saved))
        return out

    def backward(self, loss: torch.Tensor) -> dict[int, torch.Tensor]:
        """{id(tensor): dloss/dtensor} for every tensor the recorded calls read."""
        grads = {id(loss): torch.ones_like(loss)}

        def acc(t, g):
            if isinstance(t, torch.Tensor) and g is not None:
                grads[id(t)] = g if id(t) not in grads or not self.accumulate else grads[id(t)] + g

        for rule, args, params, out, saved in reversed(self.nodes):
            outs = out if isinstance(out, tuple) else (out,)
            gs = [grads.get(id(o)) if isinstance(o, torch.Tensor) else None for o in outs]
            if all(g is None for g in gs):
                continue
            g = tuple(gs) if isinstance(out, tuple) else gs[0]
            res = rule.backward(g, *args, saved=saved, **params)
            for a, ga in zip(args, res):
                if isinstance(a, (list, tuple)):
                    for e, ge in zip(a, ga):
                        acc(e, ge)
                else:
                    acc(a, ga)
            for k, gk in res.keywords.items():
                acc(params[k], gk)
        return grads


def _tensors(xs):
    for x in xs:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from _tensors(x)


def _loss(op, out, cotangent):
    """<out, C> with a fixed random C, itself through rules."""
    return op("sum", op("mul", out, cotangent))


def check_model(model, params: dict, overrides: dict | None = None, accumulate: bool = True, **kw):
    """Every parameter's gradient through the chained rules equals autograd's (float64, ~1e-10)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    out = model(autograd_op, leaves, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    ref_loss = _loss(autograd_op, out, cot)
    ref = dict(zip(leaves, torch.autograd.grad(ref_loss, list(leaves.values()))))

    tape = Tape(overrides, accumulate)
    plain = {k: v.detach().clone() for k, v in params.items()}
    loss = _loss(tape, model(tape, plain, **kw), cot)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=1e-12)
    grads = tape.backward(loss)
    used = {r.name for r, *_ in tape.nodes}
    for k in params:
        assert id(plain[k]) in grads, f"no gradient reached parameter {k!r}"
        scale = max(1.0, float(ref[k].abs().max()))
        torch.testing.assert_close(grads[id(plain[k])], ref[k], rtol=1e-10, atol=1e-10 * scale,
                                   msg=lambda m, k=k: f"parameter {k!r}: {m}")
    return used


def _has(name):
    return name in manual.names()


# -- ResNet basic block: conv-bn-relu-conv-bn + identity, relu ------------------------------

def resnet_block(op, p):
    h = op("conv2d", p["x"], p["w1"], None, padding=1)
    h = op("relu", op("batch_norm", h, None, None, p["g1"], p["b1"], training=True))
    h = op("conv2d", h, p["w2"], None, padding=1)
    h = op("batch_norm", h, None, None, p["g2"], p["b2"], training=True)
    return op("relu", op("add", h, p["x"]))


def resnet_params():
    mk = Maker(seed=1)
    C = 4
    return {"x": mk.randn(2, C, 6, 6), "w1": mk.randn(C, C, 3, 3, scale=0.3), "w2": mk.randn(C, C, 3, 3, scale=0.3),
            "g1": mk.positive(C), "b1": mk.randn(C), "g2": mk.positive(C), "b2": mk.randn(C)}


def test_resnet_basic_block():
    used = check_model(resnet_block, resnet_params())
    assert {"conv2d", "batch_norm", "relu", "add"} <= used


# -- pre-norm transformer block: norm, attention, MLP with gelu, dropout p=0, residuals -------

def transformer_block(op, p, attention="sdpa", norm="layer_norm"):
    x = p["x"]
    B, T, D = x.shape
    H = 2
    E = D // H

    def normed(t, w, b):
        if norm == "layer_norm":
            return op("layer_norm", t, w, b, normalized_shape=(D,))
        return op("rms_norm", t, w, normalized_shape=(D,), eps=1e-6)

    def heads(t):                                         # (B, T, D) -> (B, H, T, E)
        return op("transpose", op("reshape", t, shape=(B, T, H, E)), dim0=1, dim1=2)

    h = normed(x, p["n1_w"], p.get("n1_b"))
    q, k, v = (heads(op("linear", h, p[f"w{n}"], p[f"b{n}"])) for n in "qkv")
    if attention == "sdpa":
        a = op("scaled_dot_product_attention", q, k, v, is_causal=True)
    else:                                                 # softmax(q k^T / sqrt(E) + causal bias) v
        s = op("mul", op("matmul", q, op("transpose", k, dim0=-2, dim1=-1)), E ** -0.5)
        bias = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        a = op("matmul", op("softmax", op("add", s, bias), dim=-1), v)
    a = op("reshape", op("transpose", a, dim0=1, dim1=2), shape=(B, T, D))
    x = op("add", x, op("dropout", op("linear", a, p["wo"], p["bo"]), p=0.0))
    h = normed(x, p["n2_w"], p.get("n2_b"))
    h = op("linear", op("gelu", op("linear", h, p["w1"], p["b1"])), p["w2"], p["b2"])
    return op("add", x, op("dropout", h, p=0.0))


def transformer_params(norm="layer_norm"):
    mk = Maker(seed=2)
    D, F_ = 8, 16
    p = {"x": mk.randn(2, 5, D)}
    for n in "qkvo":
        p[f"w{n}"], p[f"b{n}"] = mk.randn(D, D, scale=0.4), mk.randn(D, scale=0.1)
    p.update(w1=mk.randn(F_, D, scale=0.4), b1=mk.randn(F_, scale=0.1), w2=mk.randn(D, F_, scale=0.3),
             b2=mk.randn(D, scale=0.1))
    for i in (1, 2):
        p[f"n{i}_w"], p[f"n{i}_b"] = mk.positive(D), mk.randn(D, scale=0.1)
        if norm == "rms_norm":
            del p[f"n{i}_b"]
    return p


@pytest.mark.parametrize("attention", ["sdpa", "matmul_softmax"])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_prenorm_transformer_block(attention, norm):
    if not _has(norm):
        pytest.skip(f"no {norm} rule registered yet")
    used = check_model(transformer_block, transformer_params(norm), attention=attention, norm=norm)
    assert {"linear", "gelu", "dropout", "add", norm} <= used


def test_transformer_block_is_torchs_encoder_layer():
    """The block computes what nn.TransformerEncoderLayer(norm_first=True, gelu, dropout=0) computes."""
    p = transformer_params()
    D = p["x"].shape[-1]
    layer = torch.nn.TransformerEncoderLayer(D, nhead=2, dim_feedforward=16, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True, dtype=torch.float64)
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([p["wq"], p["wk"], p["wv"]]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([p["bq"], p["bk"], p["bv"]]))
        layer.self_attn.out_proj.weight.copy_(p["wo"])
        layer.self_attn.out_proj.bias.copy_(p["bo"])
        for mine, theirs in (("w1", layer.linear1.weight), ("b1", layer.linear1.bias), ("w2", layer.linear2.weight),
                             ("b2", layer.linear2.bias), ("n1_w", layer.norm1.weight), ("n1_b", layer.norm1.bias),
                             ("n2_w", layer.norm2.weight), ("n2_b", layer.norm2.bias)):
            theirs.copy_(p[mine])
        T = p["x"].shape[1]
        ref = layer(p["x"], src_mask=torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64),
                    is_causal=True)
    torch.testing.assert_close(transformer_block(autograd_op, p), ref, rtol=1e-12, atol=1e-12)


# -- U-Net down/up step: conv, max_pool, upsample, cat, conv ---------------------------------

def unet_step(op, p, up="interpolate", mode="bilinear"):
    e = op("relu", op("conv2d", p["x"], p["we"], p["be"], padding=1))          # (N, 4, 8, 8)
    d = op("max_pool2d", e, kernel_size=2)                                      # (N, 4, 4, 4)
    d = op("relu", op("conv2d", d, p["wd"], p["bd"], padding=1))                # (N, 8, 4, 4)
    if up == "interpolate":
        u = op("interpolate", d, scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    else:
        u = op("conv_transpose2d", d, p["wu"], p["bu"], stride=2)              # (N, 8, 8, 8)
    h = op("relu", op("conv2d", op("cat", [u, e], dim=1), p["wc"], p["bc"], padding=1))
    return op("conv2d", h, p["wo"], p["bo"])


def unet_params(up):
    mk = Maker(seed=3)
    p = {"x": mk.randn(2, 3, 8, 8), "we": mk.randn(4, 3, 3, 3, scale=0.3), "be": mk.randn(4, scale=0.1),
         "wd": mk.randn(8, 4, 3, 3, scale=0.3), "bd": mk.randn(8, scale=0.1),
         "wc": mk.randn(4, 12, 3, 3, scale=0.3), "bc": mk.randn(4, scale=0.1),
         "wo": mk.randn(2, 4, 1, 1), "bo": mk.randn(2, scale=0.1)}
    if up == "conv_transpose2d":
        p.update(wu=mk.randn(8, 8, 2, 2, scale=0.3), bu=mk.randn(8, scale=0.1))
    return p


@pytest.mark.parametrize("up,mode", [("interpolate", "bilinear"), ("interpolate", "nearest"),
                                     ("conv_transpose2d", None)])
def test_unet_down_up_step(up, mode):
    if not _has(up):
        pytest.skip(f"no {up} rule registered yet")
    used = check_model(unet_step, unet_params(up), up=up, mode=mode)
    assert {"max_pool2d", "cat", up} <= used


# -- LSTM cell, two steps with shared weights -------------------------------------------------

def lstm(op, p, steps=2):
    h, c = p["h0"], p["c0"]
    for t in range(steps):
        xt = op("select", p["x"], dim=0, index=t)
        gates = op("add", op("linear", xt, p["w_ih"], p["b_ih"]), op("linear", h, p["w_hh"], p["b_hh"]))
        i, f, g, o = op("chunk", gates, chunks=4, dim=1)
        i, f, g, o = op("sigmoid", i), op("sigmoid", f), op("tanh", g), op("sigmoid", o)
        c = op("add", op("mul", f, c), op("mul", i, g))           # c' = f c + i g
        h = op("mul", o, op("tanh", c))                           # h' = o tanh(c')
    return op("cat", [h, c], dim=1)


def lstm_params():
    mk = Maker(seed=4)
    I, Hd, N = 5, 4, 3
    return {"x": mk.randn(2, N, I), "h0": mk.randn(N, Hd), "c0": mk.randn(N, Hd),
            "w_ih": mk.randn(4 * Hd, I, scale=0.5), "b_ih": mk.randn(4 * Hd, scale=0.1),
            "w_hh": mk.randn(4 * Hd, Hd, scale=0.5), "b_hh": mk.randn(4 * Hd, scale=0.1)}


def test_lstm_cell():
    used = check_model(lstm, lstm_params())
    assert {"linear", "chunk", "sigmoid", "tanh", "mul", "add", "cat"} <= used


def test_lstm_is_torchs_lstm_cell():
    p = lstm_params()
    cell = torch.nn.LSTMCell(5, 4, dtype=torch.float64)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(cell, name.replace("w_", "weight_").replace("b_", "bias_")).copy_(p[name])
        h, c = p["h0"], p["c0"]
        for t in range(2):
            h, c = cell(p["x"][t], (h, c))
    torch.testing.assert_close(lstm(autograd_op, p), torch.cat([h, c], dim=1), rtol=1e-12, atol=1e-12)


# -- the chain is a real check: one wrong rule inside a model fails it -------------------------

def test_planted_wrong_rule_inside_a_model_is_caught():
    sig = manual.get("sigmoid")

    def no_slope_factor(grad_output, input, *, needs_input_grad):
        return (grad_output * torch.sigmoid(input),)      # s instead of s (1 - s)

    bad = dataclasses.replace(sig, backward_impl=no_slope_factor)
    with pytest.raises(AssertionError, match="parameter"):
        check_model(lstm, lstm_params(), overrides={"sigmoid": bad})


def test_planted_overwrite_instead_of_accumulate_is_caught():
    """The ResNet identity path reads x twice: a chain that overwrote instead of summing fails."""
    with pytest.raises(AssertionError, match="parameter 'x'"):
        check_model(resnet_block, resnet_params(), accumulate=False)


# -- second derivatives: the chained rule backwards are differentiable ------------------------

def check_model_hvp(model, params: dict, overrides: dict | None = None, **kw):
    """d/dθ <chained gradient, v> equals autograd's double backward (a Hessian-vector product)."""
    gen = torch.Generator().manual_seed(11)
    vs = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    cot = None

    def hvp(chain: bool):
        nonlocal cot
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        if chain:
            tape = Tape(overrides)
            out = model(tape, leaves, **kw)
            grads = tape.backward(_loss(tape, out, cot))
            gs = [grads[id(leaves[k])] for k in params]
        else:
            out = model(autograd_op, leaves, **kw)
            if cot is None:
                cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
            gs = torch.autograd.grad(_loss(autograd_op, out, cot), list(leaves.values()), create_graph=True)
        s = sum((g * vs[k]).sum() for g, k in zip(gs, params))
        return torch.autograd.grad(s, list(leaves.values()), allow_unused=True)

    ref = hvp(chain=False)
    got = hvp(chain=True)
    for k, r, g in zip(params, ref, got):
        r = torch.zeros_like(params[k]) if r is None else r
        g = torch.zeros_like(params[k]) if g is None else g
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10 * scale, msg=lambda m, k=k: f"HVP {k!r}: {m}")


@pytest.mark.parametrize("which", ["resnet", "transformer", "lstm"])
def test_second_derivatives_through_the_chain(which):
    if which == "resnet":
        check_model_hvp(resnet_block, resnet_params())
    elif which == "transformer":      # matmul/softmax attention: torch's flash sdpa kernel has no double backward
        check_model_hvp(transformer_block, transformer_params(), attention="matmul_softmax")
    else:
        check_model_hvp(lstm, lstm_params())


def test_planted_detached_backward_is_caught_by_the_second_derivative_only():
    sig = manual.get("sigmoid")

    def detached(grad_output, input, *, needs_input_grad):
        s = torch.sigmoid(input).detach()                 # right values, no second derivative
        return (grad_output * s * (1 - s),)

    bad = {"sigmoid": dataclasses.replace(sig, backward_impl=detached)}
    check_model(lstm, lstm_params(), overrides=bad)      # first derivatives cannot see it
    with pytest.raises(AssertionError, match="HVP"):
        check_model_hvp(lstm, lstm_params(), overrides=bad)
