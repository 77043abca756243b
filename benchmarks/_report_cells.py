"""Reading one figure out of a saved kernel run, and writing it as the report does.

The medians, ratios and the case order every part of the kernel report
(``report.py``) shares: its tables (``_report_tables.py``) and the figures its
prose quotes (``_report_notes.py``) look cases up and format numbers alike.
"""

from __future__ import annotations

import math


def _median(case: dict, name: str) -> float | None:
    return case["results"].get(name, {}).get("median_ms")


def _find(payload: dict, operation: str, shape: str, layout: str, dtype: str) -> dict | None:
    for case in payload["cases"]:
        if (case["operation"], case["shape_name"], case["layout"], case["dtype"]) == (
            operation,
            shape,
            layout,
            dtype,
        ):
            return case
    return None


def _ratio(case: dict | None, name: str, reference: str) -> float | None:
    if case is None:
        return None
    a, b = _median(case, name), _median(case, reference)
    return a / b if a and b else None


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}×"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


SHAPE_ORDER = ("64x64", "256x512", "128x1024", "8x32x16x16", "16x64x28x28", "32x64x56x56")


def _sorted_cases(payload: dict) -> None:
    """Tables read smallest shape first, whatever order the run measured in."""

    def key(case):
        name = case["shape_name"]
        return (SHAPE_ORDER.index(name) if name in SHAPE_ORDER else len(SHAPE_ORDER), name)

    payload["cases"] = sorted(payload["cases"], key=key)
