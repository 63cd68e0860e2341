"""``gradcheck-kit derive``: exact symbolic Jacobians of the registry's rules (see ``gradcheck_kit.derive``).

    gradcheck-kit derive conv1d --shape input=1,1,4 --value weight=3,2 --shape weight=1,1,2 --wrt input
    gradcheck-kit derive conv2d --shape input=1,1,4,4 --shape weight=1,1,2,2 --param stride=2 --wrt weight --latex
    gradcheck-kit derive conv2d --verify                 # every float64 sample of the rule
    gradcheck-kit derive --verify-all                    # every rule with a symbolic forward

Safety: user text never becomes code.  ``--shape``, ``--value`` and ``--param`` are parsed
into Python literals by walking their syntax tree and accepting only numbers, tuples and
lists of numbers, ``True``/``False``/``None`` and strings (``"same"``, or a bare word such
as ``same``).  There is no ``eval`` and no ``sympify`` of raw text.

Exit codes: 0 agreed (or nothing to check), 1 a backward disagrees with the exact
Jacobian, 2 bad input (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import sys
from typing import Any, Sequence

__all__ = ["add_parser", "run", "parse_args", "parse_literal", "parse_shape", "parse_assignment"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2

_MAX_TEXT = 2000            # characters in one --shape/--value/--param
_MAX_SYMBOLS = 4000         # symbolic elements a derivation may create
_MAX_PRINT = 4096           # Jacobian entries printed as a matrix
DEFAULT_MAX_ENTRIES = 100_000  # output elements x symbolic input elements: ~10 s of sympy on one core
_PROGRESS_ROWS = 200        # Jacobians with more rows than this show a progress bar (on a terminal)
# keyword parameters that may stay None whatever the rule (torch's legacy and dtype arguments)
_OPTIONAL_NONE = {"dtype", "out", "_stacklevel", "size_average", "reduce", "weight", "pos_weight", "stride",
                  "divisor_override", "rounding_mode", "value"}
_DTYPES = {"float64": "float64", "double": "float64", "float": "float64", "float32": "float32",
           "int64": "int64", "long": "int64", "int": "int64", "bool": "bool"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

EXAMPLES = """\
examples:
  gradcheck-kit derive conv1d --shape input=1,1,4 --shape weight=1,1,2 --value weight=3,2 --wrt input
  gradcheck-kit derive conv2d --shape input=1,1,4,4 --shape weight=1,1,2,2 --param stride=2 --wrt weight --latex
  gradcheck-kit derive conv2d --shape input=1,1,3,3 --shape weight=1,1,2,2 --param padding=same --verify
  gradcheck-kit derive relu --verify
  gradcheck-kit derive --verify-all

values: --shape NAME=D1,D2,... makes NAME a tensor of fresh symbols NAME_i_j...;
--value NAME=V1,V2,... (or nested [[...]]) gives numbers, reshaped to NAME's --shape
if one is given; NAME:int64=... keeps integers (class targets).  --param KEY=VALUE
takes ints, floats, tuples, True/False/None and words such as same or 'valid'.
exit codes: 0 agreed, 1 a backward disagrees with the exact Jacobian, 2 bad input"""


def _error_cls():
    from gradcheck_kit.errors import InvalidParameterError

    return InvalidParameterError


# -- literal parsing (no eval) --------------------------------------------------------------

def parse_literal(text: str, *, what: str, allow_str: bool = False) -> Any:
    """``text`` as a literal: numbers, tuples/lists of them, True/False/None, and strings if ``allow_str``.

    The text is parsed (``ast.parse``) and its tree is walked; any node other than a
    constant, a tuple, a list or a sign applied to a number is rejected.
    """
    err = _error_cls()
    if len(text) > _MAX_TEXT:
        raise err(f"{what} is longer than {_MAX_TEXT} characters")
    text = text.strip()
    if allow_str and _NAME.match(text) and text not in ("True", "False", "None"):
        return text  # a bare word: padding=same
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise err(f"{what}: {text!r} is not a number, a tuple of numbers or a word") from None

    def walk(node, depth=0):
        if depth > 8:
            raise err(f"{what}: {text!r} is nested too deeply")
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or v is None or isinstance(v, (int, float)):
                if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**12:
                    raise err(f"{what}: {v} is too large")
                return v
            if isinstance(v, str) and allow_str and _NAME.match(v):
                return v
            raise err(f"{what}: {text!r} holds {type(v).__name__} {v!r}, which is not allowed here")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand, depth + 1)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise err(f"{what}: a sign can only precede a number, got {text!r}")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [walk(e, depth + 1) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        raise err(f"{what}: {text!r} is not a literal (only numbers, tuples, True/False/None"
                  f"{' and words' if allow_str else ''} are accepted)")

    return walk(tree.body)


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``; NAME may carry a dtype suffix ``NAME:int64``."""
    err = _error_cls()
    if "=" not in text:
        raise err(f"{option} expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    name = name.strip()
    base = name.split(":", 1)[0]
    if not _NAME.match(base):
        raise err(f"{option}: {name!r} is not a valid name")
    return name, value


def parse_shape(text: str, *, what: str) -> tuple[int, ...]:
    """``1,1,4,4`` (or ``(1, 1, 4, 4)``, ``4``, ``()``) -> a tuple of non-negative ints."""
    err = _error_cls()
    text = text.strip()
    if text in ("", "()", "scalar"):
        return ()
    v = parse_literal(text, what=what)
    v = (v,) if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(v, (tuple, list)) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in v):
        raise err(f"{what}: a shape is a comma-separated list of non-negative ints, got {text!r}")
    if math.prod(v) > _MAX_SYMBOLS:
        raise err(f"{what}: {math.prod(v)} elements is too many for a symbolic derivation "
                  f"(at most {_MAX_SYMBOLS})")
    return tuple(v)


def _flatten(v):
    if isinstance(v, (list, tuple)):
        for e in v:
            yield from _flatten(e)
    else:
        yield v


def _nested_shape(v, what):
    if not isinstance(v, (list, tuple)):
        return ()
    if not v:
        return (0,)
    subs = {_nested_shape(e, what) for e in v}
    if len(subs) != 1:
        raise _error_cls()(f"{what}: the nested lists are ragged")
    return (len(v),) + subs.pop()


def _tensor_from(name: str, text: str, shape, torch):
    err = _error_cls()
    base, _, dt = name.partition(":")
    if dt and dt not in _DTYPES:
        raise err(f"--value {name}: unknown dtype {dt!r} (use one of {', '.join(sorted(set(_DTYPES)))})")
    v = parse_literal(text, what=f"--value {base}")
    flat = list(_flatten(v))
    if not all(isinstance(e, (int, float)) for e in flat):
        raise err(f"--value {base}: values must be numbers")
    dtype = getattr(torch, _DTYPES[dt or "float64"])
    if shape is not None:
        if len(flat) != math.prod(shape):
            raise err(f"--value {base}: {len(flat)} values do not fill shape {shape}")
        return torch.tensor(flat, dtype=dtype).reshape(shape)
    nshape = _nested_shape(v, f"--value {base}")
    return torch.tensor(flat, dtype=dtype).reshape(nshape)


# -- parser ---------------------------------------------------------------------------------

def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``derive`` subcommand to an argparse ``subparsers`` object; returns it."""
    p = subparsers.add_parser(
        "derive", help="exact symbolic Jacobians with sympy, and the exact check of a rule's backward",
        description="Build a rule's forward over sympy symbols, print its exact Jacobian, and check "
                    "the rule's explicit backward against it (no finite-difference noise).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rule", nargs="?", metavar="RULE", help="rule name (see 'gradcheck-kit list')")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="make tensor argument NAME a tensor of fresh symbols with this shape")
    p.add_argument("--value", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="give tensor argument NAME numeric values (exact rationals); NAME:int64=... for integers")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword parameter of the rule, e.g. stride=2, padding=same, padding=(1,0)")
    p.add_argument("--wrt", action="append", default=None, metavar="NAME",
                   help="differentiate with respect to NAME (repeatable; default: every --shape input)")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of a pretty print")
    p.add_argument("--verify", action="store_true",
                   help="check the rule's explicit float64 backward against the exact Jacobian")
    p.add_argument("--verify-all", action="store_true",
                   help="verify every rule that has a symbolic forward, over its samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the random point and cotangent (default 0)")
    p.add_argument("--max-elements", type=int, default=None, metavar="N",
                   help=f"size limit. A derivation (--shape) is refused before any symbolic work when its "
                        f"estimate, output elements x symbolic input elements, exceeds N (default "
                        f"{DEFAULT_MAX_ENTRIES}); --verify/--verify-all skip samples with more than N "
                        f"differentiable input elements (default 500)")
    p.add_argument("--simplify", action="store_true",
                   help="sympy.simplify every printed output and Jacobian entry (slower)")
    p.add_argument("--plot", metavar="FILE", help="draw the Jacobian's structure (nonzero pattern, values as "
                   "colour) into a PNG (needs matplotlib: the [plot] extra)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return p


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a ``derive`` command line (with or without the leading ``derive``), for tests and scripts."""
    argv = list(argv)
    if not argv or argv[0] != "derive":
        argv = ["derive", *argv]
    parser = _ArgParser(prog="gradcheck-kit")
    add_parser(parser.add_subparsers(dest="command", parser_class=_ArgParser))
    return parser.parse_args(argv)


# -- commands -------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``derive`` command; returns the exit code (errors: ``error:`` line, 2)."""
    from gradcheck_kit.errors import GradcheckKitError

    try:
        if args.verify_all:
            if args.rule or args.shape or args.value or args.param or args.wrt:
                raise _error_cls()("--verify-all takes no RULE, --shape, --value, --param or --wrt")
            return _verify_all(args)
        if not args.rule:
            raise _error_cls()("derive needs a RULE (or --verify-all); see 'gradcheck-kit derive --help'")
        if not args.shape and not args.value:
            if args.verify:
                return _verify_samples(args)
            raise _error_cls()("give at least one --shape NAME=D1,D2,... to derive, or --verify to "
                               "check the rule's samples")
        return _derive(args)
    except GradcheckKitError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {_first_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "unknown error"


def _rule(name):
    from gradcheck_kit import derive

    rule = derive._rule(name)
    derive._need_symbolic(rule)
    return rule


def _params(rule, items) -> dict:
    import difflib
    import inspect

    err = _error_cls()
    sig = inspect.signature(rule.backward_impl)
    allowed = [n for n, p in sig.parameters.items()
               if p.kind == p.KEYWORD_ONLY and n != "needs_input_grad"]
    params = {}
    for item in items:
        key, value = parse_assignment(item, "--param")
        if ":" in key:
            raise err(f"--param {key}: a parameter takes no dtype suffix")
        if allowed and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (parameters: {', '.join(allowed)})"
            raise err(f"{rule.name} has no parameter {key!r}{hint}")
        v = parse_literal(value, what=f"--param {key}", allow_str=True)
        params[key] = tuple(v) if isinstance(v, list) else v
    return params


def _inputs(rule, args, torch) -> dict:
    err = _error_cls()
    shapes, values = {}, {}
    for item in args.shape:
        name, text = parse_assignment(item, "--shape")
        if ":" in name:
            raise err(f"--shape {name}: a shape takes no dtype suffix")
        if name in shapes:
            raise err(f"--shape {name} is given twice")
        shapes[name] = parse_shape(text, what=f"--shape {name}")
    for item in args.value:
        name, text = parse_assignment(item, "--value")
        base = name.split(":", 1)[0]
        if base in values:
            raise err(f"--value {base} is given twice")
        values[base] = (name, text)
    for name in [*shapes, *values]:
        if name not in rule.tensor_args:
            raise err(f"{rule.name} has no tensor argument {name!r} (arguments: {', '.join(rule.tensor_args)})")
    inputs = {}
    for name in rule.tensor_args:
        if name in values:
            inputs[name] = _tensor_from(values[name][0], values[name][1], shapes.get(name), torch)
        elif name in shapes:
            inputs[name] = shapes[name]
    total = sum(math.prod(s) for n, s in shapes.items() if n not in values)
    if total > _MAX_SYMBOLS:
        raise err(f"{total} symbols is too many for a symbolic derivation (at most {_MAX_SYMBOLS})")
    return inputs


def _required_params(rule, params) -> None:
    """A keyword parameter without a default (kernel_size, normalized_shape, ...) must be given."""
    import inspect

    sig = inspect.signature(rule.backward_impl)
    for n, p in sig.parameters.items():
        if (p.kind == p.KEYWORD_ONLY and p.default is p.empty and not n.startswith("needs_")
                and n not in params):
            raise _error_cls()(f"{rule.name} needs --param {n}=...")


def _unset_none_params(rule, params) -> list[str]:
    import inspect

    sig = inspect.signature(rule.backward_impl)
    return [n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and p.default is None
            and n not in params and n not in _OPTIONAL_NONE]


def estimate(rule, inputs, params, torch) -> tuple[int, int]:
    """(output elements, symbolic input elements) from a numeric forward on stand-in values: no sympy."""
    args = []
    for name in rule.tensor_args:
        spec = inputs.get(name)
        if isinstance(spec, tuple):
            spec = torch.full(spec, 0.5, dtype=torch.float64)
        args.append(spec)
    while args and args[-1] is None:
        args.pop()
    n_sym = sum(math.prod(s) for s in inputs.values() if isinstance(s, tuple))
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out = rule.forward(*args, **params)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(int(o.numel()) for o in outs if hasattr(o, "numel")), n_sym


def _derive(args) -> int:
    import sympy
    import torch

    from gradcheck_kit import derive
    from gradcheck_kit.errors import GradcheckKitError, InvalidInputError

    rule = _rule(args.rule)
    params = _params(rule, args.param)
    _required_params(rule, params)
    inputs = _inputs(rule, args, torch)
    limit = args.max_elements if args.max_elements is not None else DEFAULT_MAX_ENTRIES
    try:
        n_out, n_sym = estimate(rule, inputs, params, torch)
    except Exception:  # noqa: BLE001 - torch refused: the symbolic forward below says why, in its words
        n_out, n_sym = None, None
    if n_out is not None and n_out * n_sym > limit:
        raise _error_cls()(f"{rule.name} on these shapes has {n_out} output elements x {n_sym} symbolic inputs "
                           f"= {n_out * n_sym} Jacobian entries to build, more than --max-elements {limit}; "
                           f"use smaller shapes (or raise --max-elements)")
    try:
        d = derive.derivation(rule, inputs, params, args.wrt)
    except GradcheckKitError:
        raise
    except Exception as e:  # the rule's symbolic forward refused these inputs
        unset = _unset_none_params(rule, params)
        if unset:
            raise InvalidInputError(f"{rule.name} needs --param {unset[0]}=... (its symbolic forward failed "
                                    f"without it: {_first_line(e)})") from e
        raise InvalidInputError(f"{rule.name} cannot run on these inputs: {_first_line(e)}") from e
    m, n = d.output.size, len(d.wrt_symbols)
    with _bar("Jacobian rows", m, enabled=m > _PROGRESS_ROWS and sys.stderr.isatty()) as tick:
        d.jacobian(progress=tick)
    if args.simplify:
        d = d.simplified()
    if args.plot:
        from gradcheck_kit import plot

        plot.jacobian_picture(d, args.plot)
    if m * n <= _MAX_PRINT:
        print(d.latex() if args.latex else d.pretty())
    else:
        J = d.jacobian()
        nnz = len(J.todok()) if hasattr(J, "todok") else sum(1 for e in J if e != 0)
        fwd = sympy.latex(d.forward()) if args.latex else sympy.pretty(d.forward())
        print(f"{d._header()}\n\ny =\n{fwd}\n\nJacobian: {m} x {n}, {nnz} nonzeros "
              f"(more than {_MAX_PRINT} entries: not printed; use smaller shapes)")
    if args.plot:
        print(f"picture: {args.plot}")
    if not args.verify:
        return EXIT_OK
    sample = _sample_from(rule, inputs, params, args.seed, torch)
    res = derive.verify(rule, sample, seed=args.seed, max_elements=args.max_elements or 10**6)
    print()
    for r in res:
        print(f"verify: {r}")
    return EXIT_OK if all(r.ok for r in res) else EXIT_MISMATCH


class _bar:
    """A rich progress bar on stderr for ``total`` steps; yields ``tick(i, total)``. Silent when disabled."""

    def __init__(self, label: str, total: int, *, enabled: bool):
        self.label, self.total, self.enabled, self._p = label, total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True), transient=True)
        self._p.__enter__()
        task = self._p.add_task(self.label, total=self.total)
        return lambda i, total: self._p.update(task, completed=i + 1)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False


def _sample_from(rule, inputs, params, seed, torch):
    """The command line's inputs as a float64 sample: symbols get random dyadic values (k/64)."""
    from gradcheck_kit.manual.registry import Sample

    gen = torch.Generator().manual_seed(seed)
    args = []
    for name in rule.tensor_args:
        spec = inputs.get(name)
        if isinstance(spec, tuple):
            spec = torch.round(torch.randn(spec, generator=gen, dtype=torch.float64) * 64) / 64
        elif isinstance(spec, torch.Tensor) and spec.is_floating_point():
            spec = spec.to(torch.float64)
        args.append(spec)
    while args and args[-1] is None:
        args.pop()
    return Sample(tuple(args), dict(params), "command line")


def _verify_samples(args) -> int:
    from gradcheck_kit import derive

    rule = _rule(args.rule)
    if args.param or args.wrt:
        raise _error_cls()("--param and --wrt need --shape; without --shape, --verify checks the rule's samples")
    res = derive.verify(rule, seed=args.seed, max_elements=args.max_elements or derive.MAX_ELEMENTS)
    _print_results(res)
    return EXIT_OK if all(r.ok for r in res) else EXIT_MISMATCH


def _print_results(results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="exact Jacobian vs explicit backward (float64)")
    for col in ("rule", "sample", "result", "max abs err", "Jacobian", "time"):
        table.add_column(col, justify="right" if col in ("max abs err", "time") else "left")
    for r in results:
        if r.skipped:
            table.add_row(r.rule, r.sample, "[yellow]skipped[/]", "", r.reason, "")
            continue
        state = "[green]ok[/]" if r.ok else "[red]DISAGREES[/]"
        note = f"{r.n_outputs}x{r.n_inputs}, {r.nnz} nnz"
        if not r.ok:
            note += f"; {r.worst or r.reason}"
        table.add_row(r.rule, r.sample, state, f"{r.max_abs_err:.2e}", note, f"{r.seconds:.2f}s")
    Console(width=160).print(table)


def _verify_all(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gradcheck_kit import derive

    names = derive.symbolic_rules()
    if not names:
        print("no rule has a symbolic forward")
        return EXIT_OK
    results, crashed = [], []
    err_console = Console(stderr=True, quiet=not sys.stderr.isatty())
    with Progress(TextColumn("[bold]derive --verify-all[/] {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("", total=len(names))
        for name in names:
            bar.update(task, description=name)
            try:
                results.extend(derive.verify(name, seed=args.seed,
                                             max_elements=args.max_elements or derive.MAX_ELEMENTS))
            except Exception as e:  # one broken rule must not hide the others
                if args.debug:
                    raise
                crashed.append(f"{name}: {type(e).__name__}: {_first_line(e)}")
            bar.advance(task)
    bad = [r for r in results if not r.ok]
    checked = [r for r in results if not r.skipped]
    skipped = len(results) - len(checked)
    if bad:
        _print_results(bad)
    for line in crashed:
        print(f"crashed: {line}")
    worst = max((r.max_abs_err for r in checked), default=0.0)
    print(f"{len(names)} rules, {len(checked)} samples checked, {skipped} skipped, "
          f"{len(bad)} disagree, {len(crashed)} crashed; largest |backward - exact| = {worst:.2e}")
    return EXIT_MISMATCH if bad or crashed else EXIT_OK
