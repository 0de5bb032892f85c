"""The layer rule, read from the import statements of every module (lazy imports included).

hpo.core     what everything shares; imports no layer above it and no training library
migrations   our tables' history; belongs to the core
service      the REST API and dashboard, on the core
worker       trials on a GPU, on the core
hpo.*        entry points (CLI, client, demo, plots, simulator) on all of the above
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ("torch", "transformers", "peft", "datasets", "accelerate", "trl")
OURS = ("hpo", "service", "worker", "migrations", "tests", "bench")
# layer -> the first-party packages it may import
ALLOWED = {
    "hpo.core": ("hpo.core", "migrations"),
    "migrations": ("hpo.core", "migrations"),
    "service": ("hpo.core", "service"),
    "worker": ("hpo.core", "worker"),
}


def _layer(path: Path) -> str | None:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[:2] == ("hpo", "core"):
        return "hpo.core"
    return parts[0] if parts[0] in ALLOWED else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


MODULES = sorted(
    p
    for folder in ("hpo", "service", "worker", "migrations")
    for p in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_its_layer_and_below(path: Path) -> None:
    layer = _layer(path)
    if layer is None:
        return  # the entry points may import every layer
    wrong = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if _within(module, OURS) and not _within(module, ALLOWED[layer])
    ]
    assert not wrong, f"{layer} may import only {ALLOWED[layer]}: {wrong}"


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if _layer(p) in ("hpo.core", "service", "migrations")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_api_side_needs_no_training_libraries(path: Path) -> None:
    """The API image has no torch: the core and the service must import none of it."""
    wrong = [f"line {line}: {m}" for line, m in _imports(path) if _within(m, TRAINING)]
    assert not wrong, wrong
