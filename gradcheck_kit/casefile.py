"""Case files: a loss definition in a plain Python file.

    def inputs(device, dtype):   # dict name -> tensor
    def loss(**inputs):          # ordinary torch ops; a non-scalar result is summed
    def manual(**inputs):        # optional: dict name -> explicit gradient
    WRT = ("x", "w1")            # optional
    TOLERANCES = {"atol": 1e-6, "rtol": 1e-5, "w1": {"atol": 1e-4}}   # optional

``TOLERANCES`` sets ``check``'s atol/rtol for the whole case (keys ``atol``, ``rtol``) and,
under an input's name, for that input alone (its missing keys fall back to the case's).

``load_case(path)`` executes the file (the user's own code is the only code run) and
checks that it defines what a case needs; ``case.make_inputs(device, dtype, seed)``
seeds torch's generator, calls ``inputs`` and validates what comes back.  Every
problem is a ``CaseFileError`` whose message is one sentence naming the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gradcheck_kit.errors import GradcheckKitError

__all__ = ["Case", "CaseFileError", "load_case"]


class CaseFileError(GradcheckKitError, ValueError):
    """A case file is missing, does not run, or does not define a valid case."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass
class Case:
    """A loaded case file."""

    path: Path
    loss: Callable
    inputs: Callable
    manual: Callable | None
    wrt: tuple[str, ...] | None
    tolerances: dict | None = None   # {"atol": a, "rtol": r, name: {"atol": ..., "rtol": ...}}

    def tolerance_for(self, name: str | None = None) -> dict:
        """``{"atol": ..., "rtol": ...}`` (only the keys set) for input ``name``, or for the whole case."""
        tol = {k: v for k, v in (self.tolerances or {}).items() if k in _TOL_KEYS}
        if name is not None:
            tol.update((self.tolerances or {}).get(name, {}) if name not in _TOL_KEYS else {})
        return tol

    @property
    def per_input_tolerances(self) -> dict:
        """``{name: {"atol": ..., "rtol": ...}}`` for the inputs that TOLERANCES names."""
        return {n: self.tolerance_for(n) for n in (self.tolerances or {}) if n not in _TOL_KEYS}

    @property
    def name(self) -> str:
        return self.path.name

    def make_inputs(self, device: Any, dtype: Any, seed: int = 0) -> dict:
        """``inputs(device, dtype)`` after ``torch.manual_seed(seed)``, validated."""
        import torch

        torch.manual_seed(seed)
        try:
            made = self.inputs(device, dtype)
        except GradcheckKitError:
            raise
        except Exception as e:
            raise CaseFileError(f"{self.name}: inputs({device!r}, {dtype}) raised {_one_line(e)}") from e
        if not isinstance(made, dict) or not made:
            raise CaseFileError(f"{self.name}: inputs(device, dtype) must return a non-empty dict "
                                f"name -> tensor, got {type(made).__name__}")
        for k, v in made.items():
            if not isinstance(k, str):
                raise CaseFileError(f"{self.name}: inputs() returned a non-string key {k!r}")
            if not isinstance(v, torch.Tensor):
                raise CaseFileError(f"{self.name}: inputs()[{k!r}] is a {type(v).__name__}, not a tensor")
        for k in self.per_input_tolerances:
            if k not in made:
                raise CaseFileError(f"{self.name}: TOLERANCES names {k!r}, which is not among the inputs "
                                    f"{sorted(made)}")
        if self.wrt is not None:
            for k in self.wrt:
                if k not in made:
                    raise CaseFileError(f"{self.name}: WRT names {k!r}, which is not among the inputs "
                                        f"{sorted(made)}")
                if not (made[k].is_floating_point() or made[k].is_complex()):
                    raise CaseFileError(f"{self.name}: WRT names {k!r}, a tensor of dtype "
                                        f"{str(made[k].dtype).replace('torch.', '')}; only floating-point "
                                        f"inputs have gradients")
        return made


def load_case(path: str | Path) -> Case:
    """Execute the case file at ``path`` and return its ``Case``."""
    p = Path(path)
    if not p.exists():
        raise CaseFileError(f"case file {str(path)!r} does not exist")
    if not p.is_file():
        raise CaseFileError(f"{str(path)!r} is not a file")
    try:
        source = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CaseFileError(f"cannot read case file {str(path)!r}: {_one_line(e)}") from e
    try:
        code = compile(source, str(p), "exec")
    except SyntaxError as e:
        raise CaseFileError(f"{p.name}:{e.lineno}: syntax error in case file: {e.msg}") from e

    digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
    modname = f"gradcheck_kit_case_{p.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(modname, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # dataclasses and pickling look modules up by name
    try:
        exec(code, module.__dict__)
    except SystemExit as e:
        raise CaseFileError(f"{p.name}: the case file called exit({e.code!r}) while loading") from e
    except Exception as e:
        line = _user_line(e, str(p))
        where = f"{p.name}:{line}" if line else p.name
        raise CaseFileError(f"{where}: loading the case file raised {_one_line(e)}") from e

    ns = module.__dict__
    for fn in ("inputs", "loss"):
        if not callable(ns.get(fn)):
            raise CaseFileError(f"{p.name} defines no {fn}() function; a case file needs "
                                f"inputs(device, dtype) and loss(...)")
    manual = ns.get("manual")
    if manual is not None and not callable(manual):
        raise CaseFileError(f"{p.name}: manual must be a function returning dict name -> gradient")
    wrt = ns.get("WRT")
    if wrt is not None:
        if isinstance(wrt, str):
            wrt = (wrt,)
        if not all(isinstance(w, str) for w in wrt):
            raise CaseFileError(f"{p.name}: WRT must be a tuple of input names, got {wrt!r}")
        wrt = tuple(wrt)
    tolerances = _tolerances(ns.get("TOLERANCES"), p.name)
    return Case(path=p, loss=ns["loss"], inputs=ns["inputs"], manual=manual, wrt=wrt, tolerances=tolerances)


_TOL_KEYS = ("atol", "rtol")


def _tol_value(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
        raise CaseFileError(f"{where} must be a finite number >= 0, got {v!r}")
    return float(v)


def _tolerances(tol, fname: str) -> dict | None:
    """Validate ``TOLERANCES``: {"atol": x, "rtol": y, "<input>": {"atol": ..., "rtol": ...}}."""
    if tol is None:
        return None
    if not isinstance(tol, dict):
        raise CaseFileError(f"{fname}: TOLERANCES must be a dict such as {{'atol': 1e-6, 'rtol': 1e-5}}, "
                            f"got {type(tol).__name__}")
    out: dict = {}
    for k, v in tol.items():
        if not isinstance(k, str):
            raise CaseFileError(f"{fname}: TOLERANCES has a non-string key {k!r}")
        if k in _TOL_KEYS:
            out[k] = _tol_value(v, f"{fname}: TOLERANCES[{k!r}]")
        elif isinstance(v, dict):
            bad = [x for x in v if x not in _TOL_KEYS]
            if bad or not v:
                raise CaseFileError(f"{fname}: TOLERANCES[{k!r}] may hold only 'atol' and 'rtol', got "
                                    f"{sorted(map(str, v)) or 'nothing'}")
            out[k] = {x: _tol_value(y, f"{fname}: TOLERANCES[{k!r}][{x!r}]") for x, y in v.items()}
        else:
            raise CaseFileError(f"{fname}: TOLERANCES[{k!r}] must be a dict of 'atol'/'rtol' for input {k!r} "
                                f"(or use the keys 'atol' and 'rtol' for the whole case)")
    return out


def _user_line(exc: BaseException, filename: str) -> int | None:
    """The last line of the case file in ``exc``'s traceback."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
