"""The package layout of issue 18, checked on the source (AST), so a regression fails here and not
in a reviewer's head: no import circle inside ``recsae/``, the core never imports a job, no file over
600 lines in ``recsae/`` or ``service/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 600

# The two layers of recsae/ (docs/ARCHITECTURE.md). Core: what the service and every job build on
# (NumPy, ONNX Runtime, Pydantic; torch only in sae). Jobs: the offline work on top of it.
CORE = ("recsae", "recsae.data", "recsae.kernel", "recsae.bundle", "recsae.concepts", "recsae.evaluate",
        "recsae.sae", "recsae.engine", "recsae.policy", "recsae.ann")
JOBS = ("recsae.pipeline", "recsae.stages", "recsae.quality", "recsae.config", "recsae.interpret",
        "recsae.debias", "recsae.cli", "recsae.train", "recsae.dist_sae", "recsae.__main__")

# service/ is being split by another branch (issue 18, item 1); it empties this list.
OVER_LIMIT_ALLOWED: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str = "recsae") -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every recsae module ``name`` imports, at the top or inside a function (a circle through a
    function-level import is still a circle: it only moves the failure to run time). Importing
    ``a.b.c`` also runs ``a.b``'s ``__init__``: that counts as an import of ``a.b``."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                # the packages above the importer are already running; the root package imports nothing
                if m in known and m != name and m not in ("recsae", "service") and not name.startswith(m + "."):
                    found.add(m)
    return found


def graph(package: str = "recsae") -> dict[str, set[str]]:
    mods = modules(package)
    known = set(mods)
    return {n: imports_of(n, p, known) for n, p in mods.items()}


def find_circle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_inside_recsae_or_service():
    for package in ("recsae", "service"):
        circle = find_circle(graph(package))
        assert circle is None, f"import circle in {package}/: " + " -> ".join(circle)


def in_layer(name: str, layer: tuple[str, ...]) -> bool:
    if name == "recsae":
        return "recsae" in layer
    return any(name == m or name.startswith(m + ".") for m in layer if m != "recsae")


def test_every_module_is_in_one_layer_and_the_core_never_imports_a_job():
    g = graph()
    unplaced = [n for n in g if in_layer(n, CORE) == in_layer(n, JOBS)]
    assert not unplaced, f"add these to CORE or JOBS (and docs/ARCHITECTURE.md): {unplaced}"
    wrong = {n: sorted(m for m in deps if in_layer(m, JOBS)) for n, deps in g.items() if in_layer(n, CORE)}
    wrong = {n: d for n, d in wrong.items() if d}
    assert not wrong, f"core modules import job modules: {wrong}"


@pytest.mark.parametrize("package", ["recsae", "service"])
def test_no_file_over_600_lines(package):
    over = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(over) <= OVER_LIMIT_ALLOWED, f"files over {MAX_LINES} lines (split them by job): {over}"
    stale = sorted(f for f in OVER_LIMIT_ALLOWED if f.startswith(package + "/") and f not in over)
    assert not stale, f"{stale} are within the limit now: drop them from OVER_LIMIT_ALLOWED"


def test_the_bento_ships_every_recsae_module_the_service_imports_and_recsae_never_imports_service():
    """``bentofile.yaml`` lists the serve-time half of recsae by hand: a module the service
    imports (directly or through another) and the bento lacks fails only when the bento starts."""
    g = graph()
    known = set(g)
    todo = set()
    for p in sorted((ROOT / "service").rglob("*.py")):
        todo |= {m for m in imports_of(module_name(p), p, known | {"service"}) if m.startswith("recsae")}
    needed: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in needed:
            needed.add(m)
            todo |= g.get(m, set())
    files = {str(modules()[m].relative_to(ROOT)) for m in needed | {"recsae"}}
    shipped = {line.strip()[3:-1] for line in (ROOT / "bentofile.yaml").read_text().splitlines()
               if line.strip().startswith('- "recsae/')}
    assert files <= shipped, f"add to bentofile.yaml's include: {sorted(files - shipped)}"
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        bad = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               and any(t.split(".")[0] == "service" for t in
                       ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]))]
        assert not bad, f"{name} imports service/: the service is built on recsae, never the reverse"
