"""The README, read as an outsider would: its set-up lines, its links, and its examples run."""

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytest_plugins = ["pytester"]


def _plugin_args() -> tuple:
    """Installed, pytest loads the plugin through its pytest11 entry point; in a bare checkout name it."""
    import importlib.metadata

    installed = any(ep.value == "gradcheck_kit.pytest_plugin"
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    return (() if installed else ("-p", "gradcheck_kit.pytest_plugin")) + (
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark", "-q")


def _section(title: str) -> str:
    m = re.search(rf"^##+ {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_set_up_lines_come_first_and_the_second_is_the_ci_test_command():
    lines = README.splitlines()
    assert lines[2] == "```"
    assert lines[3] == "pip install -c constraints.txt -e . && gradcheck-kit check cases/conv_relu_conv.py"
    assert lines[4] == 'pip install -c constraints.txt -e ".[test]" && pytest -n 2 -q'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -m1 -E '^pip install .*\\[test\\].*pytest' README.md" in ci


def test_no_references_outside_the_repository():
    assert "../" not in README and "shared/" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        assert not target.startswith(("http:", "https:", "/")), target


def test_relative_links_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert {f"docs/{n}.md" for n in ("rules", "rules_structural", "rules_nn", "engine", "verdicts", "parity")} \
        <= set(links)
    assert [t for t in links if not (ROOT / t).exists()] == []


def test_the_outsider_questions_are_answered():
    for needle in ("Seed 001", "Seed 002", "The lecture", "AdderNet", "XNOR", "--index-url",
                   "reseeded", "HealthCheck.function_scoped_fixture", "--threads", "TOLERANCES",
                   "## Documentation", "CONTRIBUTING.md", "--json"):
        assert needle in README, needle
    assert (ROOT / "CONTRIBUTING.md").exists()


def test_every_shipped_case_is_named_in_the_readme():
    for case in (ROOT / "cases").glob("*.py"):
        assert case.name in README or case.stem in README, case.name


def test_own_rule_example_registers_and_sweeps(monkeypatch, capsys):
    from gradcheck_kit.cli import main
    from gradcheck_kit.manual import registry

    registry.names()  # load the families first, then restore the registry after the example
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BY_CALLABLE", dict(registry._BY_CALLABLE))
    (code,) = _python_blocks(_section("Your own rule"))
    ns: dict = {}
    exec(compile(code, "README.md[Your own rule]", "exec"), ns)
    out = capsys.readouterr().out
    assert "scaled_tanh" in out
    assert main(["sweep", "scaled_tanh"]) == 0
    assert "2/2 rule samples passed" in capsys.readouterr().out
    # and a wrong backward is caught by the same sweep (no false pass)
    rule = registry.get("scaled_tanh")
    good = rule.backward_impl
    monkeypatch.setattr(rule, "backward_impl", lambda g, x, **kw: tuple(0.5 * t for t in good(g, x, **kw)))
    assert main(["sweep", "scaled_tanh"]) == 1
    assert "FAIL scaled_tanh" in capsys.readouterr().out


def test_hypothesis_example_runs_under_the_plugin(pytester):
    (code,) = _python_blocks(_section("In your test suite"))[1:]
    pytester.makepyfile(test_hyp=code)
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=1)
    # the same test with a wrong manual gradient fails: the fixture is really checking
    pytester.makepyfile(test_hyp=code.replace('"x": F.conv_transpose2d(g, w, padding=1)',
                                              '"x": 2 * F.conv_transpose2d(g, w, padding=1)'))
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(failed=1)
    assert "constant factor 2" in result.stdout.str()
