"""The house imports downward: each package may import only the packages below it (and itself).

The order is the data path's: the shared conventions at the bottom, then the body and its fitting, the shards the
datasets become, the fits table made from them, pictures of both, the offline builders, the trainer, the
pipelines that run it all, the benchmarks and, on top, the command line. Imports are read with `ast` (also those
inside functions), so a lazy import cannot hide an upward edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom first. A new package must be placed here, where its imports allow.
LAYERS = ("core", "fitting", "shards", "fits", "render", "assets", "training", "pipelines", "bench", "fitloop")


def packages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name != "tests")


def imported_packages(source: str) -> list[tuple[str, int]]:
    """(top-level package, line) of every absolute import in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def upward_imports(root: Path, layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Every import of a package from one below it, as 'file:line: a imports b (above it)'."""
    rank = {name: i for i, name in enumerate(layers)}
    bad = []
    for package in packages(root):
        for path in sorted((root / package).rglob("*.py")):
            for target, line in imported_packages(path.read_text()):
                if target in rank and rank[target] > rank[package]:
                    bad.append(f"{path.relative_to(root)}:{line}: {package} imports {target} (above it)")
    return bad


def test_every_package_has_a_layer():
    unplaced = [p for p in packages(REPO) if p not in LAYERS]
    assert not unplaced, f"place these packages in LAYERS (tests/test_layering.py): {unplaced}"


def test_packages_import_only_downward():
    bad = upward_imports(REPO)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a lazy import from a lower package into a higher one is reported."""
    for name, body in {"core": "", "training": "", "fitting": "def f():\n    from training.loop import train\n"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "mod.py").write_text(body)
    assert upward_imports(tmp_path) == ["fitting/mod.py:2: fitting imports training (above it)"]
    (tmp_path / "fitting" / "mod.py").write_text("import core.joints\n")
    assert upward_imports(tmp_path) == []

