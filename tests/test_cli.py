"""The ``gradcheck-kit`` command, run in-process (``main([...])`` returns the exit code).

Exit codes: 0 pass, 1 mismatch, 2 usage error or bad input (one ``error:`` line on stderr,
no traceback unless ``--debug``).  ``--json`` prints exactly one JSON document.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gradcheck_kit import __version__
from gradcheck_kit.cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
import torch
import torch.nn.functional as F

def inputs(device, dtype):
    return {"x": torch.randn(2, 2, 5, 5, device=device, dtype=dtype),
            "w": torch.randn(3, 2, 3, 3, device=device, dtype=dtype),
            "label": torch.arange(3, device=device)}

def loss(x, w, label):
    return 0.5 * F.conv2d(x, w, padding=1).pow(2).sum()

def manual(x, w, label):
    g = F.conv2d(x, w, padding=1)                              # dL/dy = y
    gx = F.conv_transpose2d(g, w, padding=1)                   # dL/dx = W^T g
    gw = F.conv2d(x.transpose(0, 1), g.transpose(0, 1), padding=1).transpose(0, 1)  # dL/dW = x * g
    return {"x": gx, "w": gw}
"""

# one wrong element of dL/dx at index (1, 0, 2, 3)
PLANTED = GOOD.replace('    return {"x": gx, "w": gw}',
                       '    gx = gx + torch.zeros_like(gx).index_put_((torch.tensor(1), torch.tensor(0), '
                       'torch.tensor(2), torch.tensor(3)), torch.tensor(1.0, dtype=gx.dtype))\n'
                       '    return {"x": gx, "w": gw}')


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.fixture
def good(tmp_path):
    return write(tmp_path, "good.py", GOOD)


@pytest.fixture
def planted(tmp_path):
    return write(tmp_path, "planted.py", PLANTED)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# -- check ---------------------------------------------------------------------------

def test_check_passes_and_prints_a_table(good, capsys):
    assert main(["check", good]) == 0
    out = capsys.readouterr().out
    for col in ("input", "shape", "max abs err", "max rel err", "worst index", "verdict", "hint"):
        assert col in out
    assert "good.py" in out and "2x2x5x5" in out
    assert "1/1 case checks passed" in out.splitlines()[-1]


def test_planted_error_exits_1_and_names_input_and_index(planted, capsys):
    assert main(["check", planted]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out
    last = out.strip().splitlines()[-1]
    assert "FAILED" in last and "x at (1, 0, 2, 3)" in last


def test_json_schema(good, planted, capsys):
    assert main(["check", good, planted, "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is exactly one JSON document
    assert set(doc) == {"ok", "cases", "errors", "warnings"} and doc["ok"] is False
    assert doc["errors"] == [] and doc["warnings"] == []
    assert [Path(c["file"]).name for c in doc["cases"]] == ["good.py", "planted.py"]
    for case in doc["cases"]:
        assert {"file", "device", "dtype", "ok", "inputs"} <= set(case)
        assert case["device"] == "cpu" and case["dtype"] == "float64"
        assert [i["name"] for i in case["inputs"]] == ["x", "w"]
        assert {"reference", "seed", "notes"} <= set(case["report"])
        for i in case["inputs"]:
            # every field of Result.to_dict(): both values, counts, tolerances, kinks, fd mode, order
            assert {"name", "ok", "max_abs_err", "max_rel_err", "worst_index", "hint", "manual_value",
                    "reference_value", "mismatched", "numel", "atol", "rtol", "kinks", "fd_mode", "order"} <= set(i)
            assert isinstance(i["ok"], bool) and isinstance(i["worst_index"], (list, type(None)))
    good_case, bad_case = doc["cases"]
    assert good_case["ok"] is True
    bad_x = bad_case["inputs"][0]
    assert bad_case["ok"] is False and bad_x["ok"] is False
    assert bad_x["worst_index"] == [1, 0, 2, 3]
    assert bad_x["max_abs_err"] == pytest.approx(1.0)


def test_json_stdout_holds_only_the_document_even_if_the_case_prints(tmp_path, capsys):
    noisy = write(tmp_path, "noisy.py", GOOD.replace("def loss(x, w, label):",
                                                     "print('hello from the case')\n\ndef loss(x, w, label):"))
    assert main(["check", noisy, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    assert "hello from the case" in captured.err


def test_options_dtype_reference_seed_double_backward(good, capsys):
    assert main(["check", good, "--dtype", "float32", "--reference", "both", "--seed", "3",
                 "--double-backward", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (case,) = doc["cases"]
    assert case["dtype"] == "float32"
    refs = {i.get("reference") for i in case["inputs"]}
    assert {"autograd", "finite-difference"} <= refs


def test_case_without_manual_checks_autograd_against_fd(tmp_path, capsys):
    case = write(tmp_path, "fn.py", """
        import torch

        class Cube(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x ** 3

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 3 * x ** 2 * g

        def inputs(device, dtype):
            return {"x": torch.randn(4, device=device, dtype=dtype)}

        def loss(x):
            return Cube.apply(x).sum()
        """)
    assert main(["check", case]) == 0
    assert "finite-difference" in capsys.readouterr().out


def test_device_all_runs_at_least_the_cpu(good, capsys):
    assert main(["check", good, "--device", "all", "--json"]) == 0
    devices = [c["device"] for c in json.loads(capsys.readouterr().out)["cases"]]
    assert devices[0] == "cpu" and len(devices) == 1 + torch.cuda.device_count()


@pytest.mark.cuda
def test_device_cuda(good, planted, capsys):
    assert main(["check", good, "--device", "cuda", "--dtype", "float32"]) == 0
    assert main(["check", planted, "--device", "cuda"]) == 1


# -- bad input: exit 2, one line ------------------------------------------------------

BAD_CASES = {
    "syntax": ("def inputs(device, dtype:\n    pass\n", "syntax error"),
    "no_loss": ("import torch\ndef inputs(device, dtype):\n    return {'x': torch.ones(2)}\n", "loss()"),
    "no_inputs": ("def loss(x):\n    return x.sum()\n", "inputs()"),
    "wrong_name": (GOOD.replace('return {"x": gx, "w": gw}', 'return {"x": gx, "v": gw}'), "'v'"),
    "wrong_shape": (GOOD.replace('return {"x": gx, "w": gw}', 'return {"x": gx, "w": gw[:, :1]}'), "shape"),
    "int_wrt": (GOOD + '\nWRT = ("x", "label")\n', "'label'"),
    "raises_on_load": ("import torch\nraise RuntimeError('broken\\nsecond line')\n", "RuntimeError: broken"),
    "manual_raises": (GOOD.replace("g = F.conv2d(x, w, padding=1)", "g = x @ w"), "RuntimeError"),
    "inputs_not_a_dict": ("import torch\ndef inputs(device, dtype):\n    return [1]\ndef loss(x):\n"
                          "    return x\n", "dict"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_case_files_exit_2_with_one_error_line(kind, tmp_path, capsys):
    text, needle = BAD_CASES[kind]
    path = write(tmp_path, f"{kind}.py", text)
    assert main(["check", path]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert needle in line, line
    assert captured.out == ""


def test_missing_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.py")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_bad_input_with_json_keeps_stdout_empty(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.py"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    one_error_line(captured.err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_device_cuda_without_gpu(good, capsys):
    assert main(["check", good, "--device", "cuda"]) == 2
    assert "needs a CUDA GPU" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [[], ["check"], ["check", "x.py", "--dtype", "float8"],
                                  ["check", "x.py", "--device", "tpu"], ["frobnicate"],
                                  ["check", "x.py", "--seed", "abc"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err)


def test_debug_adds_the_traceback(tmp_path, capsys):
    path = write(tmp_path, "bad.py", BAD_CASES["wrong_shape"][0])
    assert main(["check", path, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# -- list, sweep, derive ---------------------------------------------------------------

def test_list(capsys):
    from gradcheck_kit import manual

    assert main(["list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["rules"]}
    assert set(rows) == set(manual.names())
    if "conv2d" in rows:
        assert rows["conv2d"]["torch_function"] == "torch.nn.functional.conv2d"
        assert rows["conv2d"]["differentiable_backward"] is True
    assert all(isinstance(r["symbolic"], bool) for r in rows.values())
    assert main(["list"]) == 0
    assert "mirrors" in capsys.readouterr().out


def _a_rule():
    from gradcheck_kit import manual

    names = manual.names()
    if not names:
        pytest.skip("no rule registered yet")
    return "relu" if "relu" in names else names[0]


def test_sweep_one_rule_json(capsys):
    rule = _a_rule()
    code = main(["sweep", rule, "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert set(doc) == {"ok", "rules", "warnings"}
    assert doc["rules"] and {e["rule"] for e in doc["rules"]} == {rule}
    for e in doc["rules"]:
        assert {"rule", "sample", "device", "dtype", "ok", "inputs"} <= set(e)
    assert code == (0 if doc["ok"] else 1)


def test_sweep_table_names_failing_rule_and_sample(capsys, monkeypatch):
    """A rule whose backward is wrong (by a factor 2) is named with its failing sample."""
    from gradcheck_kit.manual import registry

    rule = registry.get(_a_rule())
    orig = rule.backward_impl

    def wrong(*a, **kw):
        return tuple(None if g is None else 2 * g for g in orig(*a, **kw))

    monkeypatch.setattr(rule, "backward_impl", wrong)
    assert main(["sweep", rule.name]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"FAIL {rule.name} " in out
    first = rule.samples()[0].name
    assert first in out


def test_sweep_unknown_rule(capsys):
    assert main(["sweep", "conv9d"]) == 2
    assert "conv9d" in one_error_line(capsys.readouterr().err)


def test_derive_is_delegated(capsys):
    code = main(["derive", "--help"])
    captured = capsys.readouterr()
    try:
        import gradcheck_kit._cli_derive  # noqa: F401
    except ModuleNotFoundError:
        assert code == 2 and "derive" in one_error_line(captured.err)
    else:
        assert code == 0 and "derive" in captured.out


# -- start-up: --help and --version without torch --------------------------------------

def test_help_and_version_in_process(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("check", "list", "sweep", "derive"):
        assert cmd in out
    assert main(["check", "--help"]) == 0
    assert "--double-backward" in capsys.readouterr().out


def test_help_does_not_import_torch():
    """``gradcheck-kit --help`` imports none of the heavy packages, which is what keeps it fast; its
    time (< 0.3 s) is measured in benchmarks/ (row "cli"), not asserted here."""
    code = ("import sys; from gradcheck_kit.cli import main\n"
            "for argv in (['--help'], ['--version'], ['check', '--help']):\n"
            "    assert main(argv) == 0\n"
            "heavy = [m for m in ('torch', 'rich', 'numpy', 'sympy', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr


# -- tolerance and finite-difference options, TOLERANCES, threads ----------------------

def test_atol_rtol_options_reach_check(planted, capsys):
    assert main(["check", planted]) == 1
    capsys.readouterr()
    assert main(["check", planted, "--atol", "2", "--json"]) == 0  # the planted error is 1.0
    doc = json.loads(capsys.readouterr().out)
    assert all(i["atol"] == 2.0 for i in doc["cases"][0]["inputs"])
    assert main(["check", planted, "--rtol", "1e-3", "--atol", "0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert all(i["rtol"] == 1e-3 and i["atol"] == 0.0 for i in doc["cases"][0]["inputs"])


@pytest.mark.parametrize("argv", [["--atol", "-1"], ["--rtol", "nan"], ["--fd-eps", "0"], ["--fd-mode", "slow"],
                                  ["--fd-projections", "0"], ["--threads", "-2"]])
def test_bad_option_values_exit_2(good, argv, capsys):
    assert main(["check", good, *argv]) == 2
    one_error_line(capsys.readouterr().err)


def test_fd_options_reach_check(planted, good, capsys):
    assert main(["check", planted, "--reference", "fd", "--fd-mode", "fast", "--fd-projections", "3",
                 "--fd-eps", "1e-5", "--json"]) == 1  # fast mode still catches the planted element
    doc = json.loads(capsys.readouterr().out)
    x = doc["cases"][0]["inputs"][0]
    assert x["fd_mode"] == "fast" and x["projections"] == 3 and x["worst_index"] == [1, 0, 2, 3]
    assert main(["check", good, "--reference", "fd", "--fd-mode", "fast", "--json"]) == 0
    capsys.readouterr()


def test_threads_option(good, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["check", good, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["check", good, "--threads", "0"]) == 0  # 0: leave torch's setting alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


@pytest.mark.parametrize("tolerances, code", [
    ('{"atol": 2.0}', 0),                          # the whole case: the planted 1.0 passes
    ('{"x": {"atol": 2.0}}', 0),                   # only x, where the planted error sits
    ('{"w": {"atol": 2.0}}', 1),                   # only w: x still fails
    ('{"atol": 2.0, "x": {"atol": 1e-9}}', 1),     # the input's own entry wins over the case's
])
def test_case_file_tolerances(tmp_path, tolerances, code, capsys):
    path = write(tmp_path, "tol.py", PLANTED + f"\nTOLERANCES = {tolerances}\n")
    assert main(["check", path, "--json"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in doc["cases"][0]["inputs"]] == ["x", "w"]  # order kept after re-checks


def test_command_line_tolerance_wins_over_the_case_file(tmp_path, capsys):
    path = write(tmp_path, "tol.py", PLANTED + '\nTOLERANCES = {"atol": 2.0, "x": {"atol": 2.0}}\n')
    assert main(["check", path, "--atol", "1e-9", "--rtol", "1e-9"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("tolerances, needle", [
    ('[1e-6]', "TOLERANCES must be a dict"), ('{"atol": -1}', ">= 0"), ('{"x": {"tol": 1}}', "'atol' and 'rtol'"),
    ('{"q": {"atol": 1}}', "'q'"), ('{"x": 3}', "must be a dict"),
])
def test_bad_tolerances_exit_2(tmp_path, tolerances, needle, capsys):
    path = write(tmp_path, "tol.py", GOOD + f"\nTOLERANCES = {tolerances}\n")
    assert main(["check", path]) == 2
    assert needle in one_error_line(capsys.readouterr().err)


# -- several files, warnings -------------------------------------------------------------

def test_several_files_run_to_the_end_with_per_file_errors_and_the_worst_exit_code(tmp_path, good, planted,
                                                                                     capsys):
    broken = write(tmp_path, "broken.py", BAD_CASES["manual_raises"][0])
    missing = str(tmp_path / "missing.py")
    assert main(["check", good, broken, missing, planted]) == 2
    captured = capsys.readouterr()
    errs = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(errs) == 2 and all(ln.startswith("error: ") for ln in errs)
    assert "broken.py" in errs[0] and "RuntimeError" in errs[0] and "missing.py" in errs[1]
    assert "good.py" in captured.out and "planted.py" in captured.out  # both ran, after the errors
    last = captured.out.strip().splitlines()[-1]
    assert "1/2 case checks FAILED" in last and "2 errors in broken.py, missing.py" in last
    assert main(["check", good, planted]) == 1  # no error: the worst is the mismatch
    capsys.readouterr()


def test_several_files_json_lists_errors(tmp_path, good, capsys):
    missing = str(tmp_path / "missing.py")
    assert main(["check", missing, good, "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and [Path(c["file"]).name for c in doc["cases"]] == ["good.py"]
    assert [Path(e["file"]).name for e in doc["errors"]] == ["missing.py"]
    assert "does not exist" in doc["errors"][0]["error"]


WARNS = GOOD.replace("def loss(x, w, label):\n",
                     "import warnings\n\ndef loss(x, w, label):\n"
                     "    warnings.warn('loss says: mind the padding', UserWarning)\n"
                     "    F.conv2d(x, w[:, :, :2, :2], padding='same')  # torch warns about even kernels\n")


def test_warnings_are_collected_into_the_report_once(tmp_path, capsys):
    path = write(tmp_path, "warns.py", WARNS)
    assert main(["check", path, "--reference", "both"]) == 0  # the loss runs many times
    captured = capsys.readouterr()
    assert "mind the padding" not in captured.err and "Warning" not in captured.err
    assert captured.out.count("loss says: mind the padding") == 1
    assert main(["check", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["warnings"] and sum("mind the padding" in w for w in doc["warnings"]) == 1
    assert sum("mind the padding" in n for n in doc["cases"][0]["report"]["notes"]) == 1


# -- terminal views -----------------------------------------------------------------------

def test_character_heatmap_shows_where_the_mismatch_sits(planted, capsys):
    assert main(["check", planted]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("where x mismatches"))
    grid = [ln.strip()[1:-1] for ln in lines[i + 1:i + 6]]  # 5 x 5 map of (H, W)
    assert [(r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch != " "] == [(2, 3)]
    assert "mismatches per channel: 1 0" in out


def test_nodes_table_formats_per_operation_results():
    from gradcheck_kit import _format

    class Node:
        def __init__(self, **kw):
            self.kw = kw

        def to_dict(self):
            return self.kw

    text = _format.render(_format.nodes_table([
        Node(op="conv2d", where="loss.py:12", ok=False, max_abs_err=1.5, max_rel_err=0.3, worst_index=(0, 1),
             hint="flipped kernel"),
        Node(op="relu", where="loss.py:13", ok=True, max_abs_err=0.0, max_rel_err=0.0, worst_index=None, hint=None)]))
    assert "conv2d" in text and "MISMATCH" in text and "flipped kernel" in text and "(0, 1)" in text
    assert "relu" in text and "ok" in text


@pytest.mark.parametrize("flag", [["--localize"], ["--manual", "rules"]])
def test_rules_and_localize_flags(good, planted, flag, capsys):
    code = main(["check", planted if flag == ["--localize"] else good, *flag])
    out = capsys.readouterr().out
    assert code == (1 if flag == ["--localize"] else 0)
    if flag == ["--localize"]:
        assert "per operation" in out


@pytest.mark.parametrize("flag, mode", [(["--order", "3"], "order"), (["--forward-ad"], "forward_ad"),
                                        (["--batched"], "batched")])
def test_mode_flags_reach_check_and_its_report(good, planted, flag, mode, capsys):
    """Each mode flag adds its results (``mode`` in --json); the planted bug still fails with it."""
    assert main(["check", good, *flag, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    results = [r for case in doc["cases"] for r in case["inputs"]]
    assert any(r.get("mode") == mode or (mode == "order" and r.get("order") == 3) for r in results), results
    assert main(["check", planted, *flag]) == 1
    capsys.readouterr()


def test_baseline_and_cotangents_flags(good, planted, capsys):
    assert main(["check", good, "--dtype", "float32", "--baseline", "4"]) == 0
    assert main(["check", planted, "--dtype", "float32", "--baseline", "4"]) == 1
    assert main(["check", good, "--cotangents", "0"]) == 0
    assert main(["check", good, "--baseline", "0"]) == 2  # not a positive number: one error line
    one_error_line(capsys.readouterr().err)


def test_list_shows_every_mirrored_callable(capsys):
    from gradcheck_kit import manual

    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rules"]}
    for name in manual.names():
        assert rows[name]["mirrors"] == list(manual.get(name).mirrors_all)
    if "layer_norm" in rows:  # its torch_fn is an internal wrapper; the table names torch's function
        assert rows["layer_norm"]["mirrors"][0] == "torch.nn.functional.layer_norm"
        assert main(["list"]) == 0
        out = capsys.readouterr().out
        ln = next(line for line in out.splitlines() if "layer_norm" in line)
        assert "torch.nn.functional.layer_norm" in ln


def test_no_progress_bars_off_a_terminal_or_with_json():
    from gradcheck_kit import cli

    assert cli._progress_enabled(True) is False
    assert cli._progress_enabled(False) is sys.stderr.isatty()


def test_sweep_collects_warnings_once(capsys, monkeypatch):
    import warnings

    from gradcheck_kit.manual import registry

    rule = registry.get(_a_rule())
    orig = rule.backward_impl

    def noisy(*a, **kw):
        warnings.warn("backward says: mind the kink", UserWarning)
        return orig(*a, **kw)

    monkeypatch.setattr(rule, "backward_impl", noisy)
    assert len(rule.samples()) > 1  # so the warning is raised several times
    assert main(["sweep", rule.name]) == 0
    captured = capsys.readouterr()
    assert "mind the kink" not in captured.err
    assert captured.out.count("mind the kink") == 1
    assert main(["sweep", rule.name, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sum("mind the kink" in w for w in doc["warnings"]) == 1


def test_character_heatmap_of_a_large_matrix_pools_into_blocks():
    from gradcheck_kit import _format

    ref = torch.zeros(40, 130, dtype=torch.float64)
    man = ref.clone()
    man[:, 0] = 1.0    # the first column is wrong
    man[39, 129] = 1.0  # and the last element
    text = _format.char_heatmap({"name": "A", "atol": 1e-9, "rtol": 0.0}, man, ref)
    head, *rows = text.splitlines()
    assert "A" in head and "blocks" in head
    grid = [r.strip()[1:-1] for r in rows]
    assert len(grid) <= 16 and max(len(r) for r in grid) <= 64
    assert all(r[0] != " " for r in grid)                 # the column shows in every row of blocks
    assert grid[-1][-1] != " " and grid[0][-1] == " "     # the corner element, and nothing else there
    assert all(set(r[1:-1]) == {" "} for r in grid)       # the interior is clean


def test_plot_without_matplotlib_is_one_clear_error(good, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["check", good, "--plot", str(tmp_path)]) == 2
    assert "pip install 'gradcheck-kit[plot]'" in one_error_line(capsys.readouterr().err)
