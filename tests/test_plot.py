"""Pictures: a planted padding bug draws an error map confined to the border; its correct twin draws none."""

from pathlib import Path

import pytest

from gradcheck_kit.cli import main

pytest.importorskip("matplotlib", reason="pictures need the [plot] extra (matplotlib)")

DATA = Path(__file__).resolve().parent / "data"


def _cells(png, box, shape):
    """The colour at the centre of every cell of one H x W error map, read back from the PNG."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3]
    x0, y0, x1, y1 = box
    H, W = shape
    out = [[None] * W for _ in range(H)]
    for i in range(H):
        for j in range(W):
            x = int(x0 + (j + 0.5) * (x1 - x0) / W)
            y = int(y0 + (i + 0.5) * (y1 - y0) / H)
            out[i][j] = tuple(float(c) for c in img[y, x])
    return out


def _nonwhite(cells):
    return {(i, j) for i, row in enumerate(cells) for j, c in enumerate(row) if min(c) < 0.98}


def test_padding_bug_error_map_is_confined_to_the_border(tmp_path, capsys):
    assert main(["check", str(DATA / "padding_bug.py"), "--plot", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    (png,) = sorted(tmp_path.glob("*.png"))
    assert f"picture: {png}" in out
    # the same picture again, through the library, to know where each map sits in the image
    import torch

    from gradcheck_kit import check, plot
    from gradcheck_kit.casefile import load_case

    case = load_case(DATA / "padding_bug.py")
    inputs = case.make_inputs("cpu", torch.float64)
    report = check(case.loss, inputs, case.manual, wrt=case.wrt)
    (pic,) = plot.plot_report(report, tmp_path / "lib", plot.gradient_pairs(case.loss, inputs, case.manual,
                                                                              wrt=case.wrt))
    assert pic.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(pic.error_boxes) == {(0, 0), (0, 1)}  # N x C grid: 1 x 2 maps of 10 x 10
    for key, box in pic.error_boxes.items():
        # the CLI's PNG has the same layout (same shape, same number of title lines)
        assert _nonwhite(_cells(png, box, (10, 10))) == _nonwhite(_cells(pic.path, box, (10, 10)))
        bad = _nonwhite(_cells(pic.path, box, (10, 10)))
        border = {(i, j) for i in range(10) for j in range(10) if i in (0, 9) or j in (0, 9)}
        assert bad, f"map {key}: no error drawn"
        assert bad <= border, f"map {key}: error outside the border at {sorted(bad - border)}"
        assert len(bad) >= 20, f"map {key}: only {len(bad)} border cells coloured"


def test_correct_twin_draws_nothing(tmp_path):
    assert main(["check", str(DATA / "padding_ok.py"), "--plot", str(tmp_path)]) == 0
    assert list(tmp_path.glob("*.png")) == []


@pytest.mark.parametrize("shape", [(), (7,), (5, 6), (3, 4, 5), (2, 3, 4, 4), (2, 1, 2, 3, 3)])
def test_heatmap_lays_out_every_rank(tmp_path, shape):
    import torch

    from gradcheck_kit import plot

    torch.manual_seed(0)
    ref = torch.randn(shape, dtype=torch.float64)
    man = ref.clone()
    man.view(-1)[-1] += 1.0  # one wrong element: the last one
    pic = plot.heatmap("x", man, ref, tmp_path / "x.png", hint="a hint")
    assert pic.path.stat().st_size > 1000 and pic.shape == tuple(shape)
    if len(shape) == 4:
        assert set(pic.error_boxes) == {(n, c) for n in range(2) for c in range(3)}
    elif len(shape) == 2:
        # the one wrong element is the only coloured cell of the matrix
        (box,) = pic.error_boxes.values()
        assert _nonwhite(_cells(pic.path, box, shape)) == {(shape[0] - 1, shape[1] - 1)}


def test_derive_plot_draws_the_banded_conv_jacobian(tmp_path, capsys):
    png = tmp_path / "J.png"
    assert main(["derive", "conv1d", "--shape", "input=1,1,8", "--shape", "weight=1,1,3",
                 "--value", "weight=[[[3,2,1]]]", "--wrt", "input", "--plot", str(png)]) == 0
    assert f"picture: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_jacobian_picture_refuses_huge_matrices(tmp_path):
    import sympy

    from gradcheck_kit import plot
    from gradcheck_kit.errors import GradcheckKitError

    with pytest.raises(GradcheckKitError, match="too large to draw"):
        plot.jacobian_picture(sympy.SparseMatrix(3000, 2, {}), tmp_path / "J.png")


def _padding_bug_report():
    import torch

    from gradcheck_kit import check
    from gradcheck_kit.casefile import load_case

    case = load_case(DATA / "padding_bug.py")
    inputs = case.make_inputs("cpu", torch.float64)
    return check(case.loss, inputs, case.manual, wrt=case.wrt)


def test_failing_results_keep_their_tensors_and_the_report_draws_itself(tmp_path):
    report = _padding_bug_report()
    bad = report.failures
    assert bad and all(r.tensors is not None and len(r.tensors) == 2 for r in bad)
    assert all(r.tensors is None for r in report.results if r.ok)  # passing inputs keep nothing
    assert "tensors" not in bad[0].to_dict()
    assert [p.name for p in report.plot(tmp_path)] == [r.name for r in bad]


def test_plot_report_without_tensors_says_what_to_pass(tmp_path):
    from gradcheck_kit import plot

    report = _padding_bug_report()
    for r in report.results:
        r.tensors = None
    with pytest.raises(plot.MissingTensorsError, match="gradient_pairs"):
        plot.plot_report(report, tmp_path)
    assert plot.plot_report(report, tmp_path, strict=False) == []


def test_gradient_pairs_without_manual_uses_finite_differences():
    import torch

    from gradcheck_kit import plot

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    pairs = plot.gradient_pairs(lambda x: (x ** 3).sum(), {"x": x})
    subject, reference = pairs["x"]
    torch.testing.assert_close(subject, 3 * x ** 2)
    torch.testing.assert_close(reference, 3 * x ** 2, rtol=1e-6, atol=1e-8)
