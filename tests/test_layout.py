"""The package's architecture: layers import only downwards, no import cycles, modules of one
purpose and bounded size, and the README's module map is the tree."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "regv1_jax"
# Bottom to top; a module may import its own layer and those below it.
LAYERS = {"status": 0, "_paths": 0, "_traces": 0, "model": 1, "io": 2, "solve": 3, "fit": 4,
          "analysis": 5, "science": 6, "report": 7, "cli": 8}
MAX_LINES = 600


def _modules():
    return sorted(p for p in PKG.rglob("*.py"))


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every regv1_jax module ``path`` imports (top level or inside functions), resolved
    to dotted names (``from . import x`` counts as the module ``x`` when it is one)."""
    name = _name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("regv1_jax"):
                continue
            if node.module or not node.level:  # `from . import x` imports x, not the package
                out.add(target)
            for a in node.names:  # submodules imported by name
                sub = f"{target}.{a.name}"
                if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or (
                        ROOT / Path(*sub.split(".")) / "__init__.py").exists():
                    out.add(sub)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("regv1_jax")}
    out.discard(name)
    return out


def _layer(dotted: str):
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {_name(p): _imports(p) for p in _modules()}


def test_every_module_belongs_to_a_layer():
    for mod in GRAPH:
        layer = _layer(mod)
        assert layer is None or layer in LAYERS or layer == "__main__", mod


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, targets in GRAPH.items():
        src = _layer(mod)
        if src is None or src == "__main__":  # the package root re-exports every layer
            continue
        for t in targets:
            dst = _layer(t)
            if dst is not None and LAYERS[dst] > LAYERS[src]:
                bad.append(f"{mod} -> {t}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle():
    # Package __init__ modules re-export their layer; an edge into one counts as edges into
    # what it re-exports, so cycles through them are found too.
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if t not in GRAPH or t == "regv1_jax":
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_readme_module_map_is_the_tree():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- module map -->(.*?)<!-- /module map -->", text, re.S)
    assert block, "README.md has no module map block"
    listed = set(re.findall(r"(regv1_jax/[\w/]+\.(?:py|cc|h))", block.group(1)))
    tree = {str(p.relative_to(ROOT)) for p in PKG.rglob("*")
            if p.suffix in (".py", ".cc", ".h") and "__pycache__" not in p.parts}
    assert listed == tree, (f"in the tree, not in the map: {sorted(tree - listed)}; "
                            f"in the map, not in the tree: {sorted(listed - tree)}")


@pytest.mark.parametrize("folder", ["tests", "benchmarks", "scripts"])
def test_tests_benchmarks_and_scripts_use_the_public_namespace(folder):
    """No import of a private module (``regv1_jax...._x``) outside the package."""
    bad = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regv1_jax"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("regv1_jax")]
            for n in names:
                if any(part.startswith("_") for part in n.split(".")[1:]):
                    bad.append(f"{path.name}: {n}")
    assert not bad, "private imports:\n" + "\n".join(bad)
