"""gradcheck/gradgradcheck/check_grads options without a home elsewhere: eps, grad_outputs (docs/parity.md)."""

from __future__ import annotations

import torch

from gradcheck_kit import check


def test_fd_eps_is_the_finite_difference_step():
    """gradcheck(eps=...) is fd_eps.  Order 3 differences the order-2 derivative with step e = 10 fd_eps:
    for exp that is sinh(e v)/(e v) times the exact value, ~1.5% off at e = 0.3, ~1e-10 at 1e-5 (the
    order-2 differences, with step fd_eps, fail too; order 1 accepts a convex function's one-sided
    interval, so it is not the place to see the step)."""
    x = {"x": torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)}
    assert check(lambda x: x.exp().sum(), x, order=3).ok
    rep = check(lambda x: x.exp().sum(), x, order=3, fd_eps=0.03)
    fails = {(r.order, r.reference) for r in rep.failures}
    assert (3, "finite-difference") in fails and {ref for _, ref in fails} == {"finite-difference"}


def test_grad_outputs_like_gradgradcheck():
    """gradgradcheck(grad_outputs=...): manual(..., grad_output=v) is checked along seeded cotangents v,
    so a VJP bug invisible along v = 1 (g * w.flip(0) for (g * w).flip(0)) fails."""
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(2))

    def loss(x, w):
        return (x * w).flip(0)

    def right(x, w, grad_output):
        gy = grad_output.flip(0)        # y = flip(x w): dL/d(xw) = flip(g)
        return {"x": gy * w, "w": gy * x}

    def wrong(x, w, grad_output):
        return {"x": grad_output * w.flip(0), "w": grad_output * x.flip(0)}

    assert check(loss, {"x": x, "w": w}, right, reference="both").ok
    rep = check(loss, {"x": x, "w": w}, wrong)
    assert {r.name for r in rep.failures} == {"x", "w"}
    assert check(loss, {"x": x, "w": w}, lambda x, w: right(x, w, torch.ones(4, dtype=torch.float64))).ok


def test_every_row_of_the_readme_parity_table_names_a_test_that_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    section = text[text.index("## Coming from gradcheck"):text.index("## Documentation")]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    named = 0
    for line in rows:
        for m in re.finditer(r"\[(test_\w+\.py)\]\(tests/\1\)((?:\s*`test_\w+`,?)+)", line):
            src = (root / "tests" / m.group(1)).read_text()
            for name in re.findall(r"`(test_\w+)`", m.group(2)):
                assert f"def {name}(" in src, f"the README names {m.group(1)}::{name}, which does not exist"
                named += 1
    assert named >= 20
