"""The package's shape, read with ``ast`` from the source (nothing is imported, so it takes no time):

* no import circle among em's modules, counting imports made inside functions and the package ``__init__``
  that importing a module runs first;
* at most :data:`MAX_TOP` modules at the top of ``em/`` (shared helpers; every stage is a package);
* each stage package has its entry, ``run.py``;
* the config package (schemas, composition checks) imports no stage package;
* an ``em.*`` import inside a function only where :data:`LAZY_ALLOWED` says why.

``python tests/test_structure.py`` prints the import circles and the function-level imports it finds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "em"
MAX_TOP = 8
STAGES = ("data", "train", "evaluate", "judge", "analysis", "adapters", "capability", "jobs", "interp", "dynamics")
# Function-level em.* imports allowed, module -> why. Each is an entry point that keeps `--help` and `em`'s
# dispatch fast: the stage (and torch) is imported only once the command really runs.
LAZY_ALLOWED = {
    "em.commands": "em <command> imports only the chosen command",
    "em.commands.train": "the Hydra app: the job's stages (torch, Lightning) load only when a job runs",
    "em.commands.evaluate": "the Hydra app: generation backends load only when it runs",
    "em.commands.analyze": "the Hydra app: pandas / matplotlib load only when it runs",
    "em.commands.capability": "the Hydra app: lm-eval and torch load only when it runs",
    "em.commands.interp": "the Hydra app: torch loads only when it runs",
    "em.commands.judge": "the Hydra app: the judge loads only when it runs",
}


def module_name(path: Path) -> str:
    """Dotted name of a source file under em/ (``em/x/__init__.py`` -> ``em.x``)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def em_modules() -> dict[str, Path]:
    """Every em module by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The em module that an imported dotted name lives in (``em.x.f`` -> ``em.x``), None outside em."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported em module, line, inside a function)`` for each em import of a module.

    ``from em.x import y`` counts as importing ``em.x.y`` when that is a module, else ``em.x``; relative imports
    are resolved against the module's package. An import under ``if TYPE_CHECKING:`` is not run and not counted.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for c in child.orelse:
                    visit(c, in_func)
                continue
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for n in names:
                target = _resolve(n, known) if n.split(".")[0] == "em" else None
                if target and target != mod:
                    found.append((target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """The import graph over em modules, and the function-level em imports as ``(module, line, imported)``."""
    known = em_modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    lazy = []
    for mod, path in known.items():
        for target, line, in_func in imports(mod, path, known):
            edges[mod].add(target)
            if in_func:
                lazy.append((mod, line, target))
        # importing a module runs its packages' __init__ first: from outside a package that is an import of it
        # (inside, the package is already importing); an __init__ that walks its package with pkgutil
        # (em.config registers every schema module) imports each module of it
        for target in list(edges[mod]):
            parts = target.split(".")
            for k in range(2, len(parts)):
                pkg = ".".join(parts[:k])
                if pkg in known and not (mod == pkg or mod.startswith(pkg + ".")):
                    edges[mod].add(pkg)
        if path.name == "__init__.py" and "pkgutil.iter_modules" in path.read_text(encoding="utf-8"):
            edges[mod] |= {m for m in known if m.rpartition(".")[0] == mod}
    return edges, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; sorted by first name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


def top_modules() -> list[str]:
    """The ``.py`` files directly under em/."""
    return sorted(p.name for p in PACKAGE.glob("*.py"))


def test_cycle_finder_finds_a_known_circle():
    """The finder itself: a three-module loop and a self-contained pair come back, a chain does not."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert cycles(edges) == [["a", "b", "c"], ["d", "e"]]


def test_no_import_circle():
    """No two em modules reach each other through imports, function-level ones included."""
    found = cycles(graph()[0])
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_few_top_level_modules():
    """The top of em/ keeps only shared helpers; a stage's code lives in its package."""
    top = top_modules()
    assert len(top) <= MAX_TOP, f"{len(top)} modules at the top of em/ (at most {MAX_TOP}): {', '.join(top)}"


def test_each_stage_has_run():
    """Each stage is a package whose entry is run.py."""
    missing = [s for s in STAGES if not (PACKAGE / s / "run.py").is_file()]
    assert not missing, f"stage packages without run.py: {missing}"


def test_config_imports_no_stage():
    """Schemas and composition checks stand below every stage: em.config reaches no stage package."""
    edges = graph()[0]
    seen, todo = set(), [m for m in edges if m == "em.config" or m.startswith("em.config.")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges[m])
    bad = sorted(m for m in seen if m.split(".")[1:2] and m.split(".")[1] in STAGES + ("commands",))
    assert not bad, f"em.config reaches stage modules: {bad}"


def test_function_level_imports_allowed():
    """``em.*`` imports sit at module level, except in the entry points of :data:`LAZY_ALLOWED`."""
    bad = [f"{m} line {line}: imports {t}" for m, line, t in graph()[1] if m not in LAZY_ALLOWED]
    assert not bad, "function-level em imports outside the allow-list:\n" + "\n".join(bad)


if __name__ == "__main__":
    e, lz = graph()
    print("circles:", *(" <-> ".join(c) for c in cycles(e)), sep="\n  ")
    print(f"top-level modules ({len(top_modules())}):", ", ".join(top_modules()))
    print(f"function-level em imports ({len(lz)}):", *(f"{m}:{line} -> {t}" for m, line, t in lz), sep="\n  ")
