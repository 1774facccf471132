"""The package's shape, as ARCHITECTURE.md draws it: layers, plain code, small modules.

Source: ARCHITECTURE.md at the repository root. Each test reads the source
text (the AST), not the running package, so it fails on the line that breaks
the rule and names it.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adagrad_jax"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 500

# The layers, lowest first. A module may import modules of its own layer and of
# lower layers only; the optimizer families (one layer) do not import each other.
LAYERS = {
    "core": 0,
    "tables": 1,
    "diagonal": 2,
    "regularized": 2,
    "beyond_diagonal": 2,
    "schedules": 2,
    "compat": 3,
    "state_access": 4,
    "flax_nnx": 4,
    "facade": 5,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> str:
    """'core', 'tables', ... for adagrad_jax._src.<layer>..., 'facade' for the public modules."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] == "_src":
        return parts[2]
    if name == "adagrad_jax._src":
        return "core"  # the package marker: a docstring only
    return "facade"


def package_imports(path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import of adagrad_jax in `path`."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("adagrad_jax")
        ):
            targets = [node.module]
            # `from adagrad_jax._src.core import checks` imports the module checks.
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / (candidate.replace(".", "/") + ".py")).exists():
                    targets.append(candidate)
            found += [(node.lineno, t, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, id(node) in top)
                for a in node.names
                if a.name.startswith("adagrad_jax")
            ]
    return found


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_module_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{rel(path)} has {lines} lines; split it by what it does."


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_imports_follow_the_layers(path):
    me = module_name(path)
    mine = layer_of(me)
    for line, target, at_top in package_imports(path):
        where = f"{rel(path)}:{line} imports {target}"
        assert at_top, f"{where} inside a function: import at module level (no hidden cycles)."
        theirs = layer_of(target)
        if mine == "facade" or target == "adagrad_jax":
            assert mine == "facade", f"{where}: only the public modules import the public face."
            continue
        assert LAYERS[theirs] <= LAYERS[mine], f"{where}: {mine} may not import {theirs}."
        if LAYERS[theirs] == LAYERS[mine] == 2:
            assert theirs == mine, f"{where}: the families do not import each other."


def test_no_import_cycle():
    graph = {module_name(p): {t for _, t, _ in package_imports(p)} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


FACADES = [p for p in MODULES if layer_of(module_name(p)) == "facade" and p.name != "__main__.py"]


@pytest.mark.parametrize("path", FACADES, ids=rel)
def test_public_modules_only_reexport(path):
    tree = ast.parse(path.read_text())
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        reexport = isinstance(node, ast.ImportFrom) and all(
            a.asname in (None, a.name) for a in node.names
        )
        names = (
            [t.id for t in node.targets if isinstance(t, ast.Name)]
            if isinstance(node, ast.Assign)
            else []
        )
        assert docstring or reexport or names in (["__all__"], ["__version__"]), (
            f"{rel(path)}:{node.lineno} is code; a public module only re-exports"
            " (the code belongs in adagrad_jax/_src)."
        )


TRICKS = {
    r"\blocals\(\)": "arguments forwarded through locals(): pass them by name",
    r"_getframe|currentframe\(": "frame inspection: find a plainer design",
    r"\bsetattr\(": "attributes set by name at run time: write them out",
}


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_tricks(path):
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        for pattern, why in TRICKS.items():
            assert not re.search(pattern, code), f"{rel(path)}:{lineno}: {why}."


def test_architecture_md_lists_every_module_and_only_those():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"`(adagrad_jax/[\w/]+\.py)`", text))
    actual = {rel(p) for p in MODULES}
    assert actual - listed == set(), f"modules missing from ARCHITECTURE.md: {actual - listed}"
    assert listed - actual == set(), (
        f"ARCHITECTURE.md lists files that do not exist: {listed - actual}"
    )
