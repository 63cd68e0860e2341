"""pytest plugin: the ``gradcheck`` fixture, ``--gradcheck-*`` options, ``gradcheck`` marker.

    def test_my_grads(gradcheck):
        gradcheck(loss, {"x": x, "w": w}, manual=my_grads)

    @pytest.mark.gradcheck(device="all", dtype=("float64", "float32"))
    def test_pinned(gradcheck): ...

Registered through the ``pytest11`` entry point.  torch and the comparison engine
are imported only when the fixture is used.  Precedence of options: keyword
arguments of the call, then the marker, then the command line.
"""

from __future__ import annotations

from typing import Any

import pytest

DTYPES = ("float64", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "all")


def pytest_addoption(parser):
    group = parser.getgroup("gradcheck-kit", "gradcheck-kit: manual gradients vs autograd")
    group.addoption("--gradcheck-device", choices=DEVICES, default=None,
                    help="device for the gradcheck fixture: cpu, cuda or all (default: where the inputs are)")
    group.addoption("--gradcheck-dtype", choices=DTYPES, default=None,
                    help="dtype for the gradcheck fixture (default: the inputs' own dtype)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gradcheck(device=None, dtype=None, **options): pin the device(s)/dtype(s) and check() options "
        "the gradcheck fixture uses in this test; device and dtype may be tuples.")


def _as_tuple(v: Any) -> tuple:
    if v is None:
        return (None,)
    if isinstance(v, (list, tuple)):
        return tuple(v) or (None,)
    return (v,)


class GradCheck:
    """The object the ``gradcheck`` fixture returns; calling it asserts manual == reference."""

    def __init__(self, defaults: dict):
        self.defaults = dict(defaults)
        self.reports: list = []

    def __call__(self, loss, inputs, manual=None, **options):
        """Check ``manual`` against the reference for every pinned device and dtype.

        Fails the test with ``assert_close``-like text and the report's table on a
        mismatch; returns the list of reports otherwise.
        """
        __tracebackhide__ = True
        import torch

        from gradcheck_kit import _format
        from gradcheck_kit.compare import check

        opts = {**self.defaults, **options}
        devices = _as_tuple(opts.pop("device", None))
        dtypes = _as_tuple(opts.pop("dtype", None))
        reports = []
        for device in devices:
            if device in ("cuda",) or (isinstance(device, str) and device.startswith("cuda")):
                if not torch.cuda.is_available():
                    pytest.skip(f"gradcheck device {device!r} needs a CUDA GPU; none is visible")
            for dtype in dtypes:
                if isinstance(dtype, str):
                    if dtype not in DTYPES:
                        raise ValueError(f"gradcheck: unknown dtype {dtype!r}; use one of {DTYPES}")
                    dtype = getattr(torch, dtype)
                report = check(loss, inputs, manual, device=device, dtype=dtype, **opts)
                reports.append(report)
                self.reports.append(report)
                if not report.ok:
                    raise AssertionError(_format.failure_message(report))
        return reports


@pytest.fixture
def gradcheck(request):
    """``gradcheck(loss, inputs, manual=None, **options)``: fail the test if manual != reference.

    ``options`` are those of ``gradcheck_kit.check`` (wrt, reference, device, dtype,
    atol, rtol, double_backward, seed).  Defaults come from
    ``@pytest.mark.gradcheck(...)`` and ``--gradcheck-device`` / ``--gradcheck-dtype``.
    """
    cfg = request.config
    defaults: dict = {}
    dev = cfg.getoption("gradcheck_device", None)
    dt = cfg.getoption("gradcheck_dtype", None)
    if dev is not None:
        defaults["device"] = dev
    if dt is not None:
        defaults["dtype"] = dt
    for marker in reversed(list(request.node.iter_markers("gradcheck"))):  # closest marker wins
        if marker.args:
            raise TypeError("@pytest.mark.gradcheck takes keyword arguments only, "
                                    "e.g. @pytest.mark.gradcheck(device='cpu', dtype='float32')")
        defaults.update(marker.kwargs)
    return GradCheck(defaults)
