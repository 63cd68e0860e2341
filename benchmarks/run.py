"""Side-by-side benchmarks: explicit (manual) backward rules against torch.autograd, and more.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--json PATH] [--only GROUP,...] [--repeats N]

One process runs every group in turn (seed002, engine, conv, rules, check, derive, cli), warm-up
first, medians over interleaved repeats (benchmarks/harness.py), and prints one markdown
table: each row's figure next to its goal.  The JSON file (default
benchmarks/results/<device>[-quick].json) holds the same rows plus the machine.
``--quick`` uses smaller batches and fewer repeats (< 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))        # the repository, when the kit is not installed

import torch  # noqa: E402

import rows as R  # noqa: E402


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _ms(v):
    return "" if v is None else f"{v:.1f}"


def _verdict(ok):
    return {True: "ok", False: "MISS", None: "-"}[ok]


def table(rows: list[R.Row]) -> str:
    head = "| group | measurement | manual ms | autograd ms | figure | goal | verdict | memory ratio | notes |"
    out = [head, "|" + "---|" * 9]
    for r in rows:
        mem = "" if r.mem_ratio is None else f"{r.mem_ratio:.2f}x ({_verdict(r.mem_ok)})"
        out.append(f"| {r.group} | {r.name} | {_ms(r.manual_ms)} | {_ms(r.autograd_ms)} | {r.figure} | {r.goal} "
                   f"| {_verdict(r.ok)} | {mem} | {r.note} |")
    return "\n".join(out)


def _peak_child(row_id: str, variant: str, quick: bool) -> None:
    """``--_peak ROW VARIANT``: print the extra peak RSS of one call (run by harness, in a fresh process)."""
    from harness import cpu_peak_bytes_here

    fn = R.variants(row_id, "cpu", quick)[variant]
    print(json.dumps({"peak_bytes": cpu_peak_bytes_here(fn)}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats (< 2 minutes)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", metavar="PATH", help="where to write the JSON results")
    p.add_argument("--only", metavar="GROUPS", help=f"comma-separated subset of {','.join(R.GROUPS)}")
    p.add_argument("--repeats", type=int, help="timed pairs per row (default 7, --quick 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--_peak", nargs=2, metavar=("ROW", "VARIANT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._peak:
        _peak_child(*a._peak, a.quick)
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible", file=sys.stderr)
        return 2
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ctx = R.Ctx(device=a.device, quick=a.quick, repeats=a.repeats or (3 if a.quick else 7),
                memory=not a.no_memory)
    groups = list(R.GROUPS) if not a.only else [g.strip() for g in a.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in R.GROUPS]
    if unknown:
        print(f"error: unknown group {unknown[0]!r}; groups: {', '.join(R.GROUPS)}", file=sys.stderr)
        return 2

    info = machine()
    print(f"# benchmarks: device={a.device} quick={a.quick} repeats={ctx.repeats} torch={info['torch']} "
          f"cpu={info.get('cpu', '?')} x{info['cpu_count']} threads={info['torch_threads']}"
          + (f" gpu={info['gpu']}" if "gpu" in info else ""), flush=True)
    results: list[R.Row] = []
    t0 = time.perf_counter()
    for g in groups:
        tg = time.perf_counter()
        try:
            got = R.GROUPS[g](ctx)
        except Exception as e:  # a whole group broke: report it and go on
            got = [R.na(g, g, "-", R._one_line(e))]
        results.extend(got)
        for r in got:
            print(f"  {r.group:8s} {r.name[:70]:70s} {r.figure:>16s}  goal {r.goal:28s} {_verdict(r.ok)}", flush=True)
        print(f"  ({g}: {time.perf_counter() - tg:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    print()
    print(table(results))
    print(f"\ntotal {total:.0f} s")

    path = Path(a.json) if a.json else HERE / "results" / f"{a.device}{'-quick' if a.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": info, "device": a.device, "quick": a.quick, "repeats": ctx.repeats,
           "seconds": total, "rows": [asdict(r) for r in results]}
    path.write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
