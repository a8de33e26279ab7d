"""The shape of src/: libraries import nothing from Kedro, imports flow only downward through the
layers below, and no module imports another that (directly or not) imports it back, counting
imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pemt_pipeline"

# Lowest first; a module may import from its own layer (without a cycle) and from lower ones.
LAYERS = (
    ("configs", "atomic", "devices", "distributed", "kill_points", "locking", "profiling", "storage"),
    ("media",),
    ("models",),
    ("features",),
    ("sampling",),
    ("training",),
    ("evaluation",),
    ("finetuning",),
    ("pruning",),
    ("reporting",),
    # Kedro-aware: configuration loading, datasets, pipelines and the project's wiring
    ("project_config", "datasets", "pipelines", "pipeline_registry", "hooks", "settings", "param_table",
     "__main__"),
)
LIBRARIES = {name for layer in LAYERS[:-1] for name in layer}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pemt_pipeline",) + path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every pemt_pipeline module `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def kedro_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        out += [n for n in names if n == "kedro" or n.startswith(("kedro.", "kedro_"))]
    return out


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top(module) in layer)


def test_every_module_has_a_layer():
    assert not [m for m in modules() if m != "pemt_pipeline" and not any(top(m) in layer for layer in LAYERS)]


def test_libraries_import_nothing_from_kedro():
    offenders = {m: kedro_imports(p) for m, p in modules().items() if top(m) in LIBRARIES}
    assert not {m: k for m, k in offenders.items() if k}


def test_imports_flow_downward():
    mods = modules()
    upward = [f"{m} -> {t}" for m, p in mods.items() if m != "pemt_pipeline"
              for t in imports(m, p, set(mods)) if t != "pemt_pipeline" and layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle():
    mods = modules()
    graph = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them: drop the edges
    # from a submodule to its own package's __init__ only when that is what it imports
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
