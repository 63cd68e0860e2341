"""Registry-wide mutation audit: does ``check`` catch planted bugs in every rule, against autograd and finite differences?

For every rule x finite sample x dtype, the gradient of the sample's first differentiable input is
mutated seven ways and checked (``wrt`` that input, diagnosis off):

    x2, sign, one element (+1% of max|g| at the largest element), zeroed element (the largest),
    roll (by 1 along the last dim), flip (the last dim), mask dropped (exact zeros of g set to max|g|/2)

A mutant equal to the correct gradient within 1e-3 max|g| is not a bug and is skipped (x2 of a zero
gradient, roll of a constant one, a mask with no zeros).  A mutant that passes finite differences
because every element it changed sits on a kink or tie inside the one-sided interval there is another
valid subgradient (``valid_subgradient``, counted apart: autograd, with torch's tie convention, is
what rejects those).  Each mutant must FAIL; the unmutated gradient
("none") must PASS.  An escape at a kink or jump (a mutant reported ok whose result counted kinks or
jumps) is listed separately.

    python benchmarks/audit.py                              # everything: float64 and float32, autograd and fd
    python benchmarks/audit.py --rules relu,max_pool2d --refs fd --dtypes float64
    python benchmarks/audit.py --no-false-alarm             # every sample: reference="both" and double_backward
    python benchmarks/audit.py --jobs 2 --json benchmarks/results/audit.json

Prints one line per escape / false alarm / error and a summary; exits 1 if anything escaped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

MUTATIONS = ("x2", "sign", "one_element", "zeroed_element", "roll", "flip", "mask_dropped")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def mutate(g: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The planted bug applied to a correct gradient g; None where it does not change g (not a bug)."""
    if kind == "none":
        return g
    flat = g.detach().reshape(-1)
    if flat.numel() == 0:
        return None
    top = float(flat.abs().max())
    j = int(flat.abs().argmax())
    if kind == "x2":
        out = 2 * g
    elif kind == "sign":
        out = -g
    elif kind == "one_element":
        out = g.clone(memory_format=torch.contiguous_format)
        out.view(-1)[j] += 0.01 * top if top else 1.0
    elif kind == "zeroed_element":
        out = g.clone(memory_format=torch.contiguous_format)
        out.view(-1)[j] = 0
    elif kind == "roll":
        out = g.roll(1, -1) if g.dim() else g
    elif kind == "flip":
        out = g.flip(-1) if g.dim() else g
    elif kind == "mask_dropped":
        out = torch.where(g == 0, torch.full_like(g, 0.5 * top if top else 1.0), g)
    else:
        raise ValueError(kind)
    diff = float((out.detach().double() - g.detach().double()).abs().max())
    if diff <= 1e-3 * top or (top == 0 and diff == 0):
        return None
    return out


def _target(rule, sample):
    from gradcheck_kit.sweep import _loss_and_manual

    loss, manual, inputs, wrt = _loss_and_manual(rule, sample, 0)
    names = [n for n in wrt if isinstance(inputs.get(n), torch.Tensor) and inputs[n].is_floating_point()
             and inputs[n].numel()]
    return (loss, manual, inputs, names[0]) if names else None


def _finite(sample) -> bool:
    return all(bool(t.isfinite().all()) for t in (*sample.args, *sample.kwargs.values())
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def _kinky(sample) -> bool:
    return any(w in sample.name for w in ("tie", "zero", "kink", "edge", "bound", "int"))


def audit_rule(name: str, dtypes, refs, mutations, max_samples=None, no_false_alarm=False,
               kink_samples=False) -> list[dict]:
    """Rows {rule, sample, dtype, reference, mutation, outcome, kinks, jumps, seconds, error} for one rule."""
    torch.set_num_threads(1)
    from gradcheck_kit import check
    from gradcheck_kit.errors import GradcheckKitError
    from gradcheck_kit.sweep import sample_check
    from gradcheck_kit.manual import registry

    rule = registry.get(name)
    rows = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        samples = [s for s in rule.samples(dtype=dtype) if _finite(s)]
        chosen = samples[:max_samples]
        if kink_samples:  # plus the first sample made to sit on kinks or ties, if the rule has one
            chosen += [s for s in samples[len(chosen):] if _kinky(s)][:1]
        for sample in chosen:
            t = _target(rule, sample)
            if t is None:
                continue
            loss, manual, inputs, target = t
            try:
                base = manual(**inputs)[target]
            except Exception as e:  # noqa: BLE001
                rows.append(dict(rule=name, sample=sample.name, dtype=dname, reference="-", mutation="-",
                                 outcome="error", error=f"{type(e).__name__}: {e}"))
                continue
            kinds = ("none",) if no_false_alarm else ("none",) + tuple(mutations)
            # a rounding forward (x.float()) is a staircase to float64 differences: autograd only
            for ref in (r for r in refs if not (rule.rounds and r == "fd")):
                for kind in kinds:
                    if kind != "none" and mutate(base, kind) is None:
                        continue

                    def mman(_kind=kind, **kw):
                        out = dict(manual(**kw))
                        mutant = mutate(out[target], _kind)  # None: unchanged at this point (no zeros...)
                        out[target] = out[target] if mutant is None else mutant
                        return out
                    t0 = time.perf_counter()
                    row = dict(rule=name, sample=sample.name, dtype=dname, reference=ref, mutation=kind)
                    try:
                        if no_false_alarm:  # the sweep's own problem: every differentiable input, both, order 2
                            rep = sample_check(rule, sample, reference=ref, double_backward=True, diagnose=False)
                        else:
                            rep = check(loss, inputs, mman, wrt=(target,), reference=ref,
                                        allow_unused=True, diagnose=False)
                        bad = [r for r in rep.results if not r.ok]
                        row["ok"] = rep.ok
                        row["kinks"] = sum(r.kinks + r.ties for r in rep.results)
                        row["jumps"] = sum(r.jumps for r in rep.results)
                        if kind == "none":
                            row["outcome"] = "pass" if rep.ok else "false_alarm"
                        else:
                            row["outcome"] = "caught" if not rep.ok else "escaped"
                        if row["outcome"] == "escaped" and ref == "fd" and _valid_at_kinks(loss, inputs, target, base,
                                                                                           mutate(base, kind)):
                            row["outcome"] = "valid_subgradient"
                        if bad and kind == "none":
                            row["detail"] = "; ".join(f"{r.label} vs {r.reference}: err {r.worst_err} at "
                                                      f"{r.worst_index}" for r in bad)[:300]
                    except GradcheckKitError as e:
                        row["outcome"], row["error"] = ("caught" if kind != "none" else "error"), str(e)[:300]
                    except Exception as e:  # noqa: BLE001
                        row["outcome"], row["error"] = "error", f"{type(e).__name__}: {e}"[:300]
                    row["seconds"] = round(time.perf_counter() - t0, 3)
                    rows.append(row)
    return rows


def _valid_at_kinks(loss, inputs, target, g, mutant) -> bool:
    """True when every element the mutation changed sits on a kink or tie, inside the hull of its one-sided
    interval and of the gradients of the pieces met at 48 seeded nearby points.

    Such a value is the projection of an element of the Clarke subdifferential (a convex combination
    of nearby pieces' gradients): another valid subgradient at x, which finite differences must accept
    (autograd, following torch's tie convention, still rejects it).  Not a false pass.
    """
    from gradcheck_kit import _fd

    t64 = {n: (v.detach().double().clone() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for n, v in inputs.items()}
    call = lambda fn, kw: fn(**kw)  # noqa: E731
    ev = _fd.Evaluator(loss, t64, call)
    fr = _fd.full(ev, target, ev(), 1e-6)
    g, mutant = g.detach().double(), mutant.detach().double()
    top = float(g.abs().max()) if g.numel() else 0.0
    changed = ((mutant - g).abs() > 1e-3 * top).reshape(-1)
    special = (fr.kink | fr.tie).reshape(-1)
    if not bool(changed.any()) or not bool(special[changed].all()):
        return False
    j = _fd.judge(mutant, fr, 1e-6 * max(fr.scale, top), 1e-5)
    idx = j.undecided.reshape(-1).nonzero().flatten().tolist()

    def sample(s, ix):
        near = _fd.perturb(t64, list(t64), torch.Generator().manual_seed(99991 + s))
        near = {n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in near.items()}
        return _fd.central_at(_fd.Evaluator(loss, near, call), target, ix, 1e-6)
    if idx:
        j = _fd.decide(j, mutant, fr, idx, sample, 48)
    return not bool(j.bad.reshape(-1)[changed].any())


def summarise(rows) -> dict:
    out = {}
    for r in rows:
        key = (r["reference"], r["dtype"])
        s = out.setdefault(key, dict(mutants=0, caught=0, escaped=0, escaped_at_kink=0, valid_subgradient=0, clean=0,
                                     false_alarm=0, error=0))
        if r["outcome"] == "valid_subgradient":
            s["valid_subgradient"] += 1
        elif r["outcome"] in ("caught", "escaped"):
            s["mutants"] += 1
            s[r["outcome"]] += 1
            if r["outcome"] == "escaped" and (r.get("kinks") or r.get("jumps")):
                s["escaped_at_kink"] += 1
        elif r["outcome"] == "pass":
            s["clean"] += 1
        elif r["outcome"] == "false_alarm":
            s["clean"] += 1
            s["false_alarm"] += 1
        else:
            s["error"] += 1
    return {f"{k[0]}/{k[1]}": v for k, v in sorted(out.items())}


def _write(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"summary": summarise(rows), "rows": rows}, f, indent=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default=None, help="comma-separated rule names (default: all)")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--refs", default="autograd,fd")
    ap.add_argument("--mutations", default=",".join(MUTATIONS))
    ap.add_argument("--max-samples", type=int, default=None, help="samples per rule (default: all)")
    ap.add_argument("--kink-samples", action="store_true",
                    help="with --max-samples: add each rule's first sample named for ties/zeros/kinks/edges")
    ap.add_argument("--no-false-alarm", action="store_true",
                    help="only the unmutated gradients, with reference='both' and double_backward=True")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", default=None, help="write every row here")
    a = ap.parse_args(argv)
    from gradcheck_kit.manual import registry

    names = a.rules.split(",") if a.rules else registry.names()
    refs = ("both",) if a.no_false_alarm else tuple(a.refs.split(","))
    args = [(n, tuple(a.dtypes.split(",")), refs, tuple(a.mutations.split(",")), a.max_samples, a.no_false_alarm,
             a.kink_samples) for n in names]
    t0 = time.perf_counter()
    rows = []
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            for arg, part in zip(args, ex.map(audit_rule, *zip(*args))):
                rows += part
                print(f"  {arg[0]}: {len(rows)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                if a.json:
                    _write(a.json, rows)
    else:
        for arg in args:
            rows += audit_rule(*arg)
            print(f"  {arg[0]}: {len(rows)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if a.json:  # partial results survive an interrupted run
                _write(a.json, rows)
    for r in rows:
        if r["outcome"] in ("escaped", "false_alarm", "error"):
            print(f"{r['outcome'].upper()}: {r['rule']}[{r['sample']}] {r['dtype']} vs {r['reference']} "
                  f"mutation={r['mutation']} kinks={r.get('kinks')} jumps={r.get('jumps')} "
                  f"{r.get('error') or r.get('detail') or ''}")
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    print(f"{len(rows)} checks in {time.perf_counter() - t0:.0f} s")
    if a.json:
        _write(a.json, rows)
    return 1 if any(s["escaped"] or s["false_alarm"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
