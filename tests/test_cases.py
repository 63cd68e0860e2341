"""Every shipped case file: its explicit ``manual`` gradients == torch.autograd (float64 and float32).

The seed-002 cases run at reduced sizes here (``inputs(..., small=True)``: same structure,
stride 32 kept); the default case at full size is checked by the CLI (README's main command)
and once, in float32, by tests/manual/test_composites.py.
"""

import inspect
from pathlib import Path

import pytest
import torch

from gradcheck_kit.casefile import load_case

CASES_DIR = Path(__file__).resolve().parent.parent / "cases"
CASE_FILES = sorted(CASES_DIR.glob("*.py"))
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def _inputs(case, dtype, seed=0):
    torch.manual_seed(seed)
    if "small" in inspect.signature(case.inputs).parameters:
        return case.inputs("cpu", dtype, small=True)
    return case.make_inputs("cpu", dtype, seed)


def _wrt(case, inputs, manual_grads):
    if case.wrt is not None:
        return case.wrt
    if manual_grads is not None:
        return tuple(manual_grads)
    return tuple(n for n, t in inputs.items() if t.is_floating_point())


def test_the_shipped_cases_are_there():
    names = {p.stem for p in CASE_FILES}
    assert {"conv_relu_conv", "strided_conv_loss", "conv_then_strided_loss", "dag_weight_sharing",
            "tanh_mlp", "pow_log", "unfold_custom_conv", "custom_function_fd"} <= names


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("path", [p for p in CASE_FILES if p.stem != "custom_function_fd"], ids=lambda p: p.stem)
def test_case_manual_matches_autograd(path, dtype):
    case = load_case(path)
    assert case.manual is not None, f"{path.name} has no manual()"
    inputs = _inputs(case, dtype)
    grads = case.manual(**{k: v.clone() for k, v in inputs.items()})
    wrt = _wrt(case, inputs, grads)
    assert set(grads) == set(wrt), f"{path.name}: manual returns {sorted(grads)}, WRT is {sorted(wrt)}"
    leaves = {k: v.clone().requires_grad_(k in wrt) for k, v in inputs.items()}
    out = case.loss(**leaves)
    ref = torch.autograd.grad(out.sum(), [leaves[n] for n in wrt])
    for n, r in zip(wrt, ref):
        scale = max(1.0, float(r.abs().max()))
        tol = TOL[dtype]
        torch.testing.assert_close(grads[n], r, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   msg=lambda m, n=n: f"{path.name} d/d{n}: {m}")


@pytest.mark.parametrize("path", [p for p in CASE_FILES if p.stem in
                                  ("conv_relu_conv", "dag_weight_sharing", "unfold_custom_conv", "pow_log")],
                         ids=lambda p: p.stem)
def test_case_manual_is_differentiable(path):
    """The explicit gradients are themselves differentiable: d<manual, v>/d(inputs) == autograd's."""
    case = load_case(path)
    inputs = _inputs(case, torch.float64)
    wrt = _wrt(case, inputs, None if case.manual is None else case.manual(**inputs))
    gen = torch.Generator().manual_seed(3)
    vs = {n: torch.randn(inputs[n].shape, generator=gen, dtype=torch.float64) for n in wrt}

    def hvp(grad_fn):
        leaves = {k: v.clone().requires_grad_(k in wrt) for k, v in inputs.items()}
        grads = grad_fn(leaves)
        s = sum((grads[n] * vs[n]).sum() for n in wrt)
        return torch.autograd.grad(s, [leaves[n] for n in wrt], allow_unused=True)

    def auto(leaves):
        gs = torch.autograd.grad(case.loss(**leaves).sum(), [leaves[n] for n in wrt], create_graph=True)
        return dict(zip(wrt, gs))

    for n, a, m in zip(wrt, hvp(auto), hvp(lambda leaves: case.manual(**leaves))):
        if a is None:
            assert m is None or not bool(m.ne(0).any()), f"{path.name}: second derivative wrt {n}"
            continue
        torch.testing.assert_close(m, a, rtol=1e-8, atol=1e-9 * max(1.0, float(a.abs().max())),
                                   msg=lambda msg, n=n: f"{path.name} second derivative wrt {n}: {msg}")


def test_custom_function_case_matches_finite_differences():
    case = load_case(CASES_DIR / "custom_function_fd.py")
    assert case.manual is None
    inputs = case.make_inputs("cpu", torch.float64)
    names = list(inputs)
    leaves = [inputs[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(lambda *a: case.loss(**dict(zip(names, a))), leaves)


def test_custom_function_case_catches_a_planted_error():
    """The finite-difference reference is sharp enough to see a wrong custom backward."""
    case = load_case(CASES_DIR / "custom_function_fd.py")
    inputs = case.make_inputs("cpu", torch.float64)
    fn = case.loss.__globals__["SharpSoftplus"]
    good = fn.backward

    def bad(ctx, g):
        gx, ga = good(ctx, g)
        return gx * 1.01, ga

    fn.backward = staticmethod(bad)
    try:
        leaves = [inputs[n].clone().requires_grad_() for n in inputs]
        assert not torch.autograd.gradcheck(lambda *a: case.loss(**dict(zip(inputs, a))), leaves,
                                            raise_exception=False)
    finally:
        fn.backward = staticmethod(good)


def test_cases_pass_the_comparison_engine():
    """When gradcheck_kit.check has landed: every small case passes it against autograd."""
    try:
        from gradcheck_kit import check
    except (ImportError, AttributeError) as e:
        pytest.skip(f"gradcheck_kit.check is not importable yet ({e})")
    for path in CASE_FILES:
        case = load_case(path)
        inputs = _inputs(case, torch.float64)
        if case.manual is None:
            report = check(case.loss, inputs, reference="finite-difference")
        else:
            report = check(case.loss, inputs, case.manual, wrt=case.wrt)
        assert report.ok, f"{path.name}:\n{report}"
