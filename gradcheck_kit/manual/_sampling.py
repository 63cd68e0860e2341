"""Helpers for writing sample inputs (OpInfo-style): seeded, small, readable.

    mk = Maker(device, dtype)
    yield Sample((mk.randn(2, 3, 8, 8), mk.randn(4, 3, 3, 3), None), {"stride": 2}, "conv2d[s2]")

Each family's ``*_samples(device, dtype)`` builds one ``Maker`` so its samples are
deterministic whatever ran before.
"""

from __future__ import annotations

from typing import Any

import torch


def describe(x: Any) -> str:
    """``Tensor[2x3x8x8, float32, cuda:0]`` for tensors, ``repr`` for everything else."""
    if isinstance(x, torch.Tensor):
        shape = "x".join(str(s) for s in x.shape) or "scalar"
        return f"Tensor[{shape}, {str(x.dtype).replace('torch.', '')}, {x.device}]"
    return repr(x)


class Maker:
    """Seeded tensor factory; the tensors are made on the CPU in float64 then moved."""

    def __init__(self, device="cpu", dtype=torch.float64, seed: int = 0):
        self.device = torch.device(device)
        self.dtype = dtype
        self.gen = torch.Generator().manual_seed(seed)

    @staticmethod
    def _size(shape) -> tuple[int, ...]:
        """``mk.randn(2, 3)``, ``mk.randn((2, 3))`` and ``mk.randn()`` (0-d) all work."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            return tuple(shape[0])
        return tuple(shape)

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype)

    def randn(self, *shape, scale: float = 1.0) -> torch.Tensor:
        return self._out(torch.randn(self._size(shape), generator=self.gen, dtype=torch.float64) * scale)

    def uniform(self, *shape, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        u = torch.rand(self._size(shape), generator=self.gen, dtype=torch.float64)
        return self._out(low + (high - low) * u)

    def positive(self, *shape, low: float = 0.5, high: float = 2.0) -> torch.Tensor:
        return self.uniform(*shape, low=low, high=high)

    def away_from(self, *shape, points=(0.0,), margin: float = 0.05, scale: float = 1.0) -> torch.Tensor:
        """randn values kept at least ``margin`` from every point of ``points`` (kinks)."""
        t = torch.randn(self._size(shape), generator=self.gen, dtype=torch.float64) * scale
        for p in points:
            d = t - p
            near = d.abs() < margin
            t = torch.where(near, p + torch.where(d >= 0, margin, -margin) * 2, t)
        return self._out(t)

    def probs(self, *shape, dim: int = 1) -> torch.Tensor:
        """Rows of a probability distribution along ``dim``."""
        return self._out(torch.softmax(torch.randn(self._size(shape), generator=self.gen, dtype=torch.float64), dim=dim))

    def randint(self, high: int, *shape, low: int = 0) -> torch.Tensor:
        return torch.randint(low, high, self._size(shape), generator=self.gen).to(self.device)

    def integers(self, *shape, low: int = -3, high: int = 4) -> torch.Tensor:
        """Small integer values in the floating dtype (exact ties and zeros)."""
        return self._out(torch.randint(low, high, self._size(shape), generator=self.gen).to(torch.float64))

    def channels_last(self, t: torch.Tensor) -> torch.Tensor:
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()]
        return t.contiguous(memory_format=fmt)

    def noncontiguous(self, t: torch.Tensor) -> torch.Tensor:
        """Same values, strided storage: every other element of a twice-as-wide buffer."""
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], device=t.device, dtype=t.dtype)
        view = wide[..., ::2]
        view.copy_(t)
        return view
