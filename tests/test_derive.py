"""gradcheck_kit.derive: exact Jacobians, the lecture's worked examples, and the exact check of every rule.

Orientation: the lecture (seed 000, 4.4) defines ``(x ⊛ u)_i = sum_j x_{i-1+j} u_j``, the
kernel and the signal both visited in increasing index order, i.e. a cross-correlation:
exactly what ``F.conv1d`` computes, with no kernel flip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

from gradcheck_kit import derive, manual
from gradcheck_kit.errors import GradcheckKitError
from gradcheck_kit.cli import main as cli_main
from gradcheck_kit.manual import _symbolic
from gradcheck_kit.manual.registry import Sample
from gradcheck_kit import _cli_derive


def _floats(a) -> np.ndarray:
    return np.vectorize(float, otypes=[float])(np.asarray(a, dtype=object))


# -- the lecture's worked examples -------------------------------------------------------

def test_lecture_conv1d_is_cross_correlation():
    # (1, 2, 3, 4) ⊛ (3, 2) = (3 + 4, 6 + 6, 9 + 8) = (7, 12, 17)
    y = derive.apply("conv1d", torch.tensor([[[1., 2., 3., 4.]]]), torch.tensor([[[3., 2.]]]))
    assert [int(v) for v in y.flat] == [7, 12, 17]
    assert F.conv1d(torch.tensor([[[1., 2., 3., 4.]]]), torch.tensor([[[3., 2.]]])).flatten().tolist() == [7, 12, 17]


def test_issue_example_banded_toeplitz_jacobian():
    J = derive.jacobian("conv1d", inputs={"input": (1, 1, 4), "weight": torch.tensor([[[3., 2.]]])},
                        params={}, wrt="input")
    assert isinstance(J, sympy.MatrixBase) and isinstance(J, sympy.SparseMatrix)
    assert J == sympy.Matrix([[3, 2, 0, 0], [0, 3, 2, 0], [0, 0, 3, 2]])
    # the Jacobian with respect to the kernel is the Hankel matrix of the signal's windows
    Jw = derive.jacobian("conv1d", inputs={"input": torch.tensor([[[1., 2., 3., 4.]]]), "weight": (1, 1, 2)},
                         wrt="weight")
    assert Jw == sympy.Matrix([[1, 2], [2, 3], [3, 4]])


def test_lecture_difference_operator():
    x = torch.tensor([[[0., 0., 0., 0., 1., 2., 3., 4., 4., 4., 4.]]])
    u = torch.tensor([[[-1., 1.]]])
    y = derive.apply("conv1d", x, u)
    assert [int(v) for v in y.flat] == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    J = derive.jacobian("conv1d", inputs={"input": (1, 1, 11), "weight": u}, wrt="input")
    assert J.shape == (10, 11)
    assert J == sympy.Matrix(10, 11, lambda i, j: -1 if j == i else (1 if j == i + 1 else 0))
    # J^T is the transposed convolution: why the input gradient of conv1d is conv_transpose1d
    c = torch.arange(1., 11.).reshape(1, 1, 10)
    JTc = J.T * sympy.Matrix(c.flatten().tolist())
    assert _floats(JTc).flatten().tolist() == F.conv_transpose1d(c, u).flatten().tolist()


def _lecture_loss(t, u):
    # a = t.pow(2).sum() + u.log().sum(), over object arrays
    return (t ** 2).sum() + np.vectorize(sympy.log, otypes=[object])(u).sum()


def test_lecture_gradient_of_pow_sum_plus_log_sum():
    t, u = _symbolic.symbols("t", (3,)), _symbolic.symbols("u", (2,))
    grad = derive.gradient_of(_lecture_loss, {"t": (3,), "u": (2,)}, wrt=("t", "u"))
    assert grad == sympy.Matrix([2 * t[0], 2 * t[1], 2 * t[2], 1 / u[0], 1 / u[1]])
    # at the lecture's point: (tensor([2., 4., 8.]), tensor([0.1000, 0.0500])), exactly
    at = grad.subs({t[0]: 1, t[1]: 2, t[2]: 4, u[0]: 10, u[1]: 20})
    assert list(at) == [2, 4, 8, sympy.Rational(1, 10), sympy.Rational(1, 20)]


def test_lecture_gradient_through_the_rules_symbolic_forwards():
    needed = {"pow", "log", "sum", "add"}
    have = set(derive.symbolic_rules())
    if not needed <= have:
        pytest.skip(f"rules without a symbolic forward yet: {sorted(needed - have)}")

    def a(t, u):
        return derive.apply("add", derive.apply("sum", derive.apply("pow", t, 2)),
                            derive.apply("sum", derive.apply("log", u)))

    t, u = _symbolic.symbols("t", (3,)), _symbolic.symbols("u", (2,))
    grad = derive.gradient_of(a, {"t": (3,), "u": (2,)}, wrt=("t", "u"))
    assert sympy.simplify(grad - sympy.Matrix([2 * t[0], 2 * t[1], 2 * t[2], 1 / u[0], 1 / u[1]])) == \
        sympy.zeros(5, 1)


def test_gradient_of_a_scalar_rule_and_jacobian_of_a_vector_one():
    if "mse_loss" not in derive.symbolic_rules():
        pytest.skip("mse_loss has no symbolic forward yet")
    g = derive.gradient("mse_loss", {"input": (3,), "target": torch.tensor([1., 2., 3.])}, wrt="input")
    x = _symbolic.symbols("input", (3,))
    assert sympy.simplify(g - sympy.Matrix([sympy.Rational(2, 3) * (x[i] - (i + 1)) for i in range(3)])) == \
        sympy.zeros(3, 1)
    with pytest.raises(GradcheckKitError, match="scalar"):
        derive.gradient("conv1d", {"input": (1, 1, 4), "weight": (1, 1, 2)}, wrt="input")


def test_latex_and_pretty_show_forward_and_jacobian():
    inputs = {"input": (1, 1, 4), "weight": torch.tensor([[[3., 2.]]])}
    tex = derive.latex("conv1d", inputs, wrt="input")
    assert tex.startswith("y = ") and "\\frac{\\partial y}" in tex and "3 & 2 & 0 & 0" in tex
    text = derive.pretty("conv1d", inputs, wrt="input")
    assert "dy/d(input)" in text and "3  2  0  0" in text


def test_tensor_values_become_exact_rationals_and_integers_stay_integers():
    d = derive.derivation("conv1d", {"input": (1, 1, 3), "weight": torch.tensor([[[0.1, 0.5]]])}, wrt="input")
    assert d.arrays["weight"][0, 0, 0] == sympy.Rational(1, 10)
    arr, is_sym = derive._array_of("target", torch.tensor([1, 0, 2]))
    assert not is_sym and arr.dtype == np.int64


def test_bad_wrt_and_unknown_input_are_errors():
    with pytest.raises(GradcheckKitError, match="wrt"):
        derive.jacobian("conv1d", {"input": (1, 1, 4), "weight": torch.ones(1, 1, 2)}, wrt="weight")
    with pytest.raises(GradcheckKitError, match="no tensor argument"):
        derive.jacobian("conv1d", {"inptu": (1, 1, 4)}, wrt="inptu")
    with pytest.raises(GradcheckKitError, match="no rule named"):
        derive.jacobian("conv1dd", {"input": (1, 1, 4)})


# -- the shared symbolic convolutions against torch ----------------------------------------

_CONV_CASES = [
    # dims, input, weight, params
    (1, (2, 2, 7), (4, 2, 3), dict(stride=2, padding=1, dilation=2)),
    (1, (2, 7), (4, 1, 2), dict(padding="same", groups=2)),
    (2, (1, 4, 5, 6), (4, 2, 2, 3), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    (2, (1, 2, 5, 5), (3, 2, 2, 2), dict(padding="same", dilation=3)),
    (2, (2, 5, 5), (3, 2, 3, 3), dict(padding="valid")),
    (3, (1, 2, 4, 3, 4), (2, 1, 2, 2, 3), dict(stride=(1, 2, 1), padding=(1, 0, 1), groups=2)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dims,xs,ws,params", _CONV_CASES, ids=[f"conv{c[0]}d-{i}" for i, c in enumerate(_CONV_CASES)])
def test_symbolic_conv_matches_torch(dims, xs, ws, params):
    gen = torch.Generator().manual_seed(dims)
    x = torch.randint(-3, 4, xs, generator=gen).double()
    w = torch.randint(-3, 4, ws, generator=gen).double()
    b = torch.randint(-3, 4, (ws[0],), generator=gen).double()
    ref = getattr(F, f"conv{dims}d")(x, w, b, **params)
    got = _symbolic.conv(x, w, b, dims=dims, **params)
    assert got.shape == tuple(ref.shape)
    assert np.array_equal(_floats(got), ref.numpy())


_CONVT_CASES = [
    (1, (2, 2, 4), (2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (2, (1, 4, 3, 3), (4, 1, 2, 3), dict(stride=(2, 1), padding=(0, 1), groups=2, dilation=(1, 2))),
    (2, (2, 3, 3), (2, 2, 3, 3), dict(stride=3, output_padding=2)),
    (3, (1, 2, 2, 3, 2), (2, 2, 2, 2, 2), dict(stride=2, padding=1, output_padding=(1, 0, 1))),
]


@pytest.mark.parametrize("dims,xs,ws,params", _CONVT_CASES, ids=[f"convT{c[0]}d-{i}" for i, c in enumerate(_CONVT_CASES)])
def test_symbolic_conv_transpose_matches_torch(dims, xs, ws, params):
    gen = torch.Generator().manual_seed(10 + dims)
    x = torch.randint(-3, 4, xs, generator=gen).double()
    w = torch.randint(-3, 4, ws, generator=gen).double()
    b = torch.randint(-3, 4, (ws[1] * params.get("groups", 1),), generator=gen).double()
    ref = getattr(F, f"conv_transpose{dims}d")(x, w, b, **params)
    got = _symbolic.conv_transpose(x, w, b, dims=dims, **params)
    assert got.shape == tuple(ref.shape)
    assert np.array_equal(_floats(got), ref.numpy())


def test_symbolic_conv_is_sparse_sums_of_products():
    y = _symbolic.conv(_symbolic.symbols("input", (1, 2, 5, 5)), _symbolic.symbols("weight", (3, 2, 3, 3)),
                       None, dims=2, padding=1)
    assert y.shape == (1, 3, 5, 5)
    assert len(y[0, 0, 0, 0].args) == 2 * 2 * 2  # the corner window reads 2x2 of 3x3 per channel
    assert len(y[0, 0, 2, 2].free_symbols) == 2 * 2 * 9


# -- verify: the exact cross-check ------------------------------------------------------------

def _wrong(rule, transform):
    def backward(grad_output, *args, **kwargs):
        grads = rule.backward_impl(grad_output, *args, **kwargs)
        return tuple(transform(g, i) if g is not None else None for i, g in enumerate(grads))

    return dataclasses.replace(rule, backward_impl=backward)


def test_verify_rejects_a_deliberately_wrong_backward():
    rule = manual.get("conv1d")
    sample = rule.samples()[0]
    assert all(r.ok for r in derive.verify(rule, sample))
    # a flipped kernel: the true-convolution mistake (the lecture's operator is not flipped)
    flipped = _wrong(rule, lambda g, i: g.flip(-1) if i == 1 else g)
    res = derive.verify(flipped, sample)
    assert not res[0].ok and res[0].max_abs_err > 1e-3 and "weight" in res[0].worst
    # an error of one part in 1e9 that finite differences could not see
    tiny = _wrong(rule, lambda g, i: g * (1 + 1e-9) if i == 0 else g)
    res = derive.verify(tiny, sample)
    assert not res[0].ok and res[0].errors["weight"] < 1e-13 < res[0].errors["input"]


def test_exact_derivative_at_a_point_equals_sympy_diff_then_subs():
    # verify differentiates each entry by sympy's rules applied over the tree, evaluated
    # exactly on the way; it must agree with building d/ds and substituting
    x, y, z = sympy.symbols("x y z", real=True)
    exprs = [x * y ** 2 + sympy.exp(x * z) / (1 + y ** 2), sympy.log(1 + x ** 2) * sympy.sqrt(2 + z),
             sympy.Piecewise((x * y, x > y), (y ** 3, True)) + sympy.tanh(z * x),
             sympy.Max(x, z) * sympy.Abs(y - z), sympy.erf(x / 3) ** 2 + (x + y) ** sympy.Rational(3, 2)]
    values = {x: sympy.Rational(3, 4), y: sympy.Rational(-1, 2), z: sympy.Rational(5, 8)}
    at = derive._Point(values)
    for e in exprs:
        for s in (x, y, z):
            exact = e.diff(s).xreplace(values).evalf(40)
            assert abs(float(at.d(e, s)) - float(exact)) < 1e-15 * max(1.0, abs(float(exact))), (e, s)


def test_exact_derivative_does_not_rely_on_symbol_identity():
    # sympy's cache may return an equal but distinct Symbol object inside a cached expression
    x = sympy.Symbol("input_0", real=True)
    e = x ** 2 + 3 * x
    sympy.core.cache.clear_cache()
    x2 = sympy.Symbol("input_0", real=True)
    at = derive._Point({x2: sympy.Rational(1, 2)})
    assert at.d(e, x2) == 4 and at.d(x, x2) == 1


def test_verify_needs_a_symbolic_forward():
    rule = dataclasses.replace(manual.get("conv1d"), symbolic=None)
    with pytest.raises(derive.NoSymbolicForwardError, match="no symbolic forward") as e:
        derive.verify(rule)
    assert isinstance(e.value, GradcheckKitError)


def test_verify_skips_big_samples_and_says_so():
    res = derive.verify("conv1d", manual.get("conv1d").samples()[0], max_elements=1)
    assert res[0].skipped and res[0].ok and "too big" in res[0].reason


def test_verify_conv2d_1x2x8x8_is_exact():
    """Its time (0.25 s, goal < 2 s) is measured in benchmarks/ (row "derive"), not asserted here."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    res = derive.verify("conv2d", Sample((x, w, None), {}, "conv2d[1x2x8x8]"))
    assert res[0].ok and res[0].max_abs_err < 1e-13 and res[0].nnz == 108 * 36


def _verify_cases():
    out = []
    for name in derive.symbolic_rules():
        out.append(pytest.param(name, id=name))
    return out


# Per rule, the small samples only (at most 3, each at most 100 differentiable elements),
# so that the whole registry costs a few seconds; `gradcheck-kit derive --verify-all` runs them all.
@pytest.mark.parametrize("name", _verify_cases())
def test_verify_every_symbolic_rule(name):
    rule = manual.get(name)
    samples = rule.samples()
    small = [s for s in samples
             if sum(a.numel() for a, m in zip(s.args, rule.differentiable_mask(s.args)) if m) <= 100][:3]
    if not small:
        pytest.skip(f"{name}: every sample has more than 100 differentiable elements")
    res = derive.verify(name, small)
    bad = [str(r) for r in res if not r.ok]
    assert not bad, "\n".join(bad)


# -- the command line ---------------------------------------------------------------------------

def _run(argv, capsys):
    code = _cli_derive.run(_cli_derive.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_derive_prints_forward_and_jacobian(capsys):
    code, out, err = _run(["conv1d", "--shape", "input=1,1,4", "--shape", "weight=1,1,2",
                           "--value", "weight=3,2", "--wrt", "input"], capsys)
    assert code == 0, err
    assert "3⋅input" in out and "3  2  0  0" in out


def test_cli_derive_latex_and_verify(capsys):
    code, out, err = _run(["derive", "conv2d", "--shape", "input=1,1,4,4", "--shape", "weight=1,1,2,2",
                           "--param", "stride=2", "--param", "padding=(1,0)", "--wrt", "weight",
                           "--latex", "--verify"], capsys)
    assert code == 0, err
    assert "\\frac{\\partial y}" in out and "\\begin{matrix}" in out
    assert "verify:" in out and ": ok" in out


def test_cli_derive_padding_word_and_nested_value(capsys):
    code, out, err = _run(["conv1d", "--shape", "input=1,1,5", "--value", "weight=[[[-1, 1]]]",
                           "--param", "padding=same"], capsys)
    assert code == 0, err
    assert "dy/d(input)" in out


def test_cli_verify_rule_samples(capsys):
    code, out, err = _run(["conv_transpose1d", "--verify", "--max-elements", "60"], capsys)
    assert code == 0, err
    assert "ok" in out


@pytest.mark.parametrize("argv,msg", [
    (["conv1d", "--shape", "input=1,1,__import__('os')"], "not a literal"),
    (["conv1d", "--shape", "input=1,-1,4"], "non-negative"),
    (["conv1d", "--shape", "input=1,1,4", "--param", "stride=__import__('os').system('true')"], "not a literal"),
    (["conv1d", "--shape", "input=1,1,4", "--param", "stride=lambda: 1"], "not a literal"),
    (["conv1d", "--shape", "input=1,1,4", "--param", "strid=2"], "did you mean 'stride'"),
    (["conv1d", "--shape", "input=1,1,4", "--value", "weight=1,x"], "not a literal"),
    (["conv1d", "--shape", "input=1,1,4", "--value", "weight=2**99"], "not a literal"),
    (["conv1d", "--shape", "inptu=1,1,4"], "no tensor argument"),
    (["conv1d", "--shape", "input"], "NAME=VALUE"),
    (["conv1dd", "--shape", "input=1,1,4"], "no rule named"),
    (["conv1d"], "--shape"),
    ([], "RULE"),
    (["conv1d", "--shape", "input=1,1,4", "--value", "weight=[[[1, 2]]]", "--wrt", "weight"], "wrt"),
    (["conv1d", "--shape", "input=1,1,4", "--shape", "weight=1,2,2"], "input channels"),
    (["conv1d", "--shape", "input=1,1,4", "--param", "padding=same"], "needs input 'weight'"),
    (["conv1d", "--shape", "input=1,1,4", "--shape", "weight=1,1,2", "--param", "stride=0"], "stride"),
])
def test_cli_bad_input_exits_2_with_one_error_line(argv, msg, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


def test_cli_parser_rejects_unknown_flag():
    with pytest.raises(SystemExit) as e:
        _cli_derive.parse_args(["conv1d", "--bogus"])
    assert e.value.code == 2


def test_parse_literal_accepts_only_literals():
    p = _cli_derive.parse_literal
    assert p("(1, 2)", what="x") == (1, 2)
    assert p("-0.5", what="x") == -0.5
    assert p("True", what="x") is True and p("None", what="x") is None
    assert p("same", what="x", allow_str=True) == "same" and p("'valid'", what="x", allow_str=True) == "valid"
    for bad in ("__import__('os')", "1+1", "[x for x in ()]", "{'a': 1}", "b'1'", "1j", "'a b'", "(1,)*9"):
        with pytest.raises(GradcheckKitError):
            p(bad, what="x", allow_str=True)
    with pytest.raises(GradcheckKitError):
        p("same", what="x")  # words only where allowed (--param)


# -- size limit, missing parameters, --simplify (issue 13) --------------------------------

def test_cli_refuses_a_big_derivation_before_any_symbolic_work(capsys, monkeypatch):
    from gradcheck_kit import derive

    def boom(*a, **kw):  # the refusal must come from the estimate alone
        raise AssertionError("derivation() ran")

    monkeypatch.setattr(derive, "derivation", boom)
    code = cli_main(["derive", "conv2d", "--shape", "input=1,1,40,40", "--shape", "weight=1,1,3,3", "--wrt", "input"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "1444 output elements x 1609 symbolic inputs = 2323396" in err and "--max-elements 100000" in err


def test_cli_max_elements_sets_the_limit(capsys):
    argv = ["derive", "conv1d", "--shape", "input=1,1,6", "--shape", "weight=1,1,2", "--wrt", "input"]
    assert cli_main(argv + ["--max-elements", "30"]) == 2  # 5 outputs x 8 symbols = 40
    assert "= 40 Jacobian entries" in capsys.readouterr().err
    assert cli_main(argv + ["--max-elements", "40"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv, msg", [
    (["softmax", "--shape", "input=3"], "softmax needs --param dim=..."),
    (["log_softmax", "--shape", "input=3"], "log_softmax needs --param dim=..."),
    (["max_pool2d", "--shape", "input=1,1,4,4"], "max_pool2d needs --param kernel_size=..."),
])
def test_cli_names_a_missing_parameter(argv, msg, capsys):
    assert cli_main(["derive", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "numpy" not in err.split("(")[0]


def test_simplify_gives_equal_and_shorter_entries(capsys):
    import sympy

    from gradcheck_kit import derive

    d = derive.derivation("softmax", {"input": (2,)}, {"dim": 0})
    s = d.simplified()
    J, S = d.jacobian(), s.jacobian()
    for i in range(2):
        for j in range(2):
            assert sympy.simplify(J[i, j] - S[i, j]) == 0
    assert sum(sympy.count_ops(e) for e in S) < sum(sympy.count_ops(e) for e in J)
    assert cli_main(["derive", "softmax", "--shape", "input=2", "--param", "dim=0", "--simplify"]) == 0
    assert "dy/d(input)" in capsys.readouterr().out


def test_jacobian_progress_callback_sees_every_row():
    from gradcheck_kit import derive

    seen = []
    derive.derivation("conv1d", {"input": (1, 1, 6), "weight": (1, 1, 2)}).jacobian(
        progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]
