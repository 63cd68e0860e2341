"""``gradcheck-kit emit``: a case file's explicit backward as a Python module (see ``gradcheck_kit.emit``).

    gradcheck-kit emit cases/conv_relu_conv.py                 # print it (highlighted on a terminal)
    gradcheck-kit emit cases/tanh_mlp.py -o tanh_mlp_grads.py --wrt w1,b1

The case's ``inputs("cpu", float64)`` (after ``torch.manual_seed(--seed)``) fix the shapes the
module is written for; ``--wrt`` (default: the case's ``WRT``, else every floating input) the
gradients it returns.  The module is verified against autograd before it is printed or written.

Exit codes: 0 emitted and verified, 1 verification failed (nothing is written), 2 bad input
(an op with no emission template, a custom autograd.Function, a broken case file: one
``error:`` line on stderr naming the op and its call site; ``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["add_parser", "run", "main"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise _Usage(f"{message} (see 'gradcheck-kit emit --help')")


class _Usage(Exception):
    """A bad command line: one error line, exit 2."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``emit`` subcommand to an argparse ``subparsers`` object; returns it."""
    p = subparsers.add_parser(
        "emit", help="write a case's explicit, verified backward as a torch-only Python module",
        description="Trace the case file's loss and write a module defining loss_and_grads(**inputs) -> "
                    "(loss, {name: gradient}): the forward, then each op's backward formula in reverse "
                    "order, in public differentiable torch ops only. It is checked against autograd "
                    "(float64, first and second order) before it is printed or written.",
        epilog="exit codes: 0 emitted and verified, 1 verification failed, 2 bad input "
               "(an op without an emission template: one error line naming it and its call site)")
    p.add_argument("file", metavar="CASE.py", help="case file defining inputs(device, dtype) and loss(...)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the module to FILE instead of printing it")
    p.add_argument("--wrt", metavar="NAMES", help="comma-separated inputs to differentiate, e.g. x,w1 "
                   "(default: the case's WRT, else every floating-point input)")
    p.add_argument("--seed", type=int, default=0, help="seed of torch's generator before inputs() (default 0)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads (default 1, right for a shared machine; 0 keeps torch's default)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``gradcheck-kit emit ARGS``: parse ``argv`` (the arguments after ``emit``) and run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="gradcheck-kit")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    try:
        args = parser.parse_args(["emit", *argv])
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``emit`` command; returns the exit code."""
    try:
        source = _emit(args)
    except Exception as e:
        from gradcheck_kit.errors import EmitVerificationError, GradcheckKitError

        if args.debug:
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        text = _first_line(str(e))
        if not isinstance(e, GradcheckKitError):
            text = f"{type(e).__name__}: {text}"
        print(f"error: {text}", file=sys.stderr)
        return EXIT_MISMATCH if isinstance(e, EmitVerificationError) else EXIT_USAGE
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(source)
        except OSError as e:
            print(f"error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {args.output}: verified against autograd (float64, first and second order)",
              file=sys.stderr)
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(source, "python", theme="ansi_dark", background_color="default"))
    else:
        sys.stdout.write(source)
    return EXIT_OK


def _emit(args) -> str:
    import torch

    from gradcheck_kit.casefile import load_case
    from gradcheck_kit.emit import backward_source

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    case = load_case(args.file)
    wrt = tuple(w.strip() for w in args.wrt.split(",") if w.strip()) if args.wrt else case.wrt
    inputs = case.make_inputs("cpu", torch.float64, args.seed)
    return backward_source(case.loss, inputs, wrt)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"
