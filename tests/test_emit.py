"""gradcheck_kit.emit: the written backward imports only torch, runs standalone, and equals autograd
(first and second order); verification catches planted template bugs; cases/emitted/ does not drift.

Regenerate cases/emitted/ after changing emit or a seed-002 case:  python tests/test_emit.py
"""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import emit
from gradcheck_kit.casefile import load_case
from gradcheck_kit.cli import main
from gradcheck_kit.emit import backward_source
from gradcheck_kit.errors import EmitError, EmitUnsupportedError, EmitVerificationError, GradcheckKitError

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"
EMITTED = CASES / "emitted"
SEED002 = ("strided_conv_loss", "conv_then_strided_loss", "conv_relu_conv")


def _r(*shape):
    return torch.randn(shape, dtype=torch.float64)        # shape () too: a 0-d input


# -- samples: (name, loss, input shapes); one generic test consumes them all ----------------------
# Each exercises templates the shipped cases do not: conv geometry (every weight-gradient
# formulation, output padding, asymmetric "same" padding, groups, depthwise, 1-d, 3-d), max-pool's
# scatter, indexing, broadcasting, matmul shapes, reductions, constants.
SAMPLES = [
    ("conv2d[s2,p1,op1,bias]", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1).pow(2).sum(),
     dict(x=(2, 2, 6, 6), w=(3, 2, 3, 3), b=(3,))),
    ("conv2d[same,even]", lambda x, w: F.conv2d(x, w, padding="same").tanh().sum(),
     dict(x=(1, 2, 5, 6), w=(3, 2, 2, 4))),
    ("conv2d[s2,p1,d2,g2]", lambda x, w: F.conv2d(x, w, stride=2, padding=1, dilation=2, groups=2).pow(2).sum(),
     dict(x=(2, 4, 8, 7), w=(4, 2, 3, 3))),
    ("conv2d[depthwise]", lambda x, w: F.conv2d(x, w, groups=3, padding=1).pow(2).sum(),
     dict(x=(1, 3, 5, 5), w=(6, 1, 3, 3))),
    ("conv2d[few-out,unfold g]", lambda x, w: F.conv2d(F.relu(x), w, padding="same").pow(2).sum(),
     dict(x=(2, 10, 5, 6), w=(1, 10, 3, 3))),
    # relu's cotangent is the input x itself (g_a1 = x): the mask must not be applied in place
    ("relu[aliased cotangent]", lambda x: (F.relu(x) * x).sum() + F.relu(x - 1).pow(2).sum(), dict(x=(3, 4))),
    ("conv2d[k1,s2]", lambda x, w: F.conv2d(x, w, stride=2).pow(2).sum(), dict(x=(2, 3, 5, 4), w=(2, 3, 1, 1))),
    ("conv2d[patches,crop]", lambda x, w: F.conv2d(x, w, stride=(3, 2)).pow(2).sum(),
     dict(x=(1, 2, 7, 5), w=(2, 2, 3, 2))),
    ("conv1d[s2,p1]", lambda x, w: F.conv1d(x, w, stride=2, padding=1).pow(2).sum(), dict(x=(2, 2, 8), w=(3, 2, 3))),
    ("conv1d[shifted,p1]", lambda x, w: F.conv1d(x, w, padding=1).pow(2).sum(), dict(x=(2, 2, 8), w=(3, 2, 3))),
    ("conv3d[shifted,k2]", lambda x, w: F.conv3d(x, w, padding=(1, 0, 1)).pow(2).sum(),
     dict(x=(2, 2, 3, 4, 3), w=(2, 2, 2, 2, 2))),
    ("conv3d[s2,p1]", lambda x, w: F.conv3d(x, w, stride=2, padding=1).pow(2).sum(),
     dict(x=(1, 2, 4, 4, 3), w=(2, 2, 3, 3, 3))),
    ("max_pool2d[overlap]", lambda x: F.max_pool2d(x, 3, stride=1, padding=1).pow(2).sum(), dict(x=(1, 2, 5, 5))),
    ("linear->sigmoid->mean", lambda x, w, b: F.linear(x, w, b).sigmoid().mean(), dict(x=(4, 3), w=(5, 3), b=(5,))),
    ("getitem+keepdim", lambda x: (x[1:3, 0] * x[:, 2:].sum(1, keepdim=True)[0:2, :]).exp().sum(), dict(x=(4, 5))),
    ("div[broadcast]", lambda a, b: (a / (b.abs() + 1)).sum() + (2 / (b.abs() + 1)).sum() + (a / 3).sum(),
     dict(a=(3, 4), b=(4,))),
    ("expand/permute/t", lambda a, b: (a.expand(3, 4) * b.permute(1, 0)).sum() + b.t().sin().sum(),
     dict(a=(1, 4), b=(4, 3))),
    ("matmul[batched]+bmm+dot", lambda a, b, v: (a @ b).pow(2).sum() + torch.bmm(a, b.expand(2, 4, 5)).sum()
     + torch.dot(v, v), dict(a=(2, 3, 4), b=(4, 5), v=(3,))),
    ("rsub,pow3,sqrt,abs,log", lambda a: (1 - a).pow(3).sum() + (a.abs() + 1).sqrt().log().sum(), dict(a=(5,))),
    ("flatten/unsqueeze/mean", lambda x: x.flatten(1).unsqueeze(0).squeeze(0).pow(2).mean(dim=1).sum()
     + x.mean(dim=(0, 2), keepdim=True).pow(2).sum(), dict(x=(2, 3, 4))),
    # the elementwise family: each derivative written from the input or (use_out) from the output
    ("rsqrt,reciprocal,log1p,square,expm1", lambda x: (x.abs() + 1).rsqrt().reciprocal().log1p().square().sum()
     + (x.expm1() * x).sum(), dict(x=(2, 3))),
    ("tan,atan,sinh,cosh,erf", lambda x: ((0.5 * x).tan().sinh() + torch.arctan(x).pow(2) + torch.erf(x).cosh()).sum()
     + (x.erf() * x.atan()).sum(), dict(x=(2, 3))),
    # rearrangements: the adjoint undoes each (flip, roll by -s, .T/.mT) or sums the copies (repeat)
    ("clone,flip,roll,T,mT", lambda x, y: (x.T.clone() * y.mT[0]).sum() + x.flip(0, 1).roll(1, 0).pow(2).sum()
     + torch.flip(x, dims=(1,)).roll((1, -2), (0, 1)).sin().sum() + torch.roll(x, 2).pow(3).sum()
     + (y.mT @ y).pow(2).sum() + torch.clone(y).roll(-1, dims=2).exp().sum(), dict(x=(2, 3), y=(2, 2, 3))),
    ("repeat", lambda x, y: x.repeat(2, 1, 3).pow(2).sum() + x.repeat((1, 1)).exp().sum()
     + (y.repeat(1, 2, 1) * y.repeat(1, 2, 1).tanh()).sum(), dict(x=(2, 3), y=(2, 2, 3))),
    ("0-d: flip(()),roll,repeat(()),repeat(3)", lambda x: x.clone().flip(()).roll(1).repeat(3).pow(2).sum()
     + x.repeat(2, 2).pow(2).sum() + x.repeat(()).exp(), dict(x=())),
    ("addmm[bias row,column;beta,alpha]", lambda c, A, B, C: torch.addmm(c, A, B).tanh().sum()
     + torch.addmm(C, A, B, beta=0.5, alpha=-2).pow(2).sum() + C.addmm(A, B).sum() + torch.outer(c, c).sin().sum(),
     dict(c=(4,), A=(3, 2), B=(2, 4), C=(3, 1))),
    ("constant made inside", lambda x: (x * torch.linspace(0, 1, x.numel(), dtype=x.dtype).view_as(x)).sum(),
     dict(x=(2, 3))),
]


def _inputs(shapes, seed=0):
    torch.manual_seed(seed)
    return {k: _r(*s) for k, s in shapes.items()}


def _load(source: str, name: str = "emitted"):
    """Execute the emitted source in a fresh namespace, as a user pasting it would."""
    ns: dict = {"__name__": name}
    exec(compile(source, f"<{name}>", "exec"), ns)
    return ns["loss_and_grads"]


def _imports(source: str) -> set:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def _assert_torch_only(source: str) -> None:
    assert _imports(source) == {"torch", "torch.nn.functional"}, _imports(source)
    for banned in ("autograd", "_backward", ".detach(", ".data", "gradcheck_kit", ".backward("):
        assert banned not in source.split('"""', 2)[-1], banned


def _assert_equals_autograd(fn, loss, inputs, wrt):
    """The module's loss, gradients and Hessian-vector products against autograd's, float64, 1e-10."""
    xs = {k: v.detach().clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    value, grads = fn(**xs)
    ref = loss(**xs).sum()
    ref_grads = torch.autograd.grad(ref, [xs[k] for k in wrt], create_graph=True)
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=0)
    gen = torch.Generator().manual_seed(3)
    vs = [torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device) for g in ref_grads]
    for k, rg in zip(wrt, ref_grads):
        torch.testing.assert_close(grads[k], rg, rtol=1e-10, atol=1e-10 * float(rg.detach().abs().max()) + 1e-300)
    # second order: d/dx <grads, v> of the emitted gradients vs autograd's double backward
    mine = sum((grads[k] * v).sum() for k, v in zip(wrt, vs))
    theirs = sum((g * v).sum() for g, v in zip(ref_grads, vs))
    leaves = [xs[k] for k in wrt]
    h_mine = torch.autograd.grad(mine, leaves, allow_unused=True) if mine.requires_grad else [None] * len(wrt)
    h_ref = torch.autograd.grad(theirs, leaves, allow_unused=True) if theirs.requires_grad else [None] * len(wrt)
    for a, b, x in zip(h_mine, h_ref, leaves):
        a = torch.zeros_like(x) if a is None else a
        b = torch.zeros_like(x) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()) + 1e-300)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name,loss,shapes", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_sample_emits_torch_only_code_equal_to_autograd(name, loss, shapes):
    inputs = _inputs(shapes)
    before = {k: v.clone() for k, v in inputs.items()}
    source = backward_source(loss, inputs)
    _assert_torch_only(source)
    _assert_equals_autograd(_load(source), loss, inputs, tuple(inputs))
    for k, v in inputs.items():   # the caller's tensors are untouched
        assert torch.equal(v, before[k]) and not v.requires_grad


def test_every_template_is_exercised_or_listed():
    covered = {"add", "sub", "mul", "div", "pow", "neg", "abs", "log", "exp", "sqrt", "sin", "tanh", "sigmoid",
               "relu", "sum", "mean", "norm", "matmul", "bmm", "dot", "linear", "view", "reshape", "flatten",
               "squeeze", "unsqueeze", "expand", "permute", "t", "getitem", "conv1d", "conv2d", "conv3d", "unfold",
               "max_pool2d", "reciprocal", "rsqrt", "square", "log1p", "expm1", "tan", "atan", "sinh", "cosh",
               "erf", "clone", "flip", "roll", "T", "mT", "repeat", "addmm", "outer"}
    # cos, mm, outer and transpose are one-line twins of sin, matmul and t: exercised here directly
    extra = [(lambda a, b: (torch.mm(a, b).cos().sum() + torch.outer(a[0], b[:, 0]).pow(2).sum()
                            + a.transpose(0, 1).pow(2).sum()), dict(a=(3, 4), b=(4, 2)))]
    for loss, shapes in extra:
        inputs = _inputs(shapes)
        _assert_equals_autograd(_load(backward_source(loss, inputs)), loss, inputs, tuple(inputs))
    assert set(emit.supported_ops()) == covered | {"cos", "mm", "transpose"}


# -- the shipped cases ------------------------------------------------------------------------------

def _case_inputs(case):
    torch.manual_seed(0)
    try:
        return case.inputs("cpu", torch.float64, small=True)
    except TypeError:
        return case.make_inputs("cpu", torch.float64)


@pytest.mark.parametrize("stem", ["pow_log", "dag_weight_sharing", "tanh_mlp", "unfold_custom_conv", *SEED002])
def test_shipped_case_emits(stem):
    case = load_case(CASES / f"{stem}.py")
    inputs = _case_inputs(case)
    wrt = case.wrt or tuple(k for k, v in inputs.items() if v.is_floating_point())
    source = backward_source(case.loss, inputs, case.wrt)
    _assert_torch_only(source)
    _assert_equals_autograd(_load(source), case.loss, inputs, wrt)


@pytest.mark.cuda
def test_emits_and_verifies_on_cuda():
    case = load_case(CASES / "conv_relu_conv.py")
    inputs = {k: v.cuda() for k, v in _case_inputs(case).items()}
    source = backward_source(case.loss, inputs, case.wrt)
    assert source == emitted_source("conv_relu_conv")     # the module does not depend on the device
    _assert_equals_autograd(_load(source), case.loss, inputs, case.wrt)


def test_weight_sharing_gets_one_commented_term_per_use():
    case = load_case(CASES / "dag_weight_sharing.py")
    source = backward_source(case.loss, _case_inputs(case), case.wrt)
    block = source[source.index("# w1 is used 2 times"):].splitlines()[1:3]
    assert block[0].lstrip().startswith("g_w1 = (") and block[1].lstrip().startswith("+ ")
    assert "# w1 in x3 = w1 @" in block[0] and "# w1 in x1 = w1 @ x0" in block[1]
    assert "x1 = w1 @ x0" in source    # the user's variable names


def test_custom_function_is_refused_with_its_name_and_call_site():
    case = load_case(CASES / "custom_function_fd.py")
    with pytest.raises(EmitUnsupportedError, match=r"custom_function_fd\.py:\d+: SharpSoftplus\.apply is a custom"):
        backward_source(case.loss, case.make_inputs("cpu", torch.float64))


# -- cases/emitted: seed 002's answers, regenerated here -------------------------------------------

def emitted_source(stem: str) -> str:
    """The module cases/emitted/<stem>.py holds: the case at its small sizes, seed 0."""
    case = load_case(CASES / f"{stem}.py")
    return backward_source(case.loss, _case_inputs(case), case.wrt)


@pytest.mark.parametrize("stem", SEED002)
def test_emitted_seed002_module_matches_and_runs_standalone(stem):
    path = EMITTED / f"{stem}.py"
    fresh = emitted_source(stem)
    assert path.exists() and path.read_text() == fresh, (
        f"{path.relative_to(ROOT)} drifted from what emit writes now; regenerate: python tests/test_emit.py")
    spec = importlib.util.spec_from_file_location(f"emitted_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _assert_torch_only(path.read_text())
    case = load_case(CASES / f"{stem}.py")
    _assert_equals_autograd(module.loss_and_grads, case.loss, _case_inputs(case), case.wrt)


def test_emitted_modules_run_in_a_bare_interpreter():
    """python -I: no gradcheck_kit imported, nothing but torch; each module returns finite gradients."""
    shapes = {}
    for stem in SEED002:
        case = load_case(CASES / f"{stem}.py")
        shapes[stem] = {k: tuple(v.shape) for k, v in _case_inputs(case).items()}
    code = (
        "import runpy, sys, torch\n"
        f"for stem, shapes in {shapes!r}.items():\n"
        f"    ns = runpy.run_path({str(EMITTED)!r} + '/' + stem + '.py')\n"
        "    value, grads = ns['loss_and_grads'](**{k: torch.randn(s, dtype=torch.float64) for k, s in shapes.items()})\n"
        "    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads.values()), stem\n"
        "assert not [m for m in sys.modules if m.startswith('gradcheck_kit')], 'gradcheck_kit was imported'\n")
    subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd="/")


def test_emitted_conv_relu_conv_reads_as_the_explicit_backward():
    text = (EMITTED / "conv_relu_conv.py").read_text()
    body = text[text.index("# backward"):]
    assert body.count("F.conv_transpose2d(") == 3          # every input-side gradient: a transposed conv
    assert "g_z = g_z_2.mul_(z_2.sign())" in body          # the ReLU mask 1[z > 0] = sign(relu(z)), in place
    code = text.split('"""', 2)[2]                          # after the module docstring
    assert "autograd" not in code and ".backward(" not in code and "_backward" not in code
    assert "torch.bmm(" in body                            # the weight gradients, written out
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    assert lines[lines.index("z_2 = F.relu(z)") + 1] == "del z"            # relu's input is not kept


def test_dead_tensors_are_deleted_after_their_last_use():
    """Large intermediates are deleted once dead (their memory reused); never an input, never before a use."""
    loss = lambda x, w: F.conv2d(F.relu(F.conv2d(x, w, padding=1)), w, padding=1).pow(2).sum()   # noqa: E731
    inputs = _inputs(dict(x=(2, 3, 40, 40), w=(3, 3, 3, 3)))
    source = backward_source(loss, inputs)
    fn = ast.parse(source).body[-1]
    deleted = {}
    for i, st in enumerate(fn.body):
        if isinstance(st, ast.Delete):
            for t in st.targets:
                deleted[t.id] = i
        for node in ast.walk(st):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                assert node.id not in deleted, f"{node.id} read after its del"
    assert deleted and not set(deleted) & set(inputs)
    assert {"z1", "g_a1"} <= set(deleted)                  # a forward value, the in-place ReLU's cotangent
    assert "g_a1.mul_(a1.sign())" in source                # owned (a fresh conv_transpose2d): in place
    _assert_equals_autograd(_load(source), loss, inputs, tuple(inputs))


# -- planted bugs: verification must catch each; the correct twin passes ---------------------------

def _tanh_case():
    inputs = _inputs(dict(x=(3, 4), w=(4, 2)))
    return (lambda x, w: torch.tanh(x @ w).pow(2).sum()), inputs


def _plant(monkeypatch, op, backward):
    monkeypatch.setitem(emit._OPS, op, emit._Op(emit._OPS[op].forward, backward, emit._OPS[op].tensors,
                                                emit._OPS[op].check, emit._OPS[op].activation))


def test_planted_first_order_bug_is_caught(monkeypatch):
    loss, inputs = _tanh_case()
    backward_source(loss, inputs)                           # twin: the real template passes
    _plant(monkeypatch, "tanh", emit._unary(lambda y: f"1 + {y} * {y}", "wrong sign", use_out=True))
    with pytest.raises(EmitVerificationError, match=r"gradient of x differs from autograd"):
        backward_source(loss, inputs)


def test_planted_second_order_bug_is_caught(monkeypatch):
    """Right values, wrong graph: tanh' computed from detached copies."""
    loss, inputs = _tanh_case()
    _plant(monkeypatch, "tanh", emit._unary(lambda y: f"(1 - {y}.detach() * {y}.detach())",
                                            "values right, no graph through tanh'", use_out=True))
    with pytest.raises(EmitVerificationError, match=r"second derivative of (x|w) differs"):
        backward_source(loss, inputs)


def test_planted_conv_output_padding_bug_is_caught(monkeypatch):
    loss = lambda x, w: F.conv2d(x, w, stride=2, padding=1).pow(2).sum()    # noqa: E731
    inputs = _inputs(dict(x=(1, 1, 6, 6), w=(1, 1, 3, 3)))
    good = backward_source(loss, inputs)
    assert "output_padding=1" in good
    real = emit._conv_input_grad
    monkeypatch.setattr(emit, "_conv_input_grad",
                        lambda *a: real(*a).replace("output_padding=1", "output_padding=0"))
    with pytest.raises(EmitVerificationError, match=r"gradient for .x. has shape \(1, 1, 5, 5\)"):
        backward_source(loss, inputs)


def test_value_frozen_from_item_is_caught_at_the_nearby_point():
    x = {"x": _r(4)}
    backward_source(lambda x: (x / 3.0).pow(2).sum(), x)    # twin: a true constant
    with pytest.raises(EmitVerificationError, match="nearby point"):
        backward_source(lambda x: (x / x.abs().sum().item()).pow(2).sum(), x)


# -- bad input: one sentence naming the op and its call site ----------------------------------------

def _no_grad_mean(x):
    with torch.no_grad():
        return x.mean()


def _setitem_constant(x):
    c = torch.zeros(4, dtype=x.dtype)
    c[0] = 1.0
    return (x * c).sum()


@pytest.mark.parametrize("loss,pattern", [
    (lambda x: F.softmax(x, 0).pow(2).sum(), r"test_emit\.py:\d+: F\.softmax has no emission template"),
    (lambda x: x.view(2, 2).mH.sum(), r"test_emit\.py:\d+: Tensor\.mH has no emission template"),
    (lambda x: F.relu(x * 1, inplace=True).sum(), r"test_emit\.py:\d+: relu writes in place"),
    (lambda x: (x - _no_grad_mean(x)).sum(), r"test_emit\.py:\d+: mean runs with gradients disabled"),
    (_setitem_constant, r"test_emit\.py:\d+: \S+ writes into a tensor in place"),
    (lambda x: (x * torch.ones(50, dtype=torch.float64)[:4]).sum(), None),   # twin: made inside, fine
])
def test_unsupported_ops_are_named_with_their_call_site(loss, pattern):
    inputs = {"x": _r(4)}
    if pattern is None:
        backward_source(loss, inputs)
        return
    with pytest.raises(EmitUnsupportedError, match=pattern) as info:
        backward_source(loss, inputs)
    assert isinstance(info.value, (EmitError, GradcheckKitError)) and "\n" not in str(info.value)


def test_names_never_collide_with_the_inputs():
    """An input called g_x next to x: the gradient names step aside, the dict keys stay the input names."""
    loss = lambda x, g_x, w: (F.conv2d(x, w, padding=1) * g_x).sum() + x.sum()    # noqa: E731
    inputs = _inputs(dict(x=(1, 2, 4, 4), g_x=(1, 3, 4, 4), w=(3, 2, 3, 3)))
    source = backward_source(loss, inputs)
    _assert_equals_autograd(_load(source), loss, inputs, tuple(inputs))


def test_bad_arguments_raise_kit_errors():
    with pytest.raises(EmitError, match="not among the inputs"):
        backward_source(lambda x: x.sum(), {"x": _r(2)}, wrt=("y",))
    with pytest.raises(EmitError, match="does not depend on"):
        backward_source(lambda x, y: y.pow(2).sum(), {"x": _r(2), "y": _r(2)}, wrt=("x",))


# -- the CLI ----------------------------------------------------------------------------------------

def test_cli_prints_writes_and_restricts(tmp_path, capsys):
    assert main(["emit", str(CASES / "pow_log.py")]) == 0
    out = capsys.readouterr().out
    _assert_torch_only(out)
    assert 'return loss, {"t": g_t, "u": g_u}' in out
    target = tmp_path / "dag.py"
    assert main(["emit", str(CASES / "dag_weight_sharing.py"), "-o", str(target), "--wrt", "w1"]) == 0
    assert 'return loss, {"w1": g_w1}' in target.read_text()
    assert "g_w2" not in target.read_text()                 # only what --wrt asks for


def test_cli_bad_input_exits_2_with_one_line(capsys):
    assert main(["emit", str(CASES / "custom_function_fd.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: custom_function_fd.py:") and "SharpSoftplus" in err[0]
    assert main(["emit", str(CASES / "pow_log.py"), "--wrt", "nope"]) == 2
    assert main(["emit", str(CASES / "nothing_here.py")]) == 2


def test_cli_verification_failure_exits_1_and_writes_nothing(monkeypatch, tmp_path, capsys):
    _plant(monkeypatch, "log", emit._unary(lambda x: f"2 / {x}", "wrong"))
    target = tmp_path / "out.py"
    assert main(["emit", str(CASES / "pow_log.py"), "-o", str(target)]) == 1
    assert not target.exists()
    assert capsys.readouterr().err.startswith("error: loss() in pow_log.py: at the inputs the emitted gradient of u")


def test_cli_help_lists_emit_without_importing_torch():
    code = ("import sys, contextlib, io\nfrom gradcheck_kit.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    main(['--help'])\n"
            "assert 'emit' in buf.getvalue() and 'torch' not in sys.modules, sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


if __name__ == "__main__":   # regenerate cases/emitted/
    EMITTED.mkdir(exist_ok=True)
    for stem in SEED002:
        (EMITTED / f"{stem}.py").write_text(emitted_source(stem))
        print(f"wrote {EMITTED.relative_to(ROOT) / (stem + '.py')}")


def test_product_comments_name_each_factors_own_derivative():
    a, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    src = backward_source(lambda a, b: a * b, {"a": a, "b": b})
    lines = {ln.split("=")[0].strip(): ln for ln in src.splitlines() if ln.strip().startswith(("g_a =", "g_b ="))}
    assert "d(a b)/da = b" in lines["g_a"] and "d(a b)/db = a" in lines["g_b"], src


def test_a_constant_cotangent_is_materialised_once():
    a, b = torch.randn(3, 1, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    src = backward_source(lambda a, b: a * b, {"a": a, "b": b})
    assert src.count("torch.ones_like(") == 1, src
