"""Float32 accuracy of every rule next to torch's own, and the issue-10 normalisation case.

    python benchmarks/accuracy.py              # the per-rule table (every rule x float32 sample)
    python benchmarks/accuracy.py --big        # also layer_norm / batch_norm at 4 x 1e6, 7.5-sigma offset
    python benchmarks/accuracy.py relu conv2d  # some rules only

Errors are ``max|g32 - truth| / max|truth|`` per argument against float64 autograd at the same
point; "ratio" is the rule's error over torch's float32 error (floored at one float32 ulp).
tests/manual/test_accuracy.py keeps every ratio <= 4.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def big_normalisation_case(n: int = 4, d: int = 1_000_000, offset: float = 7.5) -> list[str]:
    """layer_norm on an (n, d) input and batch_norm on (d, n), both with a mean ``offset`` sigmas from 0."""
    from gradcheck_kit import manual

    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in ("layer_norm", "batch_norm"):
        shape, wshape = ((n, d), (d,)) if name == "layer_norm" else ((d, n), (n,))
        x = torch.randn(shape, generator=gen) + offset
        w, b = torch.rand(wshape, generator=gen) + 0.5, torch.randn(wshape, generator=gen)
        g = torch.randn(shape, generator=gen)
        if name == "layer_norm":
            fn = lambda x, w, b: F.layer_norm(x, (d,), w, b)  # noqa: E731
            mine = manual.get(name).backward(g, x, w, b, normalized_shape=(d,))
        else:
            fn = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
            gx, _, _, gw, gb = manual.get(name).backward(g, x, None, None, w, b, training=True)
            mine = (gx, gw, gb)

        def auto(dtype):
            leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
            return torch.autograd.grad(fn(*leaves), leaves, g.to(dtype))

        truth, theirs = auto(torch.float64), auto(torch.float32)
        for arg, m, o, t in zip("xwb", mine, theirs, truth):
            scale = float(t.abs().max())
            em, eo = float((m.double() - t).abs().max()) / scale, float((o.double() - t).abs().max()) / scale
            rows.append(f"{name:11} d/d{arg}  rule {em:.2e}  torch {eo:.2e}  ratio {em / max(eo, 2.0 ** -23):.2f}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rules", nargs="*", help="rule names (default: all)")
    p.add_argument("--big", action="store_true", help="also run the 4 x 1e6 normalisation case")
    args = p.parse_args(argv)
    from gradcheck_kit.sweep import accuracy_table, float32_accuracy

    results = float32_accuracy(args.rules or None)
    print(accuracy_table(results))
    done = [r for r in results if r.skipped is None]
    worst = max(done, key=lambda r: r.ratio)
    print(f"\n{len(done)} samples measured, {len(results) - len(done)} skipped; worst ratio {worst.ratio:.2f} "
          f"({worst.rule} {worst.sample} d/d{worst.worst})")
    if args.big:
        print("\nissue 10: 4 x 1e6 float32, mean 7.5 sigma from 0")
        print("\n".join(big_normalisation_case()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
