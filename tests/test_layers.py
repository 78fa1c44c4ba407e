"""The house's rules, read from pyproject.toml ([tool.stylegen.layers]) and checked against the code's
own imports, lazy ones included: each unit imports only what its rule allows, no module takes part in
an import circle, no module is over the line limit, and ARCHITECTURE.md names every unit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("manifests", "pipeline", "actors")
RULES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["stylegen"]["layers"]


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def unit_of(module: str) -> str:
    """The rule unit: a top-level package outside pipeline, pipeline's folder, or its shared module."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return parts[0]
    if len(parts) == 1:
        return "pipeline/__init__.py"
    folder = ROOT / "pipeline" / parts[1]
    return f"pipeline/{parts[1]}" if folder.is_dir() else f"pipeline/{parts[1]}.py"


def imports(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at any depth of the code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports that module; `from module import name` the module
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]  # fmt: skip
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found


GRAPH = {module: imports(path) for module, path in MODULES.items()}


def test_every_unit_has_a_rule_and_the_rules_form_no_circle():
    units = {unit_of(module) for module in MODULES} - {"pipeline/__init__.py"}
    ruled = set(RULES["may_import"]) | set(RULES["shared"])
    assert units - ruled == set(), "add these folders or modules to [tool.stylegen.layers]"
    assert ruled - units == set(), "these units in [tool.stylegen.layers] no longer exist"
    # the allowed edges themselves must be a layering: a depth-first search finds no back edge
    allowed = {unit: set(targets) for unit, targets in RULES["may_import"].items()}
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"the rules allow a circle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for target in allowed.get(unit, ()):
            visit(target, (*path, unit))
        done.add(unit)

    for unit in allowed:
        visit(unit, ())


def test_every_import_follows_the_rules():
    shared = set(RULES["shared"])
    broken = []
    for module, targets in GRAPH.items():
        source = unit_of(module)
        if source == "pipeline/__init__.py":
            continue
        allowed = {source} | set(RULES["may_import"].get(source, ()))
        allowed |= {"manifests"} if source in shared else shared
        for target in sorted(targets):
            if unit_of(target) not in allowed and target != "pipeline":
                broken.append(f"{MODULES[module].relative_to(ROOT)} imports {target} ({unit_of(target)})")
    assert broken == []


def test_no_import_circle():
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_module_over_the_line_limit():
    limit = RULES["max_lines"]
    long = {
        str(path.relative_to(ROOT)): lines
        for path in MODULES.values()
        if (lines := len(path.read_text().splitlines())) > limit
    }
    assert long == {}


def test_architecture_names_every_unit():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    units = set(RULES["may_import"]) | set(RULES["shared"])
    assert sorted(unit for unit in units if f"`{unit.removesuffix('.py')}" not in text) == []
