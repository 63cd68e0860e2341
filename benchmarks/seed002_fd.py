"""Seed 002's conv -> relu -> conv (cases/conv_relu_conv.py) with reference="fd": are x2 and x1.1 caught on every input?

    python benchmarks/seed002_fd.py                          # full size, float64 and float32, seeds 0 1 2
    python benchmarks/seed002_fd.py --small --seeds 0,1,2,3  # the reduced size of tests/test_fd.py

For each seed, dtype, input (x, w1, w2) and factor (2, 1.1): the case's manual gradient of that input
is multiplied by the factor and ``check(..., reference="fd", wrt=(input,))`` must fail; the unmodified
gradient must pass.  Prints one line per check (verdict, fd mode, projections, sensitivity, seconds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def run(small: bool, seeds, dtypes, factors, fd_work=None) -> list[dict]:
    from gradcheck_kit import check
    from gradcheck_kit.casefile import load_case

    case = load_case(ROOT / "cases" / "conv_relu_conv.py")
    mod_inputs = case.inputs
    rows = []
    for seed in seeds:
        for dname in dtypes:
            dtype = getattr(torch, dname)
            torch.manual_seed(seed)
            try:
                inputs = mod_inputs("cpu", dtype, small=small)
            except TypeError:
                inputs = mod_inputs("cpu", dtype)
            for name in ("x", "w1", "w2"):
                for factor in (1.0,) + tuple(factors):
                    def manual(_f=factor, _n=name, **kw):
                        g = dict(case.manual(**kw))
                        g[_n] = _f * g[_n]
                        return g
                    t0 = time.perf_counter()
                    opts = {} if fd_work is None else dict(fd_work=fd_work)
                    rep = check(case.loss, inputs, manual, wrt=(name,), reference="fd", seed=seed, diagnose=False,
                                **opts)
                    r = rep.results[0]
                    want = factor == 1.0
                    rows.append(dict(seed=seed, dtype=dname, input=name, factor=factor, ok=rep.ok, right=rep.ok == want,
                                     fd_mode=r.fd_mode, projections=r.projections, sensitivity=r.sensitivity,
                                     evaluations=r.fd_evaluations, seconds=round(time.perf_counter() - t0, 1)))
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dtypes", default="float64,float32")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = run(a.small, [int(s) for s in a.seeds.split(",")], a.dtypes.split(","), (2.0, 1.1))
    wrong = [r for r in rows if not r["right"]]
    print(f"{len(rows) - len(wrong)}/{len(rows)} verdicts right")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
