"""Every namespace the README shows imports as ``import ebmlab.X``, and the lower floors stay below the upper ones.

The floors (DESIGN.md), from the ground up: grid (with checks and devices), energies;
samplers, data; objectives, evaluation, viz; training, runs; report, cli.
A module imports only from its own floor or below; the layering test reads
the import statements (also the lazy ones inside functions) with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ebmlab"

README_NAMESPACES = ["evaluation", "data", "objectives", "training", "experiments", "targets", "samplers"]


@pytest.mark.parametrize("name", README_NAMESPACES + ["grid", "checks", "energies", "energies.targets"])
def test_namespace_imports_as_a_module(name: str) -> None:
    module = importlib.import_module(f"ebmlab.{name}")
    assert module.__name__ == f"ebmlab.{name}"


def test_readme_namespaces_import_in_a_fresh_interpreter() -> None:
    # A fresh process, so no earlier import in this test session can stand in for a missing module.
    stmt = "; ".join(f"import ebmlab.{n}" for n in README_NAMESPACES)
    code = f"{stmt}; from ebmlab.targets import GaussianMixture; print(GaussianMixture.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ebmlab.energies.targets.mixture"
    # The package attribute is the module itself even before anything imports the submodule by name.
    out = subprocess.run([sys.executable, "-c", "import ebmlab; print(ebmlab.targets.__name__)"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ebmlab.targets"


def test_ebmlab_targets_is_the_targets_module_and_reexports_the_api() -> None:
    import ebmlab
    import ebmlab.energies.targets as family
    import ebmlab.targets as face

    assert ebmlab.targets is face is sys.modules["ebmlab.targets"]
    assert sorted(face.__all__) == sorted(family.__all__)
    for name in family.__all__:
        assert getattr(face, name) is getattr(family, name), name
    from ebmlab.targets import GaussianMixture, get

    assert isinstance(get("eight_gaussians"), GaussianMixture)
    assert ebmlab.targets.get("banana").name == "banana"


def test_evaluation_keeps_exporting_quadrature_grid() -> None:
    import ebmlab.evaluation
    import ebmlab.grid

    assert ebmlab.evaluation.quadrature_grid is ebmlab.grid.quadrature_grid


# ------------------------------------------------------------------ floors


def _ebmlab_imports(path: Path) -> set[str]:
    """The ``ebmlab`` modules a file imports, absolute names, lazy imports included."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("ebmlab"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)  # `from ebmlab import samplers`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ebmlab"))
    return out


def _files(*names: str) -> list[Path]:
    files: list[Path] = []
    for name in names:
        p = SRC / name
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
    return files


# (files, ebmlab modules they may import: a prefix match on the dotted name)
# checks and devices are the ground floor: every module may import them, they import no ebmlab module.
GROUND = ["ebmlab.checks", "ebmlab.devices"]
FLOORS = {
    "checks": (["checks"], []),
    "devices": (["devices"], []),
    "grid": (["grid"], GROUND),
    "energies": (["energies"], [*GROUND, "ebmlab.grid", "ebmlab.energies"]),
    "samplers": (["samplers"], [*GROUND, "ebmlab.grid", "ebmlab.energies", "ebmlab.samplers", "ebmlab.data"]),
    "sde": (["sde"], [*GROUND, "ebmlab.grid", "ebmlab.energies", "ebmlab.samplers", "ebmlab.objectives",
                      "ebmlab.sde"]),
    "toy data": (["data/toy"], [*GROUND, "ebmlab.grid", "ebmlab.energies", "ebmlab.samplers", "ebmlab.data"]),
}


@pytest.mark.parametrize("floor", list(FLOORS))
def test_lower_floors_do_not_import_upper_ones(floor: str) -> None:
    names, allowed = FLOORS[floor]
    bad = []
    for path in _files(*names):
        for mod in _ebmlab_imports(path):
            if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not bad, "\n".join(bad)
