"""The package's layout rules: no module of wdspq over 500 lines, no import cycle among wdspq's
modules, function-level (lazy) imports included, and a torch-free read path (the episode source, the
exporter and verify load no torch and do not go through the torch dataset).

Every module is parsed with `ast`; each `import`/`from ... import` anywhere in it (module level or
inside a function) becomes an edge to the wdspq module it names (`from .pkg import name` points at the
submodule `pkg.name` when there is one, else at `pkg`). Importing `wdspq.a.b` from outside package
`wdspq.a` also runs `wdspq/a/__init__.py` first, so it adds an edge to `wdspq.a` too; a module's own
parent packages are not edges (every package's `__init__` imports its own submodules). Imports under
`if TYPE_CHECKING:` are left out: they never run.

The two allow-lists below name what still breaks the rules today: the remaining work of the redesign.
A new oversize module or a new cycle fails; so does an allow-list entry that is no longer needed
(remove it when its module is split or its cycle is cut).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wdspq"
MAX_LINES = 500

# Modules still over MAX_LINES (split them, then drop them from here).
OVERSIZE_ALLOWED: set[str] = set()

# Import edges (importer, imported) that still close a cycle, each papered over by a lazy import.
# The graph minus these edges must be acyclic, and every edge listed must still exist.
CYCLE_EDGES_ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    """'wdspq.a.b' for wdspq/a/b.py, 'wdspq.a' for wdspq/a/__init__.py."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of wdspq by name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for stmt in node.body:
                    skip.update(id(n) for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The wdspq modules that module `name` (at `path`) imports, lazily or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif target in known:
                    out.add(target)
    out.discard(name)
    return out


def with_packages(name: str, targets: set[str], known: set[str]) -> set[str]:
    """`targets` plus the packages whose `__init__` importing them runs first: each target's parent
    packages, except those that also contain the importer `name` (already running)."""
    own = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    out = set(targets)
    for t in targets:
        out.update(p for p in (t.rsplit(".", k)[0] for k in range(1, t.count(".") + 1))
                   if p in known and p not in own)
    out.discard(name)
    return out


def import_graph(cut: set[tuple[str, str]] = frozenset()) -> dict[str, set[str]]:
    """Module name -> the wdspq modules importing it runs, leaving out the imports listed in `cut`."""
    mods = modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        targets = {t for t in imports_of(name, path, known) if (name, t) not in cut}
        graph[name] = with_packages(name, targets, known)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    new = {name: n for name, n in over.items() if name not in OVERSIZE_ALLOWED}
    assert not new, f"modules over {MAX_LINES} lines (split them into smaller modules): {new}"
    stale = sorted(OVERSIZE_ALLOWED - set(over))
    assert not stale, f"no longer over {MAX_LINES} lines: remove {stale} from OVERSIZE_ALLOWED"


def test_no_import_cycles() -> None:
    mods = modules()
    known = set(mods)
    missing = sorted((a, b) for a, b in CYCLE_EDGES_ALLOWED if a not in mods or b not in imports_of(a, mods[a], known))
    assert not missing, f"these imports are gone: remove {missing} from CYCLE_EDGES_ALLOWED"
    found = cycles(import_graph(cut=CYCLE_EDGES_ALLOWED))
    assert not found, f"import cycles among wdspq's modules (lazy imports included): {found}"


def test_the_cycle_finder_finds_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle closed by a function-level relative import is found."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .storage import s3\n"
                   "def f():\n    from .errors import StorageError\n    from .. import cursor\n")
    known = {"wdspq.errors", "wdspq.cursor", "wdspq.storage.s3"}
    assert imports_of("wdspq.m", src, known) == {"wdspq.errors"}
    assert imports_of("wdspq.sub.m", src, known) == {"wdspq.cursor"}
    # importing a submodule from outside its package runs the package's __init__ first
    known = {"wdspq", "wdspq.export", "wdspq.export.stats", "wdspq.export.local", "wdspq.table_dataset"}
    assert with_packages("wdspq.table_dataset", {"wdspq.export.stats"}, known) == {"wdspq.export", "wdspq.export.stats"}
    assert with_packages("wdspq.export.local", {"wdspq.export.stats"}, known) == {"wdspq.export.stats"}


def test_the_episode_source_the_exporter_and_verify_do_not_import_torch() -> None:
    """The torch-free path: reading episodes, exporting and verifying never load torch (a fresh interpreter)."""
    code = ("import sys; import wdspq.table.episodes, wdspq.export, wdspq.export.exporter, wdspq.export.finish, wdspq.verify; "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "assert not loaded, loaded[:5]")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"importing them imports torch:\n{done.stderr[-2000:]}"


def test_the_exporter_and_verify_do_not_use_the_torch_dataset() -> None:
    """export/ and verify.py read episodes through table.episodes, never through table_dataset."""
    mods = modules()
    known = set(mods)
    users = sorted(name for name, path in mods.items()
                   if (name == "wdspq.verify" or name.startswith("wdspq.export."))
                   and "wdspq.table_dataset" in imports_of(name, path, known))
    assert not users, f"these import wdspq.table_dataset (use wdspq.table.episodes.EpisodeSource): {users}"
