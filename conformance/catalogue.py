"""Declarative catalogue of the TensorFlow conformance cases (standard library only).

Every case is a JSON-serialisable dict; ``cases()`` returns them in a fixed
order.  The catalogue says *what* to run and *how to generate the inputs*; the
generator (``conformance/generate.py``, TensorFlow environment) turns each case
into golden arrays, and the runner replays the stored inputs through
bn_portable.  Nothing here imports numpy or TensorFlow.

The cases are built by the ``_cases_*`` modules beside this one, one per op
family (standard library only too); this module holds the public names, the
case fields below and the checks every case passes.

Case fields
-----------
``id``            unique, stable, ``[A-Za-z0-9_.=/-]`` only.
``group``         feature group for the report matrix (see ``GROUPS``).
``op``            ``batch_normalization``, ``moments``, ``weighted_moments``,
                  ``fused_batch_norm``, ``batch_norm``, ``fused_batch_norm_grad``
                  or ``batch_norm_grad``.
``dtype``         dtype of the input ``x``.
``param_dtype``   dtype of the parameter arrays where it differs from ``dtype``
                  (batch_normalization's mean/variance/offset/scale,
                  weighted_moments' frequency_weights, fused ops' float32
                  scale/offset/mean/variance).
``kwargs``        keyword arguments of the bn_portable call, named as in the
                  public API; arrays are never in kwargs.  For batch_norm,
                  ``"weighted": true`` means ``batch_weights`` is passed and
                  ``"activation_fn": "relu"`` means ``activation_fn=relu``.
``data``          ``{"seed": int, "arrays": {name: spec}}``: how every input
                  array is generated (see ``ARRAY_SPEC_DOC``).  The goldens
                  store the generated arrays too, so a runner needs no RNG.
``steps``         batch_norm only: one dict per call on the same layer
                  variables, ``{"is_training": bool}``; step k reads
                  ``step{k}/x`` (and ``step{k}/batch_weights``).
``init``          batch_norm and batch_norm_grad: the names among beta, gamma,
                  moving_mean, moving_variance whose initial value is given
                  (array ``init/<name>``, ``param_initializers`` in the call).
``expect_error``  optional, ``true``: TensorFlow itself raises for this
                  configuration; the goldens record the exception.
``truth``         optional, ``"float64"``: the generator also runs TensorFlow
                  on the inputs cast to float64 and stores every output again
                  as ``truth/<name>``; where TensorFlow's own result is further
                  from that truth than the tolerance, the case is judged
                  against the truth (``conformance/runner.py``).
"""

from __future__ import annotations

import hashlib
import json
import re

from ._cases_batch_norm import _batch_norm_cases, _batch_norm_grad_cases
from ._cases_errors import _error_cases
from ._cases_fused import (
    _fused_batch_norm_cases,
    _fused_batch_norm_grad_cases,
    _fused_batch_norm_large_cases,
)
from ._cases_ill_conditioned import _ill_conditioned_cases
from ._cases_layer import predict_tf_path
from ._cases_ops import _batch_normalization_cases, _moments_cases, _weighted_moments_cases

__all__ = [
    "ARRAY_SPEC_DOC",
    "GROUPS",
    "OPS",
    "canonical_json",
    "case_sha256",
    "cases",
    "predict_tf_path",
]

OPS = (
    "batch_normalization",
    "moments",
    "weighted_moments",
    "fused_batch_norm",
    "batch_norm",
    "fused_batch_norm_grad",
    "batch_norm_grad",
)

GROUPS = (
    "moments",
    "weighted_moments",
    "batch_normalization",
    "fused_batch_norm",
    "fused_batch_norm:edge",
    "fused_batch_norm:large",
    "batch_norm:fused",
    "batch_norm:layer",
    "batch_norm:weighted",
    "batch_norm:zero_debias",
    "batch_norm:renorm",
    "batch_norm:hyper",
    "batch_norm:edge",
    "errors",
    "grad:fused_batch_norm",
    "grad:batch_norm",
    "ill_conditioned:moments",
    "ill_conditioned:weighted_moments",
    "ill_conditioned:fused_batch_norm",
    "ill_conditioned:batch_norm",
    "ill_conditioned:grad",
)

ARRAY_SPEC_DOC = """\
An array spec is {"shape": [...], "dtype": str, "dist": str, ...parameters}.
The stream of array NAME in a case with seed S is
numpy.random.Generator(PCG64(SeedSequence([S, zlib.crc32(NAME.encode())]))).
Values are drawn in float64, then (1) per-channel modulation if
"channel_axis" is given: x = loc_c + scale_c * z where
loc_c = loc + channel_loc_spread * N(0, 1) and
scale_c = scale * U(channel_scale_range), drawn first from the same stream;
(2) "special": [[flat_index, value], ...] overwrites single elements
(value a number or "nan", "inf", "-inf"); (3) "quantize": dtype rounds through
that dtype; (4) the result is cast to "dtype".
dist: normal(loc, scale) | uniform(low, high) | loguniform(low, high) |
grid(loc, step, kmin, kmax): loc + step * integer k in [kmin, kmax] |
integers(low, high) inclusive | constant(value).
"""

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.=/-]+$")


def canonical_json(obj) -> str:
    """The canonical JSON text of a case (what ``case_sha256`` hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def case_sha256(case: dict) -> str:
    return hashlib.sha256(canonical_json(case).encode("utf-8")).hexdigest()


def cases() -> list[dict]:
    """All conformance cases, in a fixed order."""
    out = (
        _moments_cases()
        + _weighted_moments_cases()
        + _batch_normalization_cases()
        + _fused_batch_norm_cases()
        + _fused_batch_norm_large_cases()
        + _batch_norm_cases()
        + _fused_batch_norm_grad_cases()
        + _batch_norm_grad_cases()
        + _error_cases()
        + _ill_conditioned_cases()
    )
    seen = set()
    for case in out:
        cid = case["id"]
        if not _SAFE_ID.match(cid):
            raise ValueError(f"unsafe case id {cid!r}")
        if cid in seen:
            raise ValueError(f"duplicate case id {cid!r}")
        if case["op"] not in OPS or case["group"] not in GROUPS:
            raise ValueError(f"bad op/group in {cid!r}")
        seen.add(cid)
        canonical_json(case)  # JSON-serialisable, no NaN
    return out


if __name__ == "__main__":  # pragma: no cover - a quick census
    import collections

    all_cases = cases()
    by_group = collections.Counter(c["group"] for c in all_cases)
    for group in GROUPS:
        print(f"{group:28s} {by_group.get(group, 0)}")
    print(f"{'total':28s} {len(all_cases)}")
