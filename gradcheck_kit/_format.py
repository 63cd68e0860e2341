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
           "inputs_json", "nodes_table", "char_heatmap", "json_number", "failure_message", "results_of", "summary_line"]


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


def _json_value(v: Any) -> Any:
    """A JSON-safe copy: NaN/inf -> None, tuples -> lists, tensors and other objects -> their text."""
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return json_number(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    try:
        return json_number(float(v)) if not hasattr(v, "shape") else str(v)
    except (TypeError, ValueError):
        return str(v)


def inputs_json(report: Any) -> list[dict]:
    """The ``"inputs"`` list of the ``--json`` document: one entry per checked input and reference.

    Every field of the result's ``to_dict()`` (values, counts, tolerances, kinks, fd mode,
    order, ...), made JSON-safe, with ``name`` the label (``"x (2nd order)"`` for order 2)
    and ``input`` the plain input name.
    """
    out = []
    for r in results_of(report):
        d = r.to_dict() if hasattr(r, "to_dict") else (dict(r) if isinstance(r, dict) else {})
        d = {k: _json_value(v) for k, v in d.items() if k != "tensors"}
        d.update({
            "name": _label(r, False),
            "input": field(r, "name"),
            "ok": bool(field(r, "ok", False)),
            "max_abs_err": json_number(field(r, "max_abs_err")),
            "max_rel_err": json_number(field(r, "max_rel_err")),
            "worst_index": _json_index(field(r, "worst_index")),
            "hint": field(r, "hint"),
            "reference": field(r, "reference"),
        })
        out.append(d)
    return out


def nodes_table(nodes: Iterable[Any]):
    """A rich table of per-operation results (``report.nodes``): op, where, verdict, errors, index, hint."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="per operation, in forward order (--localize)", title_justify="left")
    for col in ("op", "where", "verdict", "max abs err", "max rel err", "worst index", "hint"):
        table.add_column(col, justify="right" if col.startswith("max") else "left",
                         overflow="fold" if col in ("where", "hint") else "ellipsis")
    for n in nodes:
        d = n.to_dict() if hasattr(n, "to_dict") else dict(n)
        ok = bool(d.get("ok", False))
        table.add_row(escape(str(d.get("op", "?"))), escape(str(d.get("where") or "")),
                      "[green]ok[/green]" if ok else "[bold red]MISMATCH[/bold red]",
                      fmt_float(d.get("max_abs_err")), fmt_float(d.get("max_rel_err")),
                      fmt_index(d.get("worst_index")), escape(str(d.get("hint") or "")))
    return table


_SHADES = " .:-=+*#%@"


def char_heatmap(result: Any, manual: Any, reference: Any, *, max_rows: int = 16, max_cols: int = 64) -> str:
    """Where the mismatches of one 2-d or 4-d input sit, as characters.

    An element mismatches where |manual - reference| > atol + rtol |reference| (the result's
    tolerances).  A 4-d tensor (N, C, H, W) is shown as one H x W map, each cell counting the
    mismatches over N and C; larger maps are pooled into blocks.  Darker characters mean more
    mismatches in the cell (' ' none, '@' the most); a per-channel count follows for 4-d.
    """
    import numpy as np

    m = np.asarray(manual.detach().cpu().double().numpy() if hasattr(manual, "detach") else manual, float)
    r = np.asarray(reference.detach().cpu().double().numpy() if hasattr(reference, "detach") else reference, float)
    atol = float(field(result, "atol", 0.0) or 0.0)
    rtol = float(field(result, "rtol", 0.0) or 0.0)
    bad = ~(np.abs(m - r) <= atol + rtol * np.abs(r))
    name = field(result, "name", "input")
    head = f"where {name} mismatches"
    if bad.ndim == 4:
        per_channel = bad.sum(axis=(0, 2, 3))
        grid = bad.sum(axis=(0, 1)).astype(float)
        head += f" (H x W, counted over N={bad.shape[0]} and C={bad.shape[1]})"
    else:
        per_channel = None
        grid = bad.astype(float)
    H, W = grid.shape
    bh, bw = max(1, -(-H // max_rows)), max(1, -(-W // max_cols))
    if bh > 1 or bw > 1:
        ph, pw = -(-H // bh) * bh, -(-W // bw) * bw
        padded = np.zeros((ph, pw))
        padded[:H, :W] = grid
        grid = padded.reshape(ph // bh, bh, pw // bw, bw).sum(axis=(1, 3))
        head += f", {bh}x{bw} blocks"
    top = grid.max()
    lines = [head + ":"]
    for row in grid:
        cells = ["" if top == 0 else _SHADES[0 if v == 0 else 1 + int((len(_SHADES) - 2) * v / top)] for v in row]
        lines.append("  |" + "".join(c or " " for c in cells) + "|")
    if per_channel is not None and bad.shape[1] > 1:
        lines.append("  mismatches per channel: " + " ".join(str(int(c)) for c in per_channel[:32])
                     + (" ..." if bad.shape[1] > 32 else ""))
    return "\n".join(lines)


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
