"""The goldens on disk: one deterministic ``<op>.npz`` per op and ``manifest.json``.

Arrays are stored under ``"<case id>|<array name>"`` (bfloat16 as float32 holding
the same values), each with its dtype, shape and hash in the manifest beside
the case's hash, the versions and the settings that produced it (``STORAGE``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from conformance import catalogue
from conformance.tf_session import SETTINGS, versions

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

STORAGE = {
    "files": "<op>.npz per op (zip of .npy members, fixed timestamps, sorted keys)",
    "key": "<case id>|<array name>",
    "bfloat16": "bfloat16 arrays (inputs and outputs) are stored as float32 arrays "
    "holding exactly the bfloat16 values; arrays[name].logical_dtype says 'bfloat16'",
    "array_sha256": "sha256 of (dtype.str + '|' + ','.join(shape) + '|') encoded as "
    "ASCII, followed by the C-order bytes of the stored array",
    "case_sha256": "sha256 of the case dict as canonical JSON (sort_keys, separators "
    "(',', ':'), no NaN), see conformance.catalogue.canonical_json",
}


def stored_array(array: np.ndarray):
    """(array as stored, logical dtype name or None)."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return np.array(array.astype(np.float32), order="C"), "bfloat16"
    return np.array(array, order="C"), None


def array_sha256(array: np.ndarray) -> str:
    header = f"{array.dtype.str}|{','.join(map(str, array.shape))}|".encode("ascii")
    return hashlib.sha256(header + array.tobytes(order="C")).hexdigest()


def write_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed-compatible, but byte-for-byte deterministic."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, arrays[key], allow_pickle=False)
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def read_npz(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def load_goldens(folder: str):
    manifest_path = os.path.join(folder, MANIFEST)
    manifest = None
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    arrays = {op: read_npz(os.path.join(folder, f"{op}.npz")) for op in catalogue.OPS}
    return manifest, arrays


def write_goldens(folder, results, case_by_id, only=None):
    """Write (or, with ``only``, merge into) the goldens in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    old_manifest, old_arrays = load_goldens(folder) if only else (None, None)
    known = set(case_by_id)
    fresh = {r["id"] for r in results}
    cases_meta = {}
    arrays_by_op = {op: {} for op in catalogue.OPS}
    if only and old_manifest:
        for cid, entry in old_manifest.get("cases", {}).items():
            if cid in known and cid not in fresh:
                cases_meta[cid] = entry
        for op, arrays in old_arrays.items():
            for key, value in arrays.items():
                cid = key.split("|", 1)[0]
                if cid in known and cid not in fresh:
                    arrays_by_op[op][key] = value
    for result in results:
        case = case_by_id[result["id"]]
        entry = {
            "op": case["op"],
            "group": case["group"],
            "file": f"{case['op']}.npz",
            "case_sha256": catalogue.case_sha256(case),
            "arrays": {},
        }
        for name, value in sorted(result["arrays"].items()):
            stored, logical = stored_array(value)
            arrays_by_op[case["op"]][f"{case['id']}|{name}"] = stored
            info = {
                "dtype": stored.dtype.name,
                "shape": list(stored.shape),
                "sha256": array_sha256(stored),
            }
            if logical:
                info["logical_dtype"] = logical
            entry["arrays"][name] = info
        if result["meta"]:
            entry["tf"] = result["meta"]
        if result["error"]:
            entry["error"] = result["error"]
        cases_meta[case["id"]] = entry
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "python -m conformance.generate",
        "versions": versions(),
        "settings": SETTINGS,
        "storage": STORAGE,
        "cases": dict(sorted(cases_meta.items())),
    }
    for op, arrays in arrays_by_op.items():
        path = os.path.join(folder, f"{op}.npz")
        if arrays:
            write_npz(path, arrays)
        elif os.path.exists(path):
            os.remove(path)
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True, allow_nan=False)
        fh.write("\n")
    return manifest


