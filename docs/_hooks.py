"""MkDocs hooks: repository files that the docs link to with ``../``.

The Markdown under docs/ is written to read correctly on GitHub, where a link
such as ``../benchmarks/results/cpu_train.png`` or ``../conformance/README.md``
points into the repository (a ``../`` link from a subfolder of docs/ to another
page, such as ``../traps/epsilon.md``, is MkDocs' own and left alone). In the
built site those targets are outside the docs folder, so this hook copies linked
images into the site (under ``repository/``) and turns links to other repository
files into links to the file's path in the repository, in code type (the project
names no public host, and a link to a guessed one would break). A link to a file
that does not exist is left as it is, so the strict build still reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

_LINK = re.compile(r"(\[([^\]]*)\]\()(\.\./[^)\s#]+)([^)]*\))")
_IMAGES = (".png", ".svg", ".jpg", ".gif")
_PREFIX = "repository"


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def on_files(files, config):
    """Each image under benchmarks/results/ becomes a site file under repository/."""
    root = _root(config)
    for image in sorted((root / "benchmarks" / "results").glob("*.png")):
        relative = image.relative_to(root).as_posix()
        files.append(File.generated(config, f"{_PREFIX}/{relative}", abs_src_path=str(image)))
    return files


def on_page_markdown(markdown, page, config, files):
    root = _root(config)
    base = posixpath.dirname(page.file.src_uri)

    def rewrite(match):
        target = posixpath.normpath(posixpath.join("docs", base, match.group(3)))
        if target.startswith(("..", "docs/")) or not (root / target).exists():
            return match.group(0)  # outside the repository, another docs page, or missing
        if target.endswith(_IMAGES):
            local = posixpath.relpath(f"{_PREFIX}/{target}", base or ".")
            return f"{match.group(1)}{local}{match.group(4)}"
        label = match.group(2)
        return label if label.strip("`") == target else f"{label} (`{target}` in the repository)"

    return _LINK.sub(rewrite, markdown)
