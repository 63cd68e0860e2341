"""Speed of emitted backward code: seed 002 problem 3 (conv -> relu -> conv -> strided loss).

    python benchmarks/emit_bench.py                     # CPU, float32, the seed's sizes
    python benchmarks/emit_bench.py --device cuda --repeats 21 --json out.json

Emits ``cases/conv_relu_conv.py``'s backward at the case's full size with
``gradcheck_kit.emit.backward_source`` (which verifies it in float64 first; that takes a
minute on a 2-core CPU and is not timed), then times, with the method of
``benchmarks/harness.py`` (interleaved pairs after a warm-up, median of per-pair ratios):

* emitted: ``loss_and_grads(**inputs)``, the loss and dL/dx, dL/dw1, dL/dw2 (float32);
* autograd: the same forward on leaves that require grad, then ``torch.autograd.grad`` of
  the same three gradients.

Goal: emitted / autograd <= 1.25x.  Prints one markdown row in BENCHMARKS.md's format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import time_pair  # noqa: E402

GOAL = 1.25


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9, help="timed pairs (default 9)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    ap.add_argument("--emitted", metavar="FILE", help="time this module (written by 'gradcheck-kit emit "
                    "cases/conv_relu_conv.py -o FILE', which verified it) instead of emitting it here")
    ap.add_argument("--json", metavar="FILE", help="also write the row as JSON")
    args = ap.parse_args(argv)

    from gradcheck_kit.casefile import load_case
    from gradcheck_kit.emit import backward_source

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    case = load_case(ROOT / "cases" / "conv_relu_conv.py")
    inp = case.make_inputs(args.device, torch.float32, seed=0)
    wrt = case.wrt
    t0 = time.perf_counter()
    source = Path(args.emitted).read_text() if args.emitted else backward_source(case.loss, inp, wrt)
    emit_s = time.perf_counter() - t0
    ns: dict = {}
    exec(compile(source, "<emitted conv_relu_conv>", "exec"), ns)
    loss_and_grads = ns["loss_and_grads"]
    leaves = {k: (v.detach().requires_grad_() if k in wrt else v) for k, v in inp.items()}

    def emitted():
        return loss_and_grads(**inp)

    def autograd():
        out = case.loss(**leaves).sum()
        return out, torch.autograd.grad(out, [leaves[n] for n in wrt])

    # same answer in float32 before timing (the float64 verification already ran in backward_source)
    (_, g_e), (_, g_a) = emitted(), autograd()
    for n, ga in zip(wrt, g_a):
        torch.testing.assert_close(g_e[n], ga, rtol=2e-3, atol=2e-3 * float(ga.abs().max()))

    pt = time_pair(emitted, autograd, device=args.device, repeats=args.repeats, warmup=1)
    verdict = "ok" if pt.ratio <= GOAL else "MISSED"
    row = {"group": "emit", "measurement": "seed002_p3 emitted module (cases/conv_relu_conv.py, float32, "
                                           "x 8x32x128x128); grads x, w1, w2",
           "emitted_ms": pt.a_s * 1e3, "autograd_ms": pt.b_s * 1e3, "ratio": pt.ratio, "goal": GOAL,
           "verdict": verdict, "spread": pt.spread, "repeats": pt.repeats, "emit_and_verify_s": emit_s,
           "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print("| group | measurement | emitted ms | autograd ms | figure | goal | verdict | notes |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| emit | {row['measurement']} | {row['emitted_ms']:.1f} | {row['autograd_ms']:.1f} | "
          f"{pt.ratio:.2f}x | <= {GOAL}x time | {verdict} | pair-ratio spread {pt.spread:.0%} over "
          f"{pt.repeats} pairs, {row['threads']} threads; emit + verification {emit_s:.0f} s (not timed); "
          f"load {row['load_average']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
