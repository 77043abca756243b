"""The sdist has the package and leaves the goldens out.

``python tools/check_sdist.py DIST`` checks the one ``bn_portable-*.tar.gz`` in
DIST (``nox -s package`` builds it there): the goldens stay in the repository,
since the conformance suite needs a checkout anyway, and would make the sdist
many megabytes.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

#: Far above the sdist's size without the goldens (about 6 MB, most of it the
#: whole-model porting files the unit tests read: tests/data/porting/models),
#: far below it with them (26 MB more).
MAX_BYTES = 10_000_000


def main(dist: Path) -> None:
    (sdist,) = dist.glob("bn_portable-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert not [n for n in names if "/conformance/goldens/" in n], "the sdist ships the goldens"
    assert any(n.endswith("/src/bn_portable/__init__.py") for n in names), "the sdist lacks the package"
    size = sdist.stat().st_size
    assert size < MAX_BYTES, f"the sdist is {size} bytes"
    print(f"{sdist.name}: {len(names)} files, {size / 1e3:.0f} kB, no goldens")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
