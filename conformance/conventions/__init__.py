"""Other frameworks' batch norms, against goldens each framework computes itself.

One module per framework (``pytorch``, ``keras``, ``flax``, ``onnx``), each with:

- ``CASES``: the case list, dicts like the TensorFlow catalogue's: ``id`` (starting
  with the framework's name), ``op`` (``"conventions/<framework>"``), ``group``,
  ``dtype`` (x's), ``channel_axis`` (for the comparison) and ``kwargs`` (the
  bn_portable convention function's keyword arguments), plus what the framework's
  generator needs;
- ``versions()`` and ``generate(case) -> {name: array}``, run in the framework's own
  environment by ``python -m conformance.conventions.generate <framework>``
  (``nox -s "convention_goldens(framework='pytorch')"``): inputs under ``init/``
  (parameters, initial statistics) and ``step<k>/`` (``x``, ``mask``), outputs under
  ``step<k>/y`` and ``step<k>/state/<name>`` (the framework's new statistics), as
  the TensorFlow ``batch_norm`` goldens name them;
- ``run(case, inputs, backend) -> {name: array}``: the same steps through
  ``bn_portable.conventions`` on a backend (``inputs(name)`` converts a golden input).

The goldens are ``conformance/goldens/conventions/<framework>.npz`` (keys
``"<case id>|<array name>"``) with ``<framework>.json`` (versions, and each case's
arrays and dtypes). ``python -m conformance.run`` runs every case of every
framework whose goldens exist, beside TensorFlow's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

FRAMEWORKS = ("pytorch", "keras", "flax", "onnx")
GOLDENS = Path(__file__).resolve().parent.parent / "goldens" / "conventions"
OP_PREFIX = "conventions/"


def module(framework: str) -> ModuleType:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    return importlib.import_module(f"conformance.conventions.{framework}")


def available() -> list[str]:
    """The frameworks whose goldens are in the repository."""
    return [f for f in FRAMEWORKS if (GOLDENS / f"{f}.npz").exists()]


def cases() -> list[dict[str, Any]]:
    """Every case of every framework with goldens."""
    return [case for framework in available() for case in module(framework).CASES]


def runner(op: str) -> Callable[..., dict[str, Any]]:
    """The runner of a ``conventions/<framework>`` op."""
    return module(op.removeprefix(OP_PREFIX)).run  # type: ignore[no-any-return]
