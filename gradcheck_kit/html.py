"""A self-contained HTML report: the tables, notes, hints and pictures of one or more checks in one file.

    write_html([Section("conv_relu_conv.py · cpu · float64", report, pictures=[...])], "report.html")
    to_html(report, "report.html")                      # one report, no pictures

Nothing in the page is fetched: the style sheet is inline and every picture is a PNG
embedded as base64 (``data:`` URIs), so the file opens anywhere, offline, and can be kept
as a CI artifact.  The result table shows every field ``Result.to_dict()`` has (in its
order), so fields added to the report later appear without a change here.  No torch,
rich or matplotlib is imported.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Section", "render", "write_html", "to_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #d0d0d0;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr.rowfail td{background:#fde8e8} tr.rowok td{background:#eef8ee}
td{max-width:28em;overflow-wrap:break-word} .wrap{overflow-x:auto}
details{font-size:12px;margin:2px 0} summary{cursor:pointer;color:#444}
.ok{color:#17731f;font-weight:bold} .fail{color:#b00020;font-weight:bold}
.hint{background:#fff7d6;border-left:4px solid #e0b000;padding:4px 8px;margin:4px 0;font-size:13px}
.note{color:#555;font-size:12px} .error{background:#fde8e8;border-left:4px solid #b00020;padding:4px 8px}
img{max-width:100%;border:1px solid #ddd;margin:6px 0} code{background:#f4f4f4;padding:0 3px}
"""


@dataclass
class Section:
    """One block of the page: a title, and a report (or the error that stopped it), with pictures.

    ``pictures`` holds paths of PNG files or ``(caption, bytes)`` pairs; ``notes`` extra lines
    (collected warnings, options); ``rows`` an optional summary table as a list of dicts.
    """

    title: str
    report: Any = None
    error: str | None = None
    pictures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    rows: list = field(default_factory=list)


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return "0" if v == 0 else (f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}")
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_cell(x) for x in v) + ")"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return str(v)


def _dicts(items: Iterable[Any]) -> list[dict]:
    out = []
    for it in items:
        if isinstance(it, dict):
            out.append(it)
        elif hasattr(it, "to_dict"):
            out.append(it.to_dict())
        else:
            out.append(dict(vars(it)))
    return out


# the result table's columns, where present; every other field is in the "all fields" block below it
_MAIN = ("label", "name", "device", "dtype", "shape", "reference", "ok", "max_abs_err", "max_rel_err",
         "worst_index", "manual_value", "reference_value", "mismatched", "numel", "atol", "rtol")


def _table(rows: list[dict], *, status_key: str | None = "ok", columns=None) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    if columns is not None:
        cols = [c for c in columns if c in cols]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cls = ""
        if status_key and status_key in r:
            cls = ' class="rowok"' if r[status_key] else ' class="rowfail"'
        tds = []
        for c in cols:
            v = r.get(c)
            if c in ("shape", "loss_shape") and isinstance(v, (list, tuple)):
                tds.append(f"<td>{_e('x'.join(map(str, v)) or 'scalar')}</td>")
            elif c == status_key and isinstance(v, bool):
                tds.append(f'<td><span class="{"ok" if v else "fail"}">{"ok" if v else "MISMATCH"}</span></td>')
            else:
                tds.append(f"<td>{_e(_cell(v))}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return f"<div class=wrap><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _all_fields(results: list, dicts: list[dict]) -> str:
    """Every field of every result (nulls left out), one vertical table per result, folded away."""
    blocks = []
    for r, d in zip(results, dicts):
        label = getattr(r, "label", None) or d.get("name", "?")
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_cell(v))}</td></tr>" for k, v in d.items()
                       if v is not None and v != [] and v != {})
        blocks.append(f"<details><summary>{_e(label)} · {_e(d.get('reference', ''))}: all fields</summary>"
                      f"<table>{rows}</table></details>")
    return "".join(blocks)


def _picture(p: Any) -> str:
    if isinstance(p, tuple):
        caption, data = p
    else:
        path = Path(getattr(p, "path", p))
        caption, data = path.name, path.read_bytes()
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption class=note>{_e(caption)}</figcaption></figure>")


def _section(s: Section) -> str:
    parts = []
    rep = s.report
    ok = None if rep is None else bool(getattr(rep, "ok", False))
    badge = ("" if ok is None and not s.error else
             '<span class="fail">ERROR</span>' if s.error else
             '<span class="ok">ok</span>' if ok else '<span class="fail">MISMATCH</span>')
    parts.append(f"<h2>{_e(s.title)} {badge}</h2>")
    if s.error:
        parts.append(f'<div class="error">{_e(s.error)}</div>')
    if rep is not None:
        d = rep.to_dict() if hasattr(rep, "to_dict") else {}
        results = list(getattr(rep, "results", None) or [])
        dicts = _dicts(results)
        parts.append(_table(dicts, columns=_MAIN))
        parts.append(_all_fields(results, dicts))
        for r in results:
            if not getattr(r, "ok", True) and getattr(r, "hint", None):
                label = getattr(r, "label", None) or getattr(r, "name", "?")
                parts.append(f'<div class="hint"><b>{_e(label)}</b> ({_e(getattr(r, "reference", ""))}): '
                             f'{_e(r.hint)}</div>')
        nodes = getattr(rep, "nodes", None)
        if nodes:
            parts.append("<h3>per operation</h3>" + _table(_dicts(nodes)))
        other = {k: v for k, v in d.items() if k not in ("results", "notes", "nodes")}
        if other:
            parts.append(_table([other], status_key=None))
        for n in list(getattr(rep, "notes", None) or []):
            parts.append(f'<p class="note">note: {_e(n)}</p>')
    if s.rows:
        parts.append(_table(_dicts(s.rows)))
    for n in s.notes:
        parts.append(f'<p class="note">{_e(n)}</p>')
    for p in s.pictures:
        parts.append(_picture(p))
    return "\n".join(parts)


def render(sections: list[Section], title: str = "gradcheck-kit report", summary: str | None = None) -> str:
    """The page as a string."""
    body = [f"<h1>{_e(title)}</h1>"]
    if summary:
        body.append(f"<p><b>{_e(summary)}</b></p>")
    body += [_section(s) for s in sections]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html(sections: list[Section], path, title: str = "gradcheck-kit report",
               summary: str | None = None) -> Path:
    """Write the page to ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(sections, title, summary), encoding="utf-8")
    return path


def to_html(report, path, *, title: str = "gradcheck-kit report", pictures: list | None = None,
            tensors=None) -> Path:
    """One report as a page (``Report.to_html`` delegates here).

    ``pictures`` (PNG paths or ``(caption, bytes)``) are embedded; without them, failing inputs
    whose tensors are known (``Result.tensors``, or ``tensors`` as for ``plot.plot_report``)
    are drawn when matplotlib is installed.
    """
    import tempfile

    summary = f"{'ok' if report.ok else 'MISMATCH'}: {sum(1 for r in report.results if r.ok)}/" \
              f"{len(report.results)} comparisons passed"
    with tempfile.TemporaryDirectory(prefix="gradcheck-kit-") as tmp:
        if pictures is None and not report.ok:
            from gradcheck_kit.plot import PlotUnavailableError, plot_report

            try:
                pictures = plot_report(report, tmp, tensors, strict=False)
            except PlotUnavailableError:
                pictures = []
        return write_html([Section(title, report, pictures=list(pictures or []))], path, title, summary)
