"""Import graph of the project's own modules: circles, deferred imports, imports against the data flow.

    .venv/bin/python analyses/import_graph.py [workbench app] [--deferred] [--longest workbench/train]

Reads the source with ``ast`` (runs nothing). An edge A -> B is an ``import`` / ``from ... import`` in A of a
project module B; ``from pkg import name`` points at ``pkg.name`` where that is a module, else at ``pkg``.
An import is *top* when it runs as the module loads (module body, class bodies, top-level if/try; not under
``if TYPE_CHECKING:``) and *deferred* when it sits in a function body. Circles are the strongly connected
components of the graph of both kinds: a deferred import hides a circle from Python, not from the reader.
Parent packages are not implied edges (Python initialises them first, so they close no circle).

Prints the counts, every circle, the deferred imports of project modules (``--deferred`` lists them all), the
edges against the data flow (``FORBIDDEN``; the README's "Where things live"), and with ``--longest DIR`` the
longest functions there. A package's ``__main__`` is a program over the library, not a layer of it: it may wire
layers together (``python -m workbench.train`` runs ``workbench.launch``, which hands the trainer the
evaluations) and is held only to the rule that no program imports the command line (``CLI``).
Exit status 1 when there is a circle or a forbidden edge.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (importer prefix, imported prefix): the data flow config -> data -> train -> checkpoints
# -> evals/interventions/measurements -> store
# -> figures -> app, read backwards
FORBIDDEN = [
    ("workbench.train", "workbench.evals"),
    ("workbench.train", "workbench.interventions"),
    ("workbench.train", "workbench.measurements"),
    ("workbench.train", "workbench.demo"),
    ("workbench.train", "workbench.cli"),
    ("workbench.train", "workbench.commands"),
    ("workbench.train", "workbench.launch"),
    ("workbench.store", "workbench.train"),
    ("workbench.figures", "workbench.train"),
    ("app", "workbench.train"),
]
CLI = ("workbench.cli", "workbench.commands")  # the command line: what a __main__ program may not import


def against_flow(edges: dict[str, dict[str, tuple[int, bool]]]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) of every edge a ``FORBIDDEN`` rule names (for a ``__main__``, the CLI rules)."""
    return sorted(
        (a, b, line)
        for a, bs in edges.items()
        for b, (line, _) in bs.items()
        for src, dst in FORBIDDEN
        if _under(a, src) and _under(b, dst) and (not a.endswith(".__main__") or dst in CLI)
    )


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, name: str, is_package: bool):
    """(imported module or module.attr candidates, line, 'top' | 'deferred') for every import statement."""
    out = []

    def visit(node, deferred: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append(([a.name], child.lineno, deferred))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                out.append(([f"{base}.{a.name}" for a in child.names] + [base], child.lineno, deferred))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
            else:
                visit(child, deferred)

    visit(tree, False)
    return out


def build(dirs: list[str]):
    files = sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)
    mods = {module_name(p): p for p in files}
    edges: dict[str, dict[str, tuple[int, bool]]] = defaultdict(dict)  # a -> b -> (line, deferred)
    counts = {"top": 0, "deferred": 0, "deferred_project": 0}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for candidates, line, deferred in imports(tree, name, path.name == "__init__.py"):
            counts["deferred" if deferred else "top"] += 1
            targets = {c for c in candidates[:-1] if c in mods} or ({candidates[-1]} & mods.keys())
            if not targets and len(candidates) == 1:  # plain `import a.b.c`: the deepest project module
                parts = candidates[0].split(".")
                targets = {".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in mods}
                targets = set(sorted(targets, key=len)[-1:])
            if deferred and targets:
                counts["deferred_project"] += 1
            for t in targets:
                if t != name:
                    old = edges[name].get(t)
                    edges[name][t] = (line, deferred and (old is None or old[1]))
    return mods, edges, counts


def circles(mods, edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in mods:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, {})))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(edges.get(w, {}))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return sorted(out)


def longest_functions(directory: str, n: int = 5) -> list[tuple[int, str]]:
    rows = []
    for path in sorted((ROOT / directory).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", default=["workbench", "app"])
    ap.add_argument("--deferred", action="store_true", help="list every deferred import of a project module")
    ap.add_argument("--longest", metavar="DIR", help="also print the longest functions under DIR")
    args = ap.parse_args(argv)
    mods, edges, counts = build(args.dirs)
    n_edges = sum(len(v) for v in edges.values())
    print(
        f"{len(mods)} modules in {' '.join(args.dirs)}; {counts['top']} top-level and {counts['deferred']} deferred "
        f"import statements ({counts['deferred_project']} deferred of project modules); {n_edges} project edges"
    )
    found = circles(mods, edges)
    print(f"circles: {len(found)}")
    for comp in found:
        inner = [
            f"{a} -> {b} (line {edges[a][b][0]}{', deferred' if edges[a][b][1] else ''})"
            for a in comp
            for b in comp
            if b in edges.get(a, {})
        ]
        print("  " + " <-> ".join(comp) + "\n    " + "\n    ".join(inner))
    bad = against_flow(edges)
    print(f"against the data flow: {len(bad)}")
    for a, b, line in bad:
        print(f"  {a} -> {b} (line {line})")
    if args.deferred:
        print("deferred imports of project modules:")
        for a in sorted(edges):
            for b, (line, deferred) in sorted(edges[a].items()):
                if deferred:
                    print(f"  {mods[a].relative_to(ROOT)}:{line} {b}")
    if args.longest:
        print(f"longest functions in {args.longest}:")
        for length, where in longest_functions(args.longest):
            print(f"  {length:4d} lines  {where}")
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main())
