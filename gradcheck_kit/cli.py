"""The ``gradcheck-kit`` command: parse, delegate to the kit, format.

    gradcheck-kit check cases/conv_relu_conv.py [--device all] [--dtype float32] [--json]
    gradcheck-kit list [--json]
    gradcheck-kit sweep [RULE...] [--device cpu] [--dtype float64] [--json]
    gradcheck-kit derive ...

Exit codes: 0 everything passed, 1 a gradient mismatch, 2 a usage error or bad input
(one ``error:`` line on stderr; ``--debug`` adds the traceback).  With ``--json``
standard output holds exactly one JSON document.

torch and rich are imported inside the commands, so ``--help`` and ``--version``
answer without them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from gradcheck_kit._version import __version__

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

DTYPES = ("float64", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "all")
REFERENCES = {"autograd": "autograd", "fd": "finite-difference", "both": "both", "compiled": "compiled"}


class UsageError(Exception):
    """Bad command-line input: reported as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error:`` message and no ``sys.exit`` on errors."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


# -- parser -------------------------------------------------------------------------

DEFAULT_THREADS = 1  # one torch thread: on a shared machine more threads fight and run slower, not faster


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return v


def _pos_float(text: str) -> float:
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _pos_int(text: str) -> int:
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def tolerance_options(p) -> None:
    """--atol, --rtol and the finite-difference options of ``check()``."""
    p.add_argument("--atol", type=_nonneg_float, default=None, metavar="A",
                   help="absolute tolerance (default: per dtype, scaled to the gradient's magnitude); "
                        "wins over the case file's TOLERANCES")
    p.add_argument("--rtol", type=_nonneg_float, default=None, metavar="R",
                   help="relative tolerance (default: per dtype); wins over the case file's TOLERANCES")
    p.add_argument("--fd-mode", choices=("auto", "full", "fast"), default="auto",
                   help="finite differences: full (every element), fast (random projections, then "
                        "bisection to the worst element) or auto (full while cheap; default)")
    p.add_argument("--fd-eps", type=_pos_float, default=1e-6, metavar="H", help="finite-difference step (default 1e-6)")
    p.add_argument("--fd-projections", type=_pos_int, default=4, metavar="K",
                   help="random directions per input in fast mode (default 4)")


def threads_option(p) -> None:
    p.add_argument("--threads", type=_nonneg_int, default=DEFAULT_THREADS, metavar="N",
                   help=f"torch threads (default {DEFAULT_THREADS}, right for a shared machine; "
                        "0 keeps torch's default of one per core)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradcheck-kit",
        description="Check hand-written gradients against autograd and finite differences.",
        epilog="exit codes: 0 everything passed, 1 a gradient mismatch, 2 a usage error or bad input",
    )
    parser.add_argument("--version", action="version", version=f"gradcheck-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, *, json_help: str):
        p.add_argument("--json", action="store_true", help=json_help)
        p.add_argument("--debug", action="store_true", help="print the traceback of an error")

    p = sub.add_parser("check", help="check the gradients of one or more case files",
                       description="Check the explicit gradients of case files (a loss, its inputs and "
                                   "optionally manual gradients) against a reference. Every file runs to "
                                   "the end; errors are reported per file and the exit code is the worst.")
    p.add_argument("files", nargs="+", metavar="FILE", help="case file(s): Python files defining "
                   "inputs(device, dtype), loss(...) and optionally manual(...), WRT and TOLERANCES")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where to run: cpu (default), cuda, or all (CPU and every visible GPU)")
    p.add_argument("--dtype", choices=DTYPES, default="float64", help="dtype of the inputs (default float64)")
    p.add_argument("--reference", choices=tuple(REFERENCES), default="autograd",
                   help="compare manual gradients with autograd (default), finite differences (fd), both, "
                        "or the torch.compile'd loss's gradients (compiled)")
    p.add_argument("--double-backward", action="store_true",
                   help="also check second derivatives through the manual gradients")
    p.add_argument("--seed", type=int, default=0, help="seed of torch's generator before inputs() (default 0)")
    tolerance_options(p)
    p.add_argument("--manual", choices=("case", "rules"), default="case",
                   help="the gradients under test: the case file's manual() (default), or 'rules': the "
                        "registry's explicit backwards applied to the loss's torch calls")
    p.add_argument("--localize", action="store_true",
                   help="also check each recorded operation of the loss on its own (a per-operation table)")
    p.add_argument("--order", type=_pos_int, default=None, metavar="N",
                   help="check derivatives up to order N (2 is --double-backward)")
    p.add_argument("--forward-ad", action="store_true",
                   help="also check the loss's forward-mode derivatives (JVPs along seeded tangents)")
    p.add_argument("--batched", action="store_true",
                   help="also check the backward under torch.func.vmap over a batch of cotangents")
    p.add_argument("--cotangents", type=_nonneg_int, default=3, metavar="K",
                   help="seeded cotangents for a manual() taking grad_output (default 3; 0 sums the loss)")
    p.add_argument("--baseline", type=_pos_float, default=None, metavar="K",
                   help="below float64: pass where manual's error is at most K times autograd's own error "
                        "in that dtype")
    p.add_argument("--plot", metavar="DIR", help="write a PNG heatmap per failing input into DIR "
                   "(needs matplotlib: the [plot] extra)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (tables, hints, pictures)")
    threads_option(p)
    common(p, json_help="print one JSON document instead of tables (schema in the README)")

    p = sub.add_parser("list", help="list the registry's backward rules",
                       description="List the rules of gradcheck_kit.manual: the torch function each mirrors, "
                                   "whether its backward is differentiable and whether it has a symbolic forward.")
    common(p, json_help="print one JSON document instead of a table")

    p = sub.add_parser("sweep", help="check every rule over every sample against autograd",
                       description="Check rules of the registry over all their samples against autograd.")
    p.add_argument("rules", nargs="*", metavar="RULE", help="rule names (default: every rule)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="cpu (default), cuda or all")
    p.add_argument("--dtype", choices=DTYPES, default="float64", help="dtype of the samples (default float64)")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report of the sweep")
    threads_option(p)
    common(p, json_help="print one JSON document instead of tables")

    sub.add_parser("derive", add_help=False, help="exact symbolic Jacobians with sympy "
                   "(see 'gradcheck-kit derive --help')")
    sub.add_parser("emit", add_help=False, help="write a case's explicit, verified backward as torch-only "
                   "Python (see 'gradcheck-kit emit --help')")
    return parser


# -- entry point ---------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] == "derive":
            return _derive(argv)
        if argv and argv[0] == "emit":  # parsed and run by gradcheck_kit._cli_emit
            from gradcheck_kit import _cli_emit

            return _cli_emit.main(argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        if args.command is None:
            raise UsageError("no command given: use check, list, sweep or derive (see 'gradcheck-kit --help')")
        handler = {"check": _check, "list": _list, "sweep": _sweep}[args.command]
        return handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every other failure is bad input: one line, exit 2
        _error(e, debug)
        return EXIT_USAGE


def _error(e: BaseException, debug: bool) -> None:
    from gradcheck_kit.errors import GradcheckKitError

    if debug:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    if isinstance(e, (UsageError, GradcheckKitError)):
        msg = _first_line(str(e))
    elif isinstance(e, _CaseError):
        msg = _first_line(str(e)) + ("" if debug or e.kit_error else " (run with --debug for the traceback)")
    elif isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
        msg = _first_line(e.args[0])
    else:
        msg = f"{type(e).__name__}: {_first_line(str(e))}"
        if not debug:
            msg += " (run with --debug for the traceback)"
    print(f"error: {msg}", file=sys.stderr)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"


class _CaseError(Exception):
    """An exception raised while checking one case, with the case named in front."""

    def __init__(self, where: str, exc: BaseException):
        from gradcheck_kit.errors import GradcheckKitError

        text = _first_line(str(exc))
        self.kit_error = isinstance(exc, GradcheckKitError)
        if not self.kit_error:
            text = f"{type(exc).__name__}: {text}"
        super().__init__(f"{where}: {text}")


# -- derive (delegated to gradcheck_kit._cli_derive) -----------------------------------

def _derive(argv: list[str]) -> int:
    try:
        from gradcheck_kit import _cli_derive
    except ModuleNotFoundError as e:
        if e.name != "gradcheck_kit._cli_derive":
            raise
        raise UsageError("the derive command is not available in this installation "
                         "(gradcheck_kit._cli_derive is missing)") from e
    parser = _Parser(prog="gradcheck-kit")
    sub = parser.add_subparsers(dest="command")
    _cli_derive.add_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # derive --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    return int(_cli_derive.run(args) or 0)


# -- helpers -------------------------------------------------------------------------

def _stdout_console(json_mode: bool):
    from rich.console import Console

    if json_mode:
        return Console(file=sys.stderr, stderr=True)
    width = None if sys.stdout.isatty() else 160
    return Console(file=sys.stdout, width=width, highlight=False)


def _devices(choice: str) -> list[str]:
    import torch

    if choice == "cpu":
        return ["cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "cuda":
        if n == 0:
            raise UsageError("--device cuda needs a CUDA GPU, but none is visible "
                             "(torch.cuda.is_available() is False)")
        return ["cuda"]
    return ["cpu"] + [f"cuda:{i}" for i in range(n)]


def _dump_json(doc: Any) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _user_stdout_to_stderr(active: bool):
    """With ``--json``, whatever user code prints goes to stderr: stdout holds one document."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


# -- check ---------------------------------------------------------------------------

def _set_threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


@contextlib.contextmanager
def _collect_warnings(into: list):
    """Record the warnings raised inside (torch's included) into ``into``, once each, instead of printing."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = f"{w.category.__name__}: {_first_line(str(w.message))}"
        if text not in into:
            into.append(text)


@contextlib.contextmanager
def _activity(label: str, enabled: bool):
    """A spinner with the elapsed time on stderr while one long step runs (terminal only)."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=Console(file=sys.stderr, stderr=True), transient=True) as bar:
        bar.add_task(label, total=None)
        yield


def _progress_enabled(json_mode: bool) -> bool:
    return not json_mode and sys.stderr.isatty()


def _check_options(args) -> dict:
    return dict(reference=REFERENCES[args.reference], double_backward=args.double_backward, seed=args.seed,
                fd_mode=args.fd_mode, fd_eps=args.fd_eps, fd_projections=args.fd_projections,
                localize=args.localize, order=args.order, forward_ad=args.forward_ad, batched=args.batched,
                cotangents=args.cotangents, baseline=args.baseline)


def _run_case(case, inputs, args, device, dtype, opts) -> Any:
    """``check`` of one case on one device, with the tolerances of the command line and of TOLERANCES.

    Precedence: --atol/--rtol, then the input's own TOLERANCES entry, then the case's. Inputs
    with their own entry are re-checked on their own (``wrt=(name,)``) and replace the first
    run's results for them.
    """
    from gradcheck_kit.compare import check

    manual = "rules" if args.manual == "rules" else case.manual
    cli = {k: v for k, v in (("atol", args.atol), ("rtol", args.rtol)) if v is not None}
    report = check(case.loss, inputs, manual, wrt=case.wrt, device=device, dtype=dtype,
                   **{**opts, **case.tolerance_for(None), **cli})
    if len(cli) == 2:
        return report
    for name, tol in case.per_input_tolerances.items():
        if not any(r.name == name for r in report.results):
            continue
        sub = check(case.loss, inputs, manual, wrt=(name,), device=device, dtype=dtype,
                    **{**opts, **case.tolerance_for(name), **cli})
        mine = [r for r in sub.results if r.name == name]
        out, used = [], False
        for r in report.results:
            if r.name != name:
                out.append(r)
            elif not used:
                out += mine
                used = True
        report.results[:] = out
        report.notes += [n for n in sub.notes if n not in report.notes]
    return report


def _check(args) -> int:
    import torch

    from gradcheck_kit import _format
    from gradcheck_kit.casefile import load_case

    _set_threads(args.threads)
    devices = _devices(args.device)
    dtype = getattr(torch, args.dtype)
    opts = _check_options(args)
    console = _stdout_console(args.json)
    started = time.perf_counter()
    show_progress = _progress_enabled(args.json)
    want_pictures = bool(args.plot or args.html)
    if want_pictures:
        from gradcheck_kit import plot as _plot
        _plot._plt()  # no matplotlib: one clear error before any work

    entries: list[dict] = []
    errors: list[dict] = []
    all_warnings: list[str] = []
    scratch = _TmpDir()  # pictures for --html without --plot: embedded in the page, then removed
    with _user_stdout_to_stderr(args.json):
        for path in args.files:
            caught: list[str] = []
            try:
                with _collect_warnings(caught):
                    case = load_case(path)
            except Exception as e:  # noqa: BLE001 - reported per file, the others still run
                errors.append(_file_error(path, None, e, args.debug))
                continue
            for device in devices:
                caught = list(caught)
                try:
                    with _collect_warnings(caught), _activity(f"checking {case.name} on {device}", show_progress):
                        inputs = case.make_inputs(device, dtype, args.seed)
                        report = _run_case(case, inputs, args, device, dtype, opts)
                except Exception as e:  # noqa: BLE001
                    errors.append(_file_error(path, f"{case.name} ({device}, {args.dtype})", e, args.debug))
                    continue
                for w in caught:
                    note = f"warning raised while checking: {w}"
                    if note not in report.notes:
                        report.notes.append(note)
                all_warnings += [w for w in caught if w not in all_warnings]
                entry = {"file": str(path), "device": device, "dtype": args.dtype, "ok": bool(report.ok),
                         "inputs": _format.inputs_json(report), "report": _report_dict(report),
                         "_report": report, "_case": case, "_pictures": []}
                failing = [r for r in report.results if not r.ok and getattr(r, "order", 1) == 1]
                pairs = {}
                if failing and (want_pictures or not args.json):
                    pairs = _failing_tensors(case, inputs, report, args)
                if failing and want_pictures and pairs:
                    from gradcheck_kit import plot as _plot
                    out_dir = Path(args.plot) if args.plot else scratch.path()
                    prefix = f"{Path(str(path)).stem}-{device.replace(':', '')}-"
                    entry["_pictures"] = _plot.plot_report(report, out_dir, pairs, prefix=prefix, strict=False)
                    if args.plot:
                        entry["pictures"] = [str(p.path) for p in entry["_pictures"]]
                entries.append(entry)
                if not args.json:
                    title = f"{case.name} · {device} · {args.dtype} · {_format.comparison_label(report)}"
                    console.print(_format.report_table(report, title=title))
                    nodes = getattr(report, "nodes", None)
                    if nodes:
                        console.print(_format.nodes_table(nodes))
                    for r in failing:
                        pair = pairs.get(r.name)
                        if pair is not None and pair[0].dim() in (2, 4):
                            console.print(_format.char_heatmap(r, pair[0], pair[1]), markup=False,
                                          highlight=False)
                    notes = _notes(report)
                    if notes:
                        console.print(notes, style="dim", markup=False, highlight=False)
                    for p in entry["_pictures"] if args.plot else []:
                        console.print(f"picture: {p.path}", markup=False, highlight=False)

    ok = all(e["ok"] for e in entries) and not errors
    code = EXIT_USAGE if errors else (EXIT_OK if ok else EXIT_MISMATCH)
    elapsed = time.perf_counter() - started
    n_ok = sum(e["ok"] for e in entries)
    summary = _format.summary_line(n_ok, len(entries), "case checks", elapsed)
    failing_names = [f"{e['_case'].name} ({e['device']}): "
                     + ", ".join(f"{i['name']} at {_format.fmt_index(i['worst_index'])}"
                                 for i in e["inputs"] if not i["ok"])
                     for e in entries if not e["ok"]]
    if failing_names:
        summary += " - mismatch in " + "; ".join(failing_names)
    if errors:
        summary += f"; {len(errors)} error{'s' if len(errors) > 1 else ''} in " + ", ".join(
            Path(e["file"]).name for e in errors)
    for e in errors:
        if e.get("traceback"):
            print(e["traceback"], file=sys.stderr, end="")
        print(f"error: {e['error']}", file=sys.stderr)
    if args.html and (entries or errors):
        _write_check_html(args, entries, errors, summary)
    scratch.cleanup()
    if args.json:
        if entries or len(args.files) > 1:
            _dump_json({"ok": ok, "cases": [{k: v for k, v in e.items() if not k.startswith("_")}
                                            for e in entries],
                        "errors": [{k: v for k, v in e.items() if k != "traceback"} for e in errors],
                        "warnings": all_warnings})
    elif entries:
        console.print(summary, style="bold green" if ok else "bold red", markup=False, highlight=False)
    if args.html and not args.json and (entries or errors):
        console.print(f"report: {args.html}", markup=False, highlight=False)
    return code


def _file_error(path, where, exc, debug: bool) -> dict:
    """One file's error as ``{"file", "error"}``: one line naming the file (and the traceback with --debug)."""
    from gradcheck_kit.errors import GradcheckKitError

    text = _first_line(str(exc))
    if not isinstance(exc, GradcheckKitError):
        text = f"{type(exc).__name__}: {text}"
        if not debug:
            text += " (run with --debug for the traceback)"
    name = Path(str(path)).name
    if where:
        text = f"{where}: {text}"
    elif name not in text:
        text = f"{name}: {text}"
    out = {"file": str(path), "error": text}
    if debug:
        import traceback

        out["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return out


def _report_dict(report) -> dict:
    """``report.to_dict()`` without the per-input list, which ``inputs`` already holds."""
    d = report.to_dict() if hasattr(report, "to_dict") else {}
    return {k: v for k, v in d.items() if k != "results"}


def _failing_tensors(case, inputs, report, args) -> dict:
    """(subject, reference) of each failing input, recomputed for pictures; {} if that fails."""
    from gradcheck_kit import plot as _plot

    names = {r.name for r in report.results if not r.ok}
    kept = {r.name: r.tensors for r in report.results if getattr(r, "tensors", None) is not None}
    if names <= set(kept):
        return kept
    manual = None if args.manual == "rules" else case.manual
    if args.manual == "rules":
        return kept
    try:
        with _collect_warnings([]):
            return {**_plot.gradient_pairs(case.loss, inputs, manual, wrt=case.wrt, seed=args.seed, names=names),
                    **kept}
    except Exception:  # noqa: BLE001 - a picture is an extra; the table has already said everything
        return kept


class _TmpDir:
    """A temporary folder made on first use and removed by ``cleanup()``."""

    def __init__(self):
        self._path: Path | None = None

    def path(self) -> Path:
        if self._path is None:
            import tempfile

            self._path = Path(tempfile.mkdtemp(prefix="gradcheck-kit-"))
        return self._path

    def cleanup(self) -> None:
        if self._path is not None:
            import shutil

            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


def _write_check_html(args, entries, errors, summary) -> None:
    from gradcheck_kit import _format
    from gradcheck_kit.html import Section, write_html

    sections = []
    for e in entries:
        rep = e["_report"]
        sections.append(Section(f"{e['_case'].name} · {e['device']} · {e['dtype']} · "
                                f"{_format.comparison_label(rep)}", rep, pictures=list(e["_pictures"])))
    for e in errors:
        sections.append(Section(Path(e["file"]).name, error=e["error"]))
    write_html(sections, args.html, title="gradcheck-kit check " + " ".join(Path(f).name for f in args.files),
               summary=summary)


def _notes(report) -> str:
    """Extra lines of the report (summed loss, finite-difference mode, kinks, warnings) if it has any."""
    notes = getattr(report, "notes", None)
    if not notes:
        return ""
    if isinstance(notes, str):
        return notes
    return "\n".join(str(n) for n in notes)


# -- list ----------------------------------------------------------------------------

def _torch_names() -> dict:
    """id(function) -> its public dotted name in torch.nn.functional, torch or torch.Tensor."""
    import torch
    import torch.nn.functional as F

    out: dict = {}
    for prefix, mod in (("torch.Tensor", torch.Tensor), ("torch", torch), ("torch.nn.functional", F)):
        for attr in dir(mod):
            if not attr.startswith("_"):
                out[id(getattr(mod, attr, None))] = f"{prefix}.{attr}"
    return out


def _torch_name(fn, known: dict) -> str:
    if id(fn) in known:
        return known[id(fn)]
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qual}" if module else qual


def _list(args) -> int:
    from gradcheck_kit import manual

    rows = []
    for rule in manual.rules():
        mirrors = list(getattr(rule, "mirrors_all", None) or [getattr(rule, "mirrors_name", None)
                                                               or _torch_name(rule.torch_fn, _torch_names())])
        rows.append({
            "name": rule.name,
            "torch_function": mirrors[0],
            "mirrors": mirrors,
            "tensor_args": list(rule.tensor_args),
            "differentiable_backward": bool(rule.differentiable_backward),
            "symbolic": bool(rule.has_symbolic),
        })
    if args.json:
        _dump_json({"rules": rows})
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"{len(rows)} rules in gradcheck_kit.manual", title_justify="left")
    table.add_column("rule", style="bold", no_wrap=True)
    table.add_column("mirrors", overflow="fold")
    table.add_column("tensor args", overflow="fold")
    table.add_column("differentiable backward")
    table.add_column("symbolic forward")
    for r in rows:
        table.add_row(r["name"], "\n".join(r["mirrors"]), ", ".join(r["tensor_args"]),
                      "yes" if r["differentiable_backward"] else "no", "yes" if r["symbolic"] else "no")
    _stdout_console(False).print(table)
    return EXIT_OK


# -- sweep ---------------------------------------------------------------------------

def _sweep(args) -> int:
    import torch

    from gradcheck_kit import _format, manual

    for name in args.rules:
        manual.get(name)  # unknown rule: KeyError naming the closest ones -> exit 2
    try:
        from gradcheck_kit import sweep as sweep_mod
    except ModuleNotFoundError as e:
        if e.name != "gradcheck_kit.sweep":
            raise
        raise UsageError("gradcheck_kit.sweep is not available in this installation") from e

    _set_threads(args.threads)
    devices = _devices(args.device)
    dtype = getattr(torch, args.dtype)
    names = list(args.rules) or None
    console = _stdout_console(args.json)
    started = time.perf_counter()

    results = []
    caught: list[str] = []
    with _user_stdout_to_stderr(args.json), _collect_warnings(caught):
        for device in devices:
            results += [(device, r) for r in _run_sweep(sweep_mod, names, device, dtype,
                                                        _progress_enabled(args.json))]

    entries = []
    for device, r in results:
        report = _format.field(r, "report")
        entry = {"rule": _format.field(r, "rule"), "sample": _format.field(r, "sample"),
                 "device": device, "dtype": args.dtype, "ok": bool(_format.field(r, "ok")),
                 "inputs": _format.inputs_json(report) if report is not None else []}
        err = _format.field(r, "error")
        if err:
            entry["error"] = str(err)
        entries.append(entry)
    ok = all(e["ok"] for e in entries)
    elapsed = time.perf_counter() - started

    if args.html:
        _write_sweep_html(args, results, entries, caught, elapsed)
    if args.json:
        _dump_json({"ok": ok, "rules": entries, "warnings": caught})
        return EXIT_OK if ok else EXIT_MISMATCH

    from rich.table import Table

    per_rule: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        per_rule.setdefault((e["rule"], e["device"]), []).append(e)
    table = Table(title=f"sweep · {args.dtype} · reference autograd", title_justify="left")
    table.add_column("rule", style="bold")
    table.add_column("device")
    table.add_column("samples", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("max abs err", justify="right")
    table.add_column("verdict")
    for (rule, device), es in per_rule.items():
        failed = [e for e in es if not e["ok"]]
        errs = [i["max_abs_err"] for e in es for i in e["inputs"] if i["max_abs_err"] is not None]
        table.add_row(rule, device, str(len(es)), str(len(failed)), _format.fmt_float(max(errs, default=None)),
                      "[green]ok[/green]" if not failed else "[bold red]FAIL[/bold red]")
    console.print(table)
    for e in entries:
        if e["ok"]:
            continue
        detail = e.get("error") or "; ".join(
            f"{i['name']}: max abs err {_format.fmt_float(i['max_abs_err'])} at {_format.fmt_index(i['worst_index'])}"
            + (f" ({i['hint']})" if i["hint"] else "") for i in e["inputs"] if not i["ok"])
        console.print(f"FAIL {e['rule']} {e['sample']} ({e['device']}, {e['dtype']}): {detail}",
                      style="red", markup=False, highlight=False)
    for w in caught:
        console.print(f"warning (once): {w}", style="yellow", markup=False, highlight=False)
    n_ok = sum(e["ok"] for e in entries)
    console.print(_format.summary_line(n_ok, len(entries), "rule samples", elapsed),
                  style="bold green" if ok else "bold red", markup=False, highlight=False)
    if args.html:
        console.print(f"report: {args.html}", markup=False, highlight=False)
    return EXIT_OK if ok else EXIT_MISMATCH


def _write_sweep_html(args, results, entries, caught, elapsed) -> None:
    from gradcheck_kit import _format
    from gradcheck_kit.html import Section, write_html

    n_ok = sum(e["ok"] for e in entries)
    summary = _format.summary_line(n_ok, len(entries), "rule samples", elapsed)
    per_rule: dict = {}
    for e in entries:
        row = per_rule.setdefault((e["rule"], e["device"]), {"rule": e["rule"], "device": e["device"],
                                                              "samples": 0, "failed": 0, "ok": True})
        row["samples"] += 1
        row["failed"] += not e["ok"]
        row["ok"] = row["ok"] and e["ok"]
    sections = [Section(f"sweep · {args.dtype} · reference autograd", rows=list(per_rule.values()),
                        notes=[f"warning (once): {w}" for w in caught])]
    scratch = _TmpDir()
    drawn = 0
    for device, r in results:
        if _format.field(r, "ok"):
            continue
        title = f"{_format.field(r, 'rule')} [{_format.field(r, 'sample')}] · {device} · {args.dtype}"
        report = _format.field(r, "report")
        pictures = []
        if report is not None and drawn < _MAX_SWEEP_PICTURES:
            pictures = _sweep_pictures(r, report, device, args, scratch)
            drawn += bool(pictures)
        sections.append(Section(title, report, error=_format.field(r, "error"), pictures=pictures))
    write_html(sections, args.html, title=f"gradcheck-kit sweep ({args.dtype})", summary=summary)
    scratch.cleanup()


_MAX_SWEEP_PICTURES = 20  # failing samples drawn into a sweep's HTML page


def _sweep_pictures(r, report, device, args, scratch) -> list:
    """Heatmaps of one failing rule sample, recomputed from the sample; [] when they cannot be drawn."""
    import torch

    from gradcheck_kit import manual, plot
    from gradcheck_kit import sweep as sweep_mod

    try:
        plot._plt()
        rule = manual.get(r.rule)
        sample = next(s for s in rule.samples(device, getattr(torch, args.dtype)) if s.name == r.sample)
        loss, man, inputs, wrt = sweep_mod._loss_and_manual(rule, sample, 0)
        with _collect_warnings([]):
            pairs = plot.gradient_pairs(loss, inputs, man, wrt=wrt)
        prefix = "".join(c if c.isalnum() else "_" for c in f"{r.rule}-{r.sample}-{device}") + "-"
        return plot.plot_report(report, scratch.path(), pairs, prefix=prefix, strict=False)
    except Exception:  # noqa: BLE001 - a picture is an extra; the section's table says everything
        return []


def _run_sweep(sweep_mod, names, device, dtype, show: bool = True) -> list:
    """``sweep_mod.sweep(...)`` with a rich progress bar on stderr (on a terminal, not with --json)."""
    import inspect

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    fn = sweep_mod.sweep
    params = inspect.signature(fn).parameters
    if not show:
        return list(fn(names, device=device, dtype=dtype))
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(file=sys.stderr, stderr=True), transient=True) as bar:
        task = bar.add_task(f"sweep {device}", total=None)

        def progress(*a, **kw):
            # accepts progress(done, total[, label]) or progress(result) or progress(label)
            nums = [x for x in a if isinstance(x, int) and not isinstance(x, bool)]
            label = next((x for x in a if isinstance(x, str)), None)
            if len(nums) >= 2:
                bar.update(task, completed=nums[0], total=nums[1])
            else:
                bar.advance(task)
            if label:
                bar.update(task, description=f"sweep {device} {label}")

        kwargs = {"device": device, "dtype": dtype}
        if "progress" in params:
            kwargs["progress"] = progress
        out = fn(names, **kwargs)
        return list(out)


if __name__ == "__main__":
    sys.exit(main())
