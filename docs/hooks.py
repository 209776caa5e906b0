"""MkDocs hooks: the home page from README.md and the notebooks from examples/, neither copied by hand.

* ``index.md`` is README.md with its repository-relative links rewritten to resolve inside the
  site (``docs/img/x.png`` -> ``img/x.png``, ``docs/benchmarks.md`` -> ``benchmarks.md``,
  ``examples/01_x.py`` stays: it is a page of the site too).
* Every ``examples/NN_*.py`` (a jupytext percent-format notebook) becomes the page
  ``examples/NN_*/``, rendered by mkdocs-jupyter from the file where it is (nothing is copied
  into docs/), and the nav's "Notebooks" section lists whatever exists (none: no section).
* ``#:`` comments above constants are their docstrings (:class:`CommentDocstrings`, a griffe extension
  that mkdocs.yml gives to mkdocstrings).
* Sphinx roles in docstrings (``:func:`x` ``) render as plain code.
* ``EBMLAB_DOCS_EXECUTE=1`` (or ``true``/``yes``) executes the notebooks so their outputs are
  shown (``make docs``); unset, they are rendered without running (the test suite).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import griffe
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

NOTEBOOKS = "examples"  # the notebooks' folder, in the repository and in the site
NOTEBOOK_GLOB = "[0-9][0-9]_*.py"
NAV_SECTION = "Notebooks"
NAV_BEFORE = "API reference"

# ](docs/...), optionally with a leading "./"; absolute URLs, anchors and ](examples/NN_x.py) untouched.
_DOCS_LINK = re.compile(r"\]\((?:\./)?docs/")
# Docstrings name objects the Sphinx way (:func:`sample`, :class:`~ebmlab.training.TrainingDiverged`), which
# Markdown renders as ":func:<code>sample</code>": keep the code, drop the role and the "~".
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):<code>~?")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _notebooks(config) -> list[Path]:
    return sorted((_root(config) / NOTEBOOKS).glob(NOTEBOOK_GLOB))


def _execute() -> bool:
    return os.environ.get("EBMLAB_DOCS_EXECUTE", "").strip().lower() in {"1", "true", "yes", "on"}


def readme_as_index(text: str) -> str:
    """README.md's text with its repository-relative links pointing inside the site."""
    return _DOCS_LINK.sub("](", text)


def on_config(config):
    """Insert the Notebooks section into the nav and set mkdocs-jupyter's ``execute`` from the environment."""
    jupyter = config.plugins.get("mkdocs-jupyter")
    if jupyter is not None:
        # Set here rather than with !ENV: YAML reads EBMLAB_DOCS_EXECUTE=1 as the integer 1,
        # which mkdocs-jupyter's boolean option refuses.
        jupyter.config["execute"] = _execute()
    pages = [f"{NOTEBOOKS}/{path.name}" for path in _notebooks(config)]
    if pages and config.nav is not None:
        nav = [item for item in config.nav if not (isinstance(item, dict) and NAV_SECTION in item)]
        at = next((i for i, item in enumerate(nav) if isinstance(item, dict) and NAV_BEFORE in item), len(nav))
        nav.insert(at, {NAV_SECTION: pages})
        config.nav = nav
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the notebook files into pages
def on_files(files: Files, config) -> Files:
    """Add the home page (from README.md) and the example notebooks to the site's files."""
    readme = _root(config) / "README.md"
    files.append(File.generated(config, "index.md", content=readme_as_index(readme.read_text(encoding="utf-8"))))
    for path in _notebooks(config):
        # A real file under the repository root (not File.generated: mkdocs-jupyter's wrapper reads the
        # source path from src_dir and src_uri), so examples/01_x.py is the page examples/01_x/.
        files.append(File(f"{NOTEBOOKS}/{path.name}", src_dir=str(_root(config)), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx roles that docstrings use around names (see ``_ROLE``)."""
    return _ROLE.sub("<code>", html)


def on_serve(server, config, builder):
    """``mkdocs serve`` rebuilds when README.md or an example changes, as for files under docs/."""
    server.watch(str(_root(config) / "README.md"))
    server.watch(str(_root(config) / NOTEBOOKS))
    return server


class CommentDocstrings(griffe.Extension):
    """Read the ``#:`` comment lines right above an attribute as its docstring (Sphinx's convention, which
    the code uses for constants) when the attribute has no docstring of its own."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        """Give ``attr`` the docstring written in ``#:`` comments above it."""
        if attr.docstring is not None or not attr.lineno or attr.filepath is None:
            return
        try:
            lines = Path(attr.filepath).read_text(encoding="utf-8").splitlines()
        except (OSError, TypeError):
            return
        comment: list[str] = []
        i = attr.lineno - 2  # the line above the assignment, 0-based
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].removeprefix(" "))
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=i + 2, endlineno=attr.lineno - 1, parent=attr)
