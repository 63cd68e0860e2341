"""Formatting of comparison reports, shared by the CLI and the pytest plugin.

One ``Report`` (``gradcheck_kit.compare``) feeds three views:

* ``report_table``: a rich table, one row per checked input
  (input, shape, max abs err, max rel err, worst index, verdict, hint);
* ``inputs_json``: the ``"inputs"`` entries of the ``--json`` document;
* ``failure_message``: text that reads like ``torch.testing.assert_close``'s.

Only ``report_table``/``render`` import rich; nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["field", "fmt_float", "fmt_index", "fmt_shape", "fmt_dtype", "report_table", "render",
           "inputs_json", "json_number", "failure_message", "results_of", "summary_line"]


def field(obj: Any, key: str, default: Any = None) -> Any:
    """``obj.key`` or ``obj[key]``: results may be dataclasses or dicts."""
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def results_of(report: Any) -> list:
    return list(field(report, "results", None) or [])


def fmt_float(v: Any) -> str:
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f == 0:
        return "0"
    return f"{f:.3g}" if 1e-3 <= abs(f) < 1e4 else f"{f:.2e}"


def fmt_index(idx: Any) -> str:
    if idx is None:
        return "-"
    try:
        t = tuple(int(i) for i in idx)
    except TypeError:
        return str(idx)
    return "(" + ", ".join(str(i) for i in t) + ("," if len(t) == 1 else "") + ")"


def fmt_shape(shape: Any) -> str:
    if shape is None:
        return "-"
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError:
        return str(shape)
    return "x".join(str(d) for d in dims) or "scalar"


def fmt_dtype(dtype: Any) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "-"


def json_number(v: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become ``None`` (JSON has neither)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _json_index(idx: Any) -> list | None:
    if idx is None:
        return None
    try:
        return [int(i) for i in idx]
    except TypeError:
        return None


def _label(r: Any, with_reference: bool) -> str:
    name = str(field(r, "label", None) or field(r, "name", "?"))  # label: "x (2nd order)"
    ref = field(r, "reference")
    if with_reference and ref:
        mode = field(r, "fd_mode")
        name += f" [{ref}{', ' + mode if mode else ''}]"
    return name


def comparison_label(report: Any) -> str:
    """``manual vs autograd``, ``autograd vs finite-difference (full)``, ... from the results."""
    results = results_of(report)
    subject = next((field(r, "subject") for r in results if field(r, "subject")), "manual")
    refs: list[str] = []
    for r in results:
        ref = field(r, "reference") or field(report, "reference") or "autograd"
        mode = field(r, "fd_mode")
        label = f"{ref} ({mode})" if mode else ref
        if label not in refs:
            refs.append(label)
    if not refs:
        refs = [str(field(report, "reference", "autograd"))]
    return f"{subject} vs {' and '.join(refs)}"


def _several_references(results: list) -> bool:
    return len({field(r, "reference") for r in results}) > 1


def inputs_json(report: Any) -> list[dict]:
    """The ``"inputs"`` list of the ``--json`` document: one entry per checked input."""
    out = []
    for r in results_of(report):
        out.append({
            "name": _label(r, False),
            "ok": bool(field(r, "ok", False)),
            "max_abs_err": json_number(field(r, "max_abs_err")),
            "max_rel_err": json_number(field(r, "max_rel_err")),
            "worst_index": _json_index(field(r, "worst_index")),
            "hint": field(r, "hint"),
            "reference": field(r, "reference"),
        })
    return out


def report_table(report: Any, title: str | None = None):
    """A rich ``Table``: input, shape, max abs err, max rel err, worst index, verdict, hint."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title) if title else None, title_justify="left", show_lines=False, expand=False)
    table.add_column("input", style="bold")
    table.add_column("shape")
    table.add_column("max abs err", justify="right")
    table.add_column("max rel err", justify="right")
    table.add_column("worst index")
    table.add_column("verdict")
    table.add_column("hint", overflow="fold")
    results = results_of(report)
    several = _several_references(results)
    for r in results:
        ok = bool(field(r, "ok", False))
        verdict = "[green]ok[/green]" if ok else "[bold red]MISMATCH[/bold red]"
        if not ok:
            mism, numel = field(r, "mismatched"), field(r, "projections") or field(r, "numel")
            if mism is not None and numel:
                verdict += f" {int(mism)}/{int(numel)}"
        table.add_row(escape(_label(r, several)), fmt_shape(field(r, "shape")), fmt_float(field(r, "max_abs_err")),
                      fmt_float(field(r, "max_rel_err")), fmt_index(field(r, "worst_index")),
                      verdict, escape(field(r, "hint") or ""))
    return table


def render(renderable: Any, width: int = 120) -> str:
    """Plain text (no colour) of a rich renderable."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False).print(renderable)
    return buf.getvalue().rstrip("\n")


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%" if n else "-"


def failure_message(report: Any, header: str | None = None) -> str:
    """``torch.testing.assert_close``-like text for every failing input, then the table."""
    own = getattr(report, "failure_message", None)
    if callable(own):  # compare.Report words it itself
        return own() + "\n\n" + render(report_table(report))  # its blocks name device and dtype
    lines = [header or "Manual gradients do not match the reference!"]
    for r in results_of(report):
        if field(r, "ok", False):
            continue
        name = field(r, "name", "?")
        where = ", ".join(x for x in (str(field(r, "device", "") or ""), fmt_dtype(field(r, "dtype")),
                                      f"reference {field(r, 'reference')}" if field(r, "reference") else "")
                          if x and x != "-")
        lines.append("")
        lines.append(f"Gradients w.r.t. {name!r} are not close ({where})." if where
                     else f"Gradients w.r.t. {name!r} are not close.")
        mism, numel = field(r, "mismatched"), field(r, "numel")
        if mism is not None and numel is not None:
            lines.append(f"Mismatched elements: {int(mism)} / {int(numel)} ({_pct(int(mism), int(numel))})")
        idx = fmt_index(field(r, "worst_index"))
        lines.append(f"Greatest absolute difference: {fmt_float(field(r, 'max_abs_err'))} at index {idx} "
                     f"(up to {fmt_float(field(r, 'atol'))} allowed)")
        lines.append(f"Greatest relative difference: {fmt_float(field(r, 'max_rel_err'))} at index {idx} "
                     f"(up to {fmt_float(field(r, 'rtol'))} allowed)")
        mv, rv = field(r, "manual_value"), field(r, "reference_value")
        if mv is not None or rv is not None:
            lines.append(f"At index {idx}: manual {fmt_float(mv)}, reference {fmt_float(rv)}")
        hint = field(r, "hint")
        if hint:
            lines.append(f"Hint: {hint}")
    lines.append("")
    lines.append(render(report_table(report)))
    return "\n".join(lines)


def summary_line(n_ok: int, n_total: int, what: str = "checks", seconds: float | None = None) -> str:
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    failed = n_total - n_ok
    if failed == 0:
        return f"{n_ok}/{n_total} {what} passed{took}"
    return f"{failed}/{n_total} {what} FAILED, {n_ok} passed{took}"


def count(items: Iterable[Any]) -> tuple[int, int]:
    items = list(items)
    return sum(1 for i in items if field(i, "ok", False)), len(items)
