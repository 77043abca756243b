"""Every ```python block of the README and of the example pages of the docs runs as written.

Each block is self-contained: it runs alone, in a fresh namespace, so a reader
can paste any one of them. A block whose first line says ``(not run here)``
is not run: TensorFlow's side of a comparison (the golden suite checks what it
computes) or a file of the reader's. Blocks that import a library this
environment lacks are skipped, with the library named.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The README and the docs pages written as runnable examples (a page joins by
#: being listed here, once its blocks run alone).
PAGES = [
    ROOT / "README.md",
    *(ROOT / "docs" / name for name in ("index.md", "getting-started.md", "vendoring.md", "porting.md", "conventions.md")),
    *sorted((ROOT / "docs" / "migration").glob("*.md")),
    *sorted((ROOT / "docs" / "traps").glob("*.md")),
]
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
_IMPORT = re.compile(r"^(?:import|from) (\w+)", re.MULTILINE)


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            indent = len(match.group(1))
            code = "\n".join(line[indent:] for line in match.group(2).splitlines())
            if "(not run here)" in code.lstrip().partition("\n")[0]:
                continue
            line = text.count("\n", 0, match.start()) + 1
            yield pytest.param(code, id=f"{page.relative_to(ROOT)}:{line}")


BLOCKS = list(_blocks())


def test_the_readme_has_runnable_blocks():
    assert sum(param.id.startswith("README.md") for param in BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS)
def test_block_runs(code):
    for module in _IMPORT.findall(code):
        if module in ("torch", "jax", "flax", "dask", "cupy", "array_api_strict", "h5py"):
            pytest.importorskip(module)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, "<block>", "exec"), namespace)
