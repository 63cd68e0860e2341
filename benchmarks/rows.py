"""The measurements of benchmarks/run.py, one function per group of rows.

Every group returns ``Row`` objects; a group whose dependency is not importable (a rule
not written yet, the comparison engine, derive) returns rows whose figure is
``n/a (reason)`` instead of failing the run.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from harness import (cpu_peak_bytes_subprocess, cpu_peak_supported, cuda_peak_bytes, time_once,
                     time_pair)

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


@dataclass
class Ctx:
    device: str
    quick: bool
    repeats: int
    memory: bool = True


@dataclass
class Row:
    group: str
    name: str
    goal: str                      # e.g. "<= 1.10x"
    figure: str                    # what is compared with the goal, formatted
    ok: bool | None                # None: not applicable / not measured
    manual_ms: float | None = None
    autograd_ms: float | None = None
    ratio: float | None = None
    mem_ratio: float | None = None
    mem_ok: bool | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def na(group: str, name: str, goal: str, reason: str) -> Row:
    return Row(group, name, goal, f"n/a ({reason})", None)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


# ---------------------------------------------------------------------------------
# seed 002: the three problems at full size, manual (loss + explicit grads) vs autograd
# ---------------------------------------------------------------------------------

SEED002 = {
    "seed002_p1": ("strided_conv_loss.py", "0.5||conv2d(x,k,s=32)-y||^2; grads x, k"),
    "seed002_p2": ("conv_then_strided_loss.py", "conv3x3 -> strided loss; grads x, w1"),
    "seed002_p3": ("conv_relu_conv.py", "conv -> relu -> conv -> strided loss; grads x, w1, w2"),
}


def _load_case(fname: str):
    from gradcheck_kit.casefile import load_case

    return load_case(CASES / fname)


def seed002_variants(row_id: str, device: str, quick: bool = False) -> dict[str, Callable]:
    """``{"manual": fn, "autograd": fn}`` for one seed-002 problem, float32, the case's full size."""
    from gradcheck_kit.manual import composites as C

    fname, _ = SEED002[row_id]
    case = _load_case(fname)
    inp = case.make_inputs(device, torch.float32, seed=0)
    wrt = case.wrt
    leaves = {k: (v.detach().requires_grad_() if k in wrt else v) for k, v in inp.items()}

    def autograd():
        out = case.loss(**leaves).sum()
        return out, torch.autograd.grad(out, [leaves[n] for n in wrt])

    if row_id == "seed002_p1":
        def manual():
            return C.strided_conv_loss_and_grads(inp["x"], inp["k"], inp["y"], stride=32, wrt=("z", "k"))
    elif row_id == "seed002_p2":
        def manual():
            return C.conv_strided_loss_and_grads(inp["x"], inp["w1"], inp["k"], inp["y"], padding=1,
                                                 stride=32, wrt=wrt)
    else:
        def manual(fast=True):
            return C.conv_relu_conv_loss_and_grads(inp["x"], inp["w1"], inp["w2"], inp["k"], inp["y"],
                                                   padding=1, stride=32, wrt=wrt, fast=fast)
        return {"manual": manual, "autograd": autograd, "rule_chain": lambda: manual(fast=False)}
    return {"manual": manual, "autograd": autograd}


def _peak_pair(row_id: str, ctx: Ctx, variants: dict[str, Callable]) -> tuple[float | None, str]:
    if not ctx.memory:
        return None, "memory not measured (--no-memory)"
    if ctx.device.startswith("cuda"):
        m, a = cuda_peak_bytes(variants["manual"]), cuda_peak_bytes(variants["autograd"])
    else:
        if not cpu_peak_supported():
            return None, "no /proc/self/clear_refs: CPU peak memory not measured"
        m = cpu_peak_bytes_subprocess(row_id, "manual", ctx.quick)
        a = cpu_peak_bytes_subprocess(row_id, "autograd", ctx.quick)
        if m is None or a is None:
            return None, "peak-memory subprocess failed"
    return m / a if a else None, f"peak extra memory {m / 2**20:.0f} MiB vs {a / 2**20:.0f} MiB"


def group_seed002(ctx: Ctx) -> list[Row]:
    rows = []
    for row_id, (fname, what) in SEED002.items():
        name = f"{row_id} {what}"
        try:
            v = seed002_variants(row_id, ctx.device, ctx.quick)
        except Exception as e:  # a dependency not written yet
            rows.append(na("seed002", name, "<= 1.10x time, <= 1.0x memory", _one_line(e)))
            continue
        t = time_pair(v["manual"], v["autograd"], device=ctx.device, repeats=ctx.repeats, warmup=2)
        mem, mem_note = _peak_pair(row_id, ctx, v)
        rows.append(Row("seed002", name, "<= 1.10x time, <= 1.0x memory", f"{t.ratio:.2f}x", t.ratio <= 1.10,
                        t.a_s * 1e3, t.b_s * 1e3, t.ratio, mem, None if mem is None else mem <= 1.0,
                        f"{mem_note}; pair-ratio spread {t.spread:.0%} over {t.repeats} pairs"))
        if "rule_chain" in v and not ctx.quick:  # what the per-shape formulations bought
            tc = time_pair(v["rule_chain"], v["autograd"], device=ctx.device, repeats=ctx.repeats, warmup=1)
            rows.append(Row("seed002", f"{row_id} same, each step the conv2d rule (fast=False), for reference",
                            "(report)", f"{tc.ratio:.2f}x", None, tc.a_s * 1e3, tc.b_s * 1e3, tc.ratio,
                            note=f"pair-ratio spread {tc.spread:.0%} over {tc.repeats} pairs"))
    return rows


# ---------------------------------------------------------------------------------
# one rule against autograd: forward + backward of every differentiable argument
# ---------------------------------------------------------------------------------

def rule_variants(rule_name: str, args: tuple, kwargs: dict, device: str, seed: int = 0):
    from gradcheck_kit import manual

    rule = manual.get(rule_name)
    mask = rule.differentiable_mask(args)
    gen = torch.Generator().manual_seed(seed)
    out = rule.torch_fn(*args, **kwargs)
    multi = isinstance(out, tuple)  # topk, sort: (values, indices); the indices get no cotangent

    def cotangent(o):
        if not o.is_floating_point():
            return None
        return torch.randn(o.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=o.dtype)
    g = tuple(cotangent(o) for o in out) if multi else cotangent(out)
    leaves = tuple(a.detach().requires_grad_() if m else a for a, m in zip(args, mask))
    wanted = [a for a, m in zip(leaves, mask) if m]

    def man():  # the forward with what the rule's backward may reuse (max-pool indices, statistics)
        o, saved = rule.forward_saved(*args, **kwargs)
        return o, rule.backward(g, *args, saved=saved, **kwargs)

    def auto():
        o = rule.torch_fn(*leaves, **kwargs)
        if multi:
            pairs = [(oi, gi) for oi, gi in zip(o, g) if gi is not None]
            return o, torch.autograd.grad([p[0] for p in pairs], wanted, [p[1] for p in pairs])
        return o, torch.autograd.grad(o, wanted, g)

    return man, auto


def _rule_row(group: str, name: str, rule_name: str, make: Callable[[], tuple], ctx: Ctx,
              goal: str = "<= 1.10x") -> Row:
    try:
        args, kwargs = make()
        man, auto = rule_variants(rule_name, args, kwargs, ctx.device)
    except Exception as e:
        return na(group, name, goal, _one_line(e))
    t = time_pair(man, auto, device=ctx.device, repeats=ctx.repeats, warmup=1)
    note = f"pair-ratio spread {t.spread:.0%} over {t.repeats} pairs"
    form = _conv_formulation(rule_name, args, kwargs)
    if form:
        note = f"weight grad: {form}; " + note
    return Row(group, name, goal, f"{t.ratio:.2f}x", t.ratio <= 1.10, t.a_s * 1e3, t.b_s * 1e3, t.ratio,
               note=note)


def _conv_formulation(rule_name: str, args: tuple, kwargs: dict) -> str | None:
    """The weight-gradient formulation the conv rule picks for this shape (None when unknown)."""
    if not rule_name.startswith("conv"):
        return None
    try:
        from gradcheck_kit.manual import conv as conv_mod

        if rule_name.startswith("conv_transpose"):
            dims = int(rule_name[-2])
            geo, _ = conv_mod._transpose_geometry(rule_name, dims, args[0].shape, args[1].shape,
                                                  kwargs.get("stride", 1), kwargs.get("padding", 0),
                                                  kwargs.get("output_padding", 0), kwargs.get("groups", 1),
                                                  kwargs.get("dilation", 1))
            c_in = args[1].shape[1] * kwargs.get("groups", 1)      # the weight gradient's "input" is g
        else:
            dims = int(rule_name[4])
            geo = conv_mod._conv_geometry(rule_name, dims, args[0].shape, args[1].shape, kwargs.get("stride", 1),
                                          kwargs.get("padding", 0), kwargs.get("dilation", 1),
                                          kwargs.get("groups", 1))
            c_in = args[0].shape[1]
        try:
            return conv_mod.weight_grad_formulation(geo, c_in)
        except TypeError:
            return conv_mod.weight_grad_formulation(geo)
    except Exception:
        return None


def _randn(*shape, device, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def group_conv(ctx: Ctx) -> list[Row]:
    d = ctx.device
    n = 4 if ctx.quick else 32
    c, hw = 64, 56

    def conv2d(stride, groups):
        def make():
            x = _randn(n, c, hw, hw, device=d)
            w = _randn(c, c // groups, 3, 3, device=d, seed=1)
            b = _randn(c, device=d, seed=2)
            return (x, w, b), {"stride": stride, "padding": 1, "groups": groups}
        return make

    rows = []
    for s in (1, 2):
        for grp, tag in ((1, "g1"), (c, "depthwise")):
            rows.append(_rule_row("conv", f"conv2d N={n} C=64 56x56 3x3 s{s} {tag}", "conv2d",
                                  conv2d(s, grp), ctx))

    def conv1d(stride):
        def make():
            return ((_randn(n, c, 1024, device=d), _randn(c, c, 3, device=d, seed=1), _randn(c, device=d, seed=2)),
                    {"stride": stride, "padding": 1})
        return make

    for s in (1, 2):
        rows.append(_rule_row("conv", f"conv1d N={n} C=64 L=1024 k3 s{s}", "conv1d", conv1d(s), ctx))

    n3 = max(1, n // 8)

    def conv3d():
        return ((_randn(n3, 32, 8, 28, 28, device=d), _randn(32, 32, 3, 3, 3, device=d, seed=1),
                 _randn(32, device=d, seed=2)), {"padding": 1})

    rows.append(_rule_row("conv", f"conv3d N={n3} C=32 8x28x28 3x3x3 s1", "conv3d", conv3d, ctx))

    def convt(stride):
        def make():
            size = hw // stride
            kw = {"stride": stride, "padding": 1, "output_padding": stride - 1}
            return ((_randn(n, c, size, size, device=d), _randn(c, c, 3, 3, device=d, seed=1),
                     _randn(c, device=d, seed=2)), kw)
        return make

    for s in (1, 2):
        rows.append(_rule_row("conv", f"conv_transpose2d N={n} C=64 -> 56x56 3x3 s{s}", "conv_transpose2d",
                              convt(s), ctx))
    return rows


def group_other_rules(ctx: Ctx) -> list[Row]:
    d = ctx.device
    n = 4 if ctx.quick else 32
    rows = [
        _rule_row("rules", f"max_pool2d N={n} C=64 112x112 k3 s2 p1", "max_pool2d",
                  lambda: ((_randn(n, 64, 112, 112, device=d),), {"kernel_size": 3, "stride": 2, "padding": 1}), ctx),
        _rule_row("rules", f"avg_pool2d N={n} C=64 56x56 k3 s2 p1", "avg_pool2d",
                  lambda: ((_randn(n, 64, 56, 56, device=d),), {"kernel_size": 3, "stride": 2, "padding": 1}), ctx),
    ]
    nb = 64 if ctx.quick else 512

    def ce():
        logits = _randn(nb, 1000, device=d)
        target = torch.randint(0, 1000, (nb,), generator=torch.Generator().manual_seed(3)).to(d)
        return (logits, target), {}

    rows.append(_rule_row("rules", f"cross_entropy N={nb} classes=1000", "cross_entropy", ce, ctx))

    def bn():
        x = _randn(n, 64, 56, 56, device=d)
        return (x, None, None, _randn(64, device=d, seed=1), _randn(64, device=d, seed=2)), {"training": True}

    rows.append(_rule_row("rules", f"batch_norm (training) N={n} C=64 56x56", "batch_norm", bn, ctx))
    rows += _new_rule_rows(ctx, n)
    return rows


def _new_rule_rows(ctx: Ctx, n: int) -> list[Row]:
    """The rules that real models call most among those added in the second wave's third session."""
    d = ctx.device
    m = 64 if ctx.quick else 1024
    act = lambda: _randn(n, 64, 56, 56, device=d)   # noqa: E731 - an activation-sized tensor
    return [
        _rule_row("rules", f"addmm bias + ({m}x512) @ (512x512)", "addmm",
                  lambda: ((_randn(512, device=d, seed=1), _randn(m, 512, device=d), _randn(512, 512, device=d, seed=2)),
                           {}), ctx),
        _rule_row("rules", f"rsqrt N={n} C=64 56x56", "rsqrt", lambda: ((act().abs() + 0.1,), {}), ctx),
        _rule_row("rules", f"flip dims (2, 3) N={n} C=64 56x56", "flip", lambda: ((act(),), {"dims": (2, 3)}), ctx),
        _rule_row("rules", f"roll shifts (1, -2) N={n} C=64 56x56", "roll",
                  lambda: ((act(),), {"shifts": (1, -2), "dims": (2, 3)}), ctx),
        _rule_row("rules", f"linalg.vector_norm dim=-1 ({m * 4}x512)", "vector_norm",
                  lambda: ((_randn(m * 4, 512, device=d),), {"dim": -1}), ctx),
        _rule_row("rules", f"prod dim=1 ({m * 4}x16)", "prod",
                  lambda: ((_randn(m * 4, 16, device=d).abs() + 0.5,), {"dim": 1}), ctx),
        _rule_row("rules", f"topk k=5 ({m * 4}x1000)", "topk", lambda: ((_randn(m * 4, 1000, device=d),), {"k": 5}), ctx),
    ]


# ---------------------------------------------------------------------------------
# check latency: gradcheck_kit.check vs torch.autograd.gradcheck(fast_mode=True), float64
# ---------------------------------------------------------------------------------

def group_check(ctx: Ctx) -> list[Row]:
    goal = ">= 10x faster"
    name = "check() on seed002 conv->relu->conv vs gradcheck(fast_mode) float64"
    try:
        from gradcheck_kit import check
    except Exception as e:
        return [na("check", name, goal, _one_line(e))]
    case = _load_case("conv_relu_conv.py")
    small = ctx.quick
    torch.manual_seed(0)
    inp = case.inputs(ctx.device, torch.float32, small=small)
    size = "x " + "x".join(map(str, inp["x"].shape))
    try:
        t_check = time_once(lambda: check(case.loss, inp, case.manual, wrt=case.wrt),
                            device=ctx.device, repeats=1 if not small else 3, warmup=1)
        rep = check(case.loss, inp, case.manual, wrt=case.wrt)
        check_ok = rep.ok
    except Exception as e:
        return [na("check", name, goal, _one_line(e))]
    i64 = {k: v.double() for k, v in inp.items()}
    leaves = tuple(i64[n].clone().requires_grad_() for n in case.wrt)
    rest = {k: v for k, v in i64.items() if k not in case.wrt}

    def fn(*ts):
        return case.loss(**dict(zip(case.wrt, ts)), **rest)

    gc_ok = None

    def run_gc():
        nonlocal gc_ok
        gc_ok = torch.autograd.gradcheck(fn, leaves, fast_mode=True, raise_exception=False)

    t_gc = time_once(run_gc, device=ctx.device, repeats=1)
    speed = t_gc / t_check
    return [Row("check", f"{name} ({size}{', --quick size' if small else ''})", goal, f"{speed:.1f}x faster",
                speed >= 10, t_check * 1e3, t_gc * 1e3, speed,
                note=f"check {t_check:.2f} s (float32, ok={check_ok}); gradcheck fast_mode {t_gc:.2f} s "
                     f"(float64, returned {gc_ok})")]


# ---------------------------------------------------------------------------------
# derive: exact symbolic verification time of conv2d
# ---------------------------------------------------------------------------------

def group_derive(ctx: Ctx) -> list[Row]:
    goal = "1x2x8x8 < 2 s"
    name = "derive.verify('conv2d') exact Jacobian check"
    try:
        from gradcheck_kit import derive
    except Exception as e:
        return [na("derive", name, goal, _one_line(e))]
    shapes = ((1, 1, 4, 4), (1, 2, 8, 8)) if ctx.quick else ((1, 1, 4, 4), (1, 2, 8, 8), (1, 2, 12, 12), (1, 2, 16, 16))
    try:
        res = derive.time_verify_conv2d(shapes=shapes)
    except Exception as e:
        return [na("derive", name, goal, _one_line(e))]
    by = {tuple(r["shape"]): r for r in res}
    main = by.get((1, 2, 8, 8))
    growth = ""
    if len(res) >= 3:
        xs = [math.log(r["input_elements"]) for r in res[1:]]
        ys = [math.log(r["seconds"]) for r in res[1:]]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
        growth = f"; time ~ elements^{slope:.2f}"
    detail = ", ".join(f"{'x'.join(map(str, r['shape']))}: {r['seconds']:.2f} s" for r in res)
    ok = main is not None and main["seconds"] < 2 and all(r["ok"] for r in res)
    return [Row("derive", name + " (1x2x8x8, O=3, 3x3)", goal, f"{main['seconds']:.2f} s" if main else "n/a",
                ok, note=detail + growth, extra={"timings": res})]


# ---------------------------------------------------------------------------------
# CLI start-up
# ---------------------------------------------------------------------------------

def _cli_cmd() -> tuple[list[str], str]:
    exe = shutil.which("gradcheck-kit")
    if exe:
        return [exe], "console script"
    return [sys.executable, "-c", "import sys; from gradcheck_kit.cli import main; sys.exit(main())"], \
        "python -c 'from gradcheck_kit.cli import main' (console script not installed)"


def _wall(cmd: list[str], repeats: int) -> tuple[float, int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    ts, rc = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), rc


def group_cli(ctx: Ctx) -> list[Row]:
    cmd, how = _cli_cmd()
    reps = 3 if ctx.quick else 5
    heavy = 1 if ctx.quick else 3                  # runs that import torch (about 2 s each)
    t_help, rc_help = _wall(cmd + ["--help"], reps)
    t_torch, _ = _wall([sys.executable, "-c", "import torch"], heavy)
    t_py, _ = _wall([sys.executable, "-c", "pass"], reps)
    rows = [Row("cli", "gradcheck-kit --help", "< 0.3 s", f"{t_help:.2f} s", rc_help == 0 and t_help < 0.3,
                note=f"{how}; exit {rc_help}; bare python start {t_py:.2f} s")]
    t_check, rc_check = _wall(cmd + ["check", str(CASES / "pow_log.py")], heavy)
    rows.append(Row("cli", "gradcheck-kit check cases/pow_log.py", "(report)", f"{t_check:.2f} s",
                    None if rc_check == 0 else False,
                    note=f"exit {rc_check}; `python -c 'import torch'` alone takes {t_torch:.2f} s "
                         f"({t_torch / t_check:.0%} of it)"))
    return rows


# ---------------------------------------------------------------------------------
# the rule engine: whole models on the generic rules (manual.functional / use_rules)
# ---------------------------------------------------------------------------------

ENGINE = {
    "engine_p3": "seed002_p3 conv -> relu -> conv through use_rules (generic rules, not the composite)",
    "engine_resnet": "ResNet-style training step under use_rules (conv-bn-relu-maxpool, 2x conv-bn-relu, "
                     "avgpool, linear, cross_entropy)",
}


def _resnet_small(device):
    import torch.nn as nn

    def cbr(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    torch.manual_seed(0)
    return nn.Sequential(*cbr(3, 32), nn.MaxPool2d(3, stride=2, padding=1), *cbr(32, 64), *cbr(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).to(device)


def engine_variants(row_id: str, device: str, quick: bool = False) -> dict[str, Callable]:
    """``{"manual": fn, "autograd": fn}``: the same step under ``use_rules(strict=True)`` and plain."""
    import copy

    import torch.nn.functional as F

    from gradcheck_kit.manual import use_rules

    if row_id == "engine_p3":
        case = _load_case("conv_relu_conv.py")
        inp = case.make_inputs(device, torch.float32, seed=0)
        wrt = case.wrt
        leaves = {k: (v.detach().requires_grad_() if k in wrt else v) for k, v in inp.items()}

        def autograd():
            out = case.loss(**leaves).sum()
            return out, torch.autograd.grad(out, [leaves[n] for n in wrt])

        def manual():
            with use_rules(strict=True):
                out = case.loss(**leaves).sum()
            return out, torch.autograd.grad(out, [leaves[n] for n in wrt])

        return {"manual": manual, "autograd": autograd}

    n = 8 if quick else 32
    model_r = _resnet_small(device)
    model_a = copy.deepcopy(model_r)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 64, 64, generator=gen).to(device)
    t = torch.randint(0, 10, (n,), generator=gen).to(device)

    def step(model, rules):
        def run():
            for p in model.parameters():
                p.grad = None
            if rules:
                with use_rules(strict=True):
                    loss = F.cross_entropy(model(x), t)
            else:
                loss = F.cross_entropy(model(x), t)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(1e-3 * p.grad)
            return loss
        return run

    return {"manual": step(model_r, True), "autograd": step(model_a, False)}


def group_engine(ctx: Ctx) -> list[Row]:
    rows = []
    goals = {"engine_p3": ("<= 1.10x time, <= 1.0x memory", 1.10), "engine_resnet": ("<= 1.25x time, <= 1.0x memory", 1.25)}
    for row_id, what in ENGINE.items():
        goal, limit = goals[row_id]
        try:
            v = engine_variants(row_id, ctx.device, ctx.quick)
        except Exception as e:
            rows.append(na("engine", what, goal, _one_line(e)))
            continue
        t = time_pair(v["manual"], v["autograd"], device=ctx.device, repeats=ctx.repeats, warmup=2)
        mem, mem_note = _peak_pair(row_id, ctx, v)
        size = " (--quick: batch 8)" if ctx.quick and row_id == "engine_resnet" else ""
        rows.append(Row("engine", what + size, goal, f"{t.ratio:.2f}x", t.ratio <= limit, t.a_s * 1e3, t.b_s * 1e3,
                        t.ratio, mem, None if mem is None else mem <= 1.0,
                        f"{mem_note}; pair-ratio spread {t.spread:.0%} over {t.repeats} pairs"))
    return rows


def variants(row_id: str, device: str, quick: bool) -> dict[str, Callable]:
    """The callables of any row with a peak-memory measurement (used by ``run.py --_peak``)."""
    if row_id in ENGINE:
        return engine_variants(row_id, device, quick)
    return seed002_variants(row_id, device, quick)


GROUPS: dict[str, Callable[[Ctx], list[Row]]] = {
    "seed002": group_seed002,
    "engine": group_engine,
    "conv": group_conv,
    "rules": group_other_rules,
    "check": group_check,
    "derive": group_derive,
    "cli": group_cli,
}
