"""The environment variables that configure the fast paths, parsed in one place.

- ``BN_PORTABLE_FAST_PATHS``: a boolean (``1``/``0``, ``true``/``false``,
  ``on``/``off``, ``yes``/``no``, any case, surrounding spaces ignored); unset
  or empty means on. Read once, when bn_portable is imported.
- ``BN_PORTABLE_NUM_THREADS``: a positive integer, the threads the NumPy fast
  paths may use; unset or empty means the number of CPUs this process may run on.

Anything else is a ``ValueError`` naming the variable, raised on first use (the
import, for both: a typo must not wait for the first large call to show up),
rather than being read as some default.
"""

from __future__ import annotations

import functools
import os

FAST_PATHS_VARIABLE = "BN_PORTABLE_FAST_PATHS"
NUM_THREADS_VARIABLE = "BN_PORTABLE_NUM_THREADS"

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def fast_paths_from_environment() -> bool:
    """``BN_PORTABLE_FAST_PATHS`` as a bool (True when unset); checks the thread count too."""
    num_threads_from_environment()  # validated here so that a typo fails at import
    return parse_bool(FAST_PATHS_VARIABLE, os.environ.get(FAST_PATHS_VARIABLE, ""), default=True)


def num_threads_from_environment() -> int | None:
    """``BN_PORTABLE_NUM_THREADS`` as a positive int, or None when unset or empty."""
    return parse_positive_int(NUM_THREADS_VARIABLE, os.environ.get(NUM_THREADS_VARIABLE, ""))


@functools.cache
def parse_bool(variable: str, setting: str, *, default: bool) -> bool:
    word = setting.strip().lower()
    if not word:
        return default
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(
        f"{variable} must be one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)} "
        f"(any case), got {setting!r}"
    )


@functools.cache
def parse_positive_int(variable: str, setting: str) -> int | None:
    text = setting.strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(
            f"{variable} must be a positive integer (a number of threads), got {setting!r}"
        )
    return count
