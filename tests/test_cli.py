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
    assert set(doc) == {"ok", "rules"}
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


def test_help_does_not_import_torch_and_is_fast():
    """The kit's own share of ``gradcheck-kit --help`` (import + parse) stays far under 0.3 s;
    the interpreter's start-up is not counted (it varies with the machine's load)."""
    code = ("import sys, time; t = time.perf_counter(); from gradcheck_kit.cli import main\n"
            "for argv in (['--help'], ['--version'], ['check', '--help']):\n"
            "    assert main(argv) == 0\n"
            "heavy = [m for m in ('torch', 'rich', 'numpy', 'sympy') if m in sys.modules]\n"
            "print('HEAVY', heavy, 'SECONDS', time.perf_counter() - t, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr
    seconds = float(proc.stderr.split("SECONDS")[1])
    assert seconds < 0.3, f"importing gradcheck_kit.cli and printing --help took {seconds:.2f} s"
