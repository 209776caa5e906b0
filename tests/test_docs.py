"""The API reference site builds with ``mkdocs build --strict``, and the public API is documented.

* The build: ``mkdocs.yml`` at the repository root, a page per public module under
  ``docs/reference/``, the home page from README.md and the notebooks from ``examples/`` (both
  added by ``docs/hooks.py``), not executed here (``make docs`` executes them). Strict mode
  turns every warning into a failure: a broken link, a docstring parameter that is not in the
  signature, an unresolved cross-reference.
* The docstrings: every name in a public module's ``__all__`` has a docstring; every parameter of
  a public function or method is documented in its docstring's ``Args`` section; a class
  documents its constructor's parameters (``Args`` or ``Attributes`` of the class docstring, or
  ``Args`` of ``__init__``) and each of its public methods and properties has a docstring. A
  method that overrides an ebmlab base class's method, or implements a public ebmlab protocol's
  (a sampler's ``init``/``step``, an SDE's ``marginal``), may leave its docstring or its
  parameters to that method's documentation.
* Every public name has an entry on its module's reference page.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Protocol

import pytest

griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]

# One reference page per public module: docs/reference/<page>.md renders ``::: <module>``.
PUBLIC_MODULES = {
    "ebmlab": "ebmlab",
    "ebmlab.energies": "energies",
    "ebmlab.targets": "targets",
    "ebmlab.samplers": "samplers",
    "ebmlab.sde": "sde",
    "ebmlab.objectives": "objectives",
    "ebmlab.evaluation": "evaluation",
    "ebmlab.data": "data",
    "ebmlab.training": "training",
    "ebmlab.score_training": "score_training",
    "ebmlab.runs": "runs",
    "ebmlab.distributed": "distributed",
    "ebmlab.viz": "viz",
    "ebmlab.experiments": "experiments",
    "ebmlab.playground": "playground",
    "ebmlab.checkpoint": "checkpoint",
    "ebmlab.io": "io",
    "ebmlab.report": "report",
}

# The strict build must stay fast enough for the test suite (measured: about 10 s of CPU, one process).
BUILD_SECONDS_MAX = 60.0

_PARAMETER_SECTIONS = {"parameters", "other parameters", "attributes"}


# --------------------------------------------------------------------------- the build


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (wall time where ``resource`` does not exist)."""
    try:
        import resource
    except ImportError:  # Windows
        return time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    env.pop("EBMLAB_DOCS_EXECUTE", None)  # render the notebooks without running them
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu
    log = out.stdout + out.stderr
    problems = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert out.returncode == 0, "mkdocs build --strict failed:\n" + ("\n".join(problems) or log[-5000:])
    # CPU time, not wall time: on a shared machine the wall clock measures the neighbours too
    assert cpu < BUILD_SECONDS_MAX, f"the strict build took {cpu:.0f} s of CPU (at most {BUILD_SECONDS_MAX:.0f} s)"
    print(f"mkdocs build --strict: {seconds:.1f} s wall, {cpu:.1f} s CPU")
    return site


def test_strict_build_renders_home_reference_and_notebooks(built_site: Path) -> None:
    home = (built_site / "index.html").read_text(encoding="utf-8")
    assert "Two commands" in home  # the README, rendered
    assert 'src="img/report.png"' in home  # its docs/img/... links rewritten to the site's
    assert (built_site / "img" / "report.png").is_file()
    assert not (built_site / "hooks.py").exists()
    for page in PUBLIC_MODULES.values():
        assert (built_site / "reference" / page / "index.html").is_file(), page
    for example in sorted((ROOT / "examples").glob("[0-9][0-9]_*.py")):
        page = built_site / "examples" / example.stem / "index.html"
        assert page.is_file(), f"{example.name} has no page"
        assert (page.parent / example.name).is_file()  # include_source: the notebook's own file beside it


def test_reference_pages_cover_every_public_name(built_site: Path) -> None:
    """Each name of each page's ``__all__`` has an anchor on that page (griffe reads the source and can hide
    a function behind a submodule of the same name, e.g. ``runs.train``: the page then names it explicitly)."""
    pages = {p.stem for p in (ROOT / "docs" / "reference").glob("*.md")}
    assert pages == set(PUBLIC_MODULES.values()), "one docs/reference page per public module"
    missing = []
    for module_name, page in PUBLIC_MODULES.items():
        source = (ROOT / "docs" / "reference" / f"{page}.md").read_text(encoding="utf-8")
        assert re.search(rf"^::: {re.escape(module_name)}$", source, re.M), f"{page}.md does not render {module_name}"
        html = (built_site / "reference" / page / "index.html").read_text(encoding="utf-8")
        ids = set(re.findall(r'id="([^"]+)"', html))
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType):
                continue  # a subpackage or submodule: documented on its own page or through its names
            canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            if f"{module_name}.{name}" not in ids and canonical not in ids:
                missing.append(f"{module_name}.{name} (docs/reference/{page}.md)")
    assert not missing, "public names without an entry in the reference:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- the docstrings


def _sections(doc: str | None) -> list:
    if not doc:
        return []
    return griffe.Docstring(inspect.cleandoc(doc)).parse("google", warnings=False)


def _documented(doc: str | None, kinds: set[str] = _PARAMETER_SECTIONS) -> set[str]:
    names = set()
    for section in _sections(doc):
        if section.kind.value in kinds:
            names.update(item.name.lstrip("*") for item in section.value)
    return names


def _parameters(func) -> list[str]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name not in ("self", "cls")]


def _is_ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "ebmlab"


def _protocol_members(protocol: type) -> set[str]:
    return {n for n in protocol.__dict__ if not n.startswith("_")}


def _documenting_parents(cls: type, name: str, protocols: list[type]) -> list:
    """The ebmlab base classes, and the ebmlab protocols ``cls`` implements, that define ``name``: an override
    or an implementation is documented by them."""
    parents = [base.__dict__[name] for base in cls.__mro__[1:] if _is_ours(base) and name in base.__dict__]
    for protocol in protocols:
        members = _protocol_members(protocol)
        if protocol is not cls and name in members and all(hasattr(cls, n) for n in members):
            parents.append(protocol.__dict__[name])
    return parents


def _overrides_foreign(cls: type, name: str) -> bool:
    """``name`` overrides a method of a base class outside ebmlab (``nn.Module.extra_repr``): documented there."""
    return name != "forward" and any(not _is_ours(b) and name in b.__dict__ for b in cls.__mro__[1:])


def _doc_of(attr) -> str | None:
    func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
    return getattr(func, "__doc__", None)


def _function_problems(label: str, func, doc: str | None, inherited: tuple[str, ...] = ()) -> list[str]:
    if not doc and not any(inherited):
        return [f"{label}: no docstring"]
    documented = set().union(*(_documented(d, {"parameters", "other parameters"}) for d in (doc, *inherited)))
    return [f"{label}: parameter '{p}' not in its Args" for p in _parameters(func) if p not in documented]


def _class_problems(label: str, cls: type, protocols: list[type] = ()) -> list[str]:
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return [f"{label}: no class docstring"]
    problems = []
    init = cls.__dict__.get("__init__")
    own_init = next((c for c in cls.__mro__ if "__init__" in c.__dict__), object)
    if dataclasses.is_dataclass(cls) or (_is_ours(own_init) and Protocol not in cls.__mro__):
        # an inherited field or parameter may be documented by the ebmlab base class that declares it
        bases = [c.__dict__.get("__doc__") for c in cls.__mro__[1:] if _is_ours(c)]
        documented = set().union(*(_documented(d) for d in (doc, getattr(init, "__doc__", None), *bases)))
        for p in _parameters(cls):
            if p not in documented:
                problems.append(f"{label}: constructor parameter '{p}' not in the class's Args or Attributes")
    for name, attr in cls.__dict__.items():
        if name.startswith("_") or _overrides_foreign(cls, name):
            continue
        inherited = tuple(_doc_of(a) for a in _documenting_parents(cls, name, list(protocols)))
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if isinstance(func, (property, functools.cached_property)):
            if not func.__doc__ and not any(inherited):
                problems.append(f"{label}.{name}: no docstring")
        elif inspect.isfunction(func):
            problems += _function_problems(f"{label}.{name}", func, func.__doc__, inherited)
    return problems


def docstring_problems(module_names=tuple(PUBLIC_MODULES)) -> list[str]:
    """Every missing docstring and undocumented parameter in the public modules, one line each."""
    problems: list[str] = []
    seen: set[int] = set()
    modules = [importlib.import_module(m) for m in module_names]
    protocols = [obj for m in modules for obj in (getattr(m, n) for n in m.__all__)
                 if inspect.isclass(obj) and getattr(obj, "_is_protocol", False) and _is_ours(obj)]
    # the source as mkdocstrings reads it, for the constants' docstrings (a string after them or #: comments)
    package = griffe.load("ebmlab", search_paths=[str(ROOT / "src")], resolve_aliases=False,
                          extensions=griffe.load_extensions(f"{ROOT / 'docs' / 'hooks.py'}:CommentDocstrings"))
    for module_name in module_names:
        module = importlib.import_module(module_name)
        if not module.__doc__:
            problems.append(f"{module_name}: no module docstring")
        loaded = package if module_name == "ebmlab" else package[module_name.removeprefix("ebmlab.")]
        for name in module.__all__:
            obj = getattr(module, name)
            label = f"{module_name}.{name}"
            if isinstance(obj, types.ModuleType):
                if not obj.__doc__:
                    problems.append(f"{label}: no module docstring")
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if id(obj) in seen:  # re-exported: checked once, where it is first met
                    continue
                seen.add(id(obj))
                if inspect.isclass(obj):
                    problems += _class_problems(label, obj, protocols)
                else:
                    problems += _function_problems(label, obj, obj.__doc__)
                continue
            # A constant: its docstring is the string after the assignment, or a ``#:`` comment before it.
            try:
                member = loaded[name]
                doc = member.docstring if not member.is_alias else member.final_target.docstring
            except Exception:  # noqa: BLE001 - an alias griffe cannot follow counts as undocumented
                doc = None
            if doc is None or not doc.value.strip():
                problems.append(f"{label}: no docstring (a string after the assignment, or a #: comment)")
    return problems


def test_public_api_is_documented() -> None:
    problems = docstring_problems()
    assert not problems, f"{len(problems)} documentation problems:\n" + "\n".join(problems)


def test_docstring_check_catches_a_missing_docstring_and_an_undocumented_parameter() -> None:
    def documented(x, *, generator=None):
        """Something.

        Args:
            x: the points.
            generator: the randomness.
        """

    def undocumented_parameter(x, *, generator=None):
        """Something.

        Args:
            x: the points.
        """

    def no_docstring(x):
        pass

    @dataclasses.dataclass(frozen=True)
    class Sampler:
        """A sampler.

        Args:
            step_size: the step.
        """

        step_size: float
        num_steps: int = 1

        def step(self, energy, state):
            """One step.

            Args:
                energy: the energy.
                state: the state.
            """

        def init(self, energy, x):
            pass

    class Walker(Protocol):
        """A protocol."""

        def step(self, energy, state):
            """One step.

            Args:
                energy: the energy.
                state: the state.
            """

    class Implementation:
        """Implements Walker."""

        def step(self, energy, state):  # documented by the protocol it implements
            return state

        def extra(self, y):
            """Something about y, without Args."""

    assert _function_problems("f", documented, documented.__doc__) == []
    assert _function_problems("f", undocumented_parameter, undocumented_parameter.__doc__) == [
        "f: parameter 'generator' not in its Args"]
    assert _function_problems("f", no_docstring, no_docstring.__doc__) == ["f: no docstring"]
    assert _class_problems("Sampler", Sampler) == [
        "Sampler: constructor parameter 'num_steps' not in the class's Args or Attributes",
        "Sampler.init: no docstring",
    ]
    assert _class_problems("Implementation", Implementation, [Walker]) == [
        "Implementation.extra: parameter 'y' not in its Args"]
    assert _class_problems("Implementation", Implementation) == [
        "Implementation.step: no docstring", "Implementation.extra: parameter 'y' not in its Args"]
