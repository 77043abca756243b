"""Backend-agnostic kernels: array-API arithmetic with ``xp`` as a keyword, no validation.

Each kernel is the definition of one computation; a library's fast path may
replace one (``_native``), within the accuracy contract.
"""
