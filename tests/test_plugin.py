"""The pytest plugin (``gradcheck`` fixture, ``--gradcheck-*`` options, marker), through pytester."""

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch  # noqa: F401 - imported once here: pytester's in-process runs would re-import it per run

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


def _entry_point_installed() -> bool:
    return any(ep.name == "gradcheck_kit" and ep.value == "gradcheck_kit.pytest_plugin"
               for ep in importlib.metadata.entry_points(group="pytest11"))


# Installed (pip install -e .): pytest loads the plugin through its pytest11 entry point;
# in a bare checkout it is named explicitly.  (Naming it twice would register it twice.)
PLUGIN_ARGS = () if _entry_point_installed() else ("-p", "gradcheck_kit.pytest_plugin")

# plugins these runs do not need (hypothesis' would re-import and re-rewrite itself on every run)
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")

CONV = """
import pytest
import torch
import torch.nn.functional as F


def make():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64),
            "w": torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)}


def loss(x, w):
    return 0.5 * F.conv2d(x, w, padding=1).pow(2).sum()


def manual(x, w):
    g = F.conv2d(x, w, padding=1)
    return {"x": F.conv_transpose2d(g, w, padding=1),
            "w": F.conv2d(x.transpose(0, 1), g.transpose(0, 1), padding=1).transpose(0, 1)}


def manual_wrong(x, w):
    grads = manual(x, w)
    return {"x": 2 * grads["x"], "w": grads["w"]}          # a factor 2 on dL/dx
"""


@pytest.fixture
def conv_tests(pytester):
    pytester.makepyfile(helpers=CONV)
    return pytester


def run(pytester, *args):
    return pytester.runpytest(*PLUGIN_ARGS, *QUIET, *args)


def test_fixture_passes_on_correct_gradients(conv_tests):
    conv_tests.makepyfile(test_ok="""
        from helpers import loss, make, manual

        def test_conv(gradcheck):
            reports = gradcheck(loss, make(), manual=manual)
            assert reports and all(r.ok for r in reports)
        """)
    run(conv_tests).assert_outcomes(passed=1)


def test_failure_reads_like_assert_close_and_shows_the_table(conv_tests):
    conv_tests.makepyfile(test_bad="""
        from helpers import loss, make, manual_wrong

        def test_conv(gradcheck):
            gradcheck(loss, make(), manual=manual_wrong)
        """)
    result = run(conv_tests)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "Mismatched elements:" in text
    assert "Greatest absolute difference:" in text and "Greatest relative difference:" in text
    for col in ("input", "shape", "max abs err", "worst index", "verdict", "MISMATCH"):
        assert col in text
    assert "'x'" in text


def test_options_are_registered_and_reach_the_fixture(conv_tests):
    conv_tests.makepyfile(test_opts="""
        import torch
        from helpers import loss, make, manual

        def test_conv(gradcheck):
            (report,) = gradcheck(loss, make(), manual=manual)
            assert {r.dtype for r in report.results} == {"float32"}
            assert {r.device for r in report.results} == {"cpu"}
        """)
    run(conv_tests, "--gradcheck-dtype=float32", "--gradcheck-device=cpu").assert_outcomes(passed=1)
    help_text = run(conv_tests, "--help").stdout.str()
    assert "gradcheck-kit" in help_text and "--gradcheck-device" in help_text and "--gradcheck-dtype" in help_text


def test_bad_option_value_is_a_usage_error(conv_tests):
    result = run(conv_tests, "--gradcheck-dtype=float8")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_marker_pins_dtypes_and_overrides_the_command_line(conv_tests):
    conv_tests.makepyfile(test_marker="""
        import pytest
        from helpers import loss, make, manual

        @pytest.mark.gradcheck(dtype=("float64", "float32"))
        def test_two_dtypes(gradcheck):
            reports = gradcheck(loss, make(), manual=manual)
            assert [r.results[0].dtype for r in reports] == ["float64", "float32"]

        @pytest.mark.gradcheck(device="cpu", atol=0.25, rtol=0.5)
        def test_options_through_the_marker(gradcheck):
            (report,) = gradcheck(loss, make(), manual=manual)
            assert {(r.atol, r.rtol) for r in report.results} == {(0.25, 0.5)}

        def test_call_wins_over_marker_and_command_line(gradcheck):
            (report,) = gradcheck(loss, make(), manual=manual, dtype="float64")
            assert report.results[0].dtype == "float64"
        """)
    result = run(conv_tests, "--gradcheck-dtype=float16", "--strict-markers")
    result.assert_outcomes(passed=3)
    assert "gradcheck(" in run(conv_tests, "--markers").stdout.str()


def test_cuda_option_without_gpu_skips(conv_tests):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the skip shown when no GPU is visible")
    conv_tests.makepyfile(test_cuda="""
        from helpers import loss, make, manual

        def test_conv(gradcheck):
            gradcheck(loss, make(), manual=manual)
        """)
    result = run(conv_tests, "--gradcheck-device=cuda", "-rs")
    result.assert_outcomes(skipped=1)
    assert "needs a CUDA GPU" in result.stdout.str()


def test_assert_grads_match_works_without_the_plugin(conv_tests):
    conv_tests.makepyfile(test_plain="""
        import pytest
        from gradcheck_kit.testing import assert_grads_match
        from helpers import loss, make, manual, manual_wrong

        def test_plain():
            assert assert_grads_match(loss, make(), manual).ok
            with pytest.raises(AssertionError, match="Mismatched elements"):
                assert_grads_match(loss, make(), manual_wrong)
        """)
    conv_tests.runpytest("-p", "no:gradcheck_kit", *QUIET).assert_outcomes(passed=1)


def test_plugin_imports_no_torch_until_the_fixture_runs(conv_tests, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    conv_tests.makepyfile(test_lazy="""
        import sys

        def test_lazy(request):
            assert "gradcheck_kit.pytest_plugin" in sys.modules
            assert "torch" not in sys.modules and "gradcheck_kit.compare" not in sys.modules
        """)
    result = conv_tests.runpytest_subprocess(*PLUGIN_ARGS, *QUIET)
    result.assert_outcomes(passed=1)


def test_works_under_xdist(conv_tests, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    conv_tests.makepyfile(test_many="""
        import pytest
        from helpers import loss, make, manual, manual_wrong

        @pytest.mark.parametrize("i", range(3))
        def test_ok(gradcheck, i):
            gradcheck(loss, make(), manual=manual)

        def test_bad(gradcheck):
            gradcheck(loss, make(), manual=manual_wrong)
        """)
    result = conv_tests.runpytest_subprocess(*PLUGIN_ARGS, *QUIET, "-n", "2",
                                             "--gradcheck-dtype=float32")
    result.assert_outcomes(passed=3, failed=1)
    assert "Mismatched elements" in result.stdout.str()
