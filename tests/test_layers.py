"""The import-layer contract, checked over the real import graph of ``kit/``.

Every ``kit/**/*.py`` is parsed with :mod:`ast` (nothing is imported), and every import in it counts:
at module level, inside functions and methods, relative ones resolved, and
``importlib.import_module("kit...")`` with a literal name. The contract:

1. **Layers.** Each module belongs to one layer (``LAYERS``, lowest first) and imports only from
   its own layer or lower ones. So the engine, data, models and stages never import the widgets,
   the magics or the CLI; data never imports stages (nor models, the engine, ...).
2. **No cycles** between kit modules, counting module-level and function-level imports alike (a
   function-level import hides a cycle from Python, not from a reader), and none between the
   sub-packages and top-level modules seen as units (``kit.data`` <-> ``kit.models`` would be one).
   Imports under ``if TYPE_CHECKING:`` never run: they count for the layers but not for cycles,
   since breaking a typing-only cycle is what they are for.

A module the table does not place fails the test: a new module must say where it sits.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parent.parent / "kit"

# lowest first; a dotted name covers the module and everything under it (kit.data -> kit.data.*),
# the root package's name only kit/__init__.py
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "kit.errors",
            "kit.paths",
            "kit.config",
            "kit.config_rules",
            "kit.events",
            "kit.runtime",
            "kit.rundir",
            "kit.launch",
        ),
    ),  # kit.launch: distributed presets (checked by config_rules) and torchrun argv
    ("data", ("kit.data",)),
    ("models", ("kit.models",)),
    ("adapters", ("kit.adapters", "kit.optimizers")),
    ("stages", ("kit.stages", "kit.tracking")),  # kit.tracking: TrainingArguments' run name, tracker callbacks
    ("memory", ("kit.memory",)),  # the estimate reads the stages' token budget and GaLore targets
    ("engine", ("kit.engine", "kit.hooks", "kit.numerics")),  # the engine and its Trainer callbacks
    ("services", ("kit.infer", "kit.export", "kit.gguf", "kit.hub", "kit.evaluate", "kit.benchmarks", "kit.preview")),
    ("front ends", ("kit.boundary", "kit.cli", "kit.magics", "kit.widgets", "kit.i18n")),
    ("facade", ("kit",)),  # kit/__init__.py: the public names, on top of everything
]


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int
    in_function: bool
    type_only: bool

    def __str__(self) -> str:
        where = "in a function" if self.in_function else "at module level"
        return f"{self.file}:{self.line} ({where}) {self.src} -> {self.dst}"


# ------------------------------------------------------------------ the graph


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package directory ``root``."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = [package, *f.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_module(call: ast.Call) -> str | None:
    """The kit module named by ``importlib.import_module("kit.x")`` / ``(f"kit.x.{name}")``."""
    fn = call.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if name != "import_module" or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".")  # the literal prefix: f"kit.stages.{x}" -> kit.stages
    return None


def imports_of(name: str, path: Path, known: set[str], package: str) -> list[Edge]:
    """The kit modules ``name`` (in file ``path``) imports, wherever the import statement sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    rel = str(path.relative_to(path.parents[len(name.split(".")) - (0 if is_pkg else 1)]))
    edges: list[Edge] = []

    def add(dst: str, node: ast.AST, in_function: bool, type_only: bool) -> None:
        # the longest known module that dst names (kit.data.encode.IGNORE -> kit.data.encode)
        while dst and dst not in known:
            dst = dst.rpartition(".")[0]
        if dst and dst != name and not any(e.dst == dst and e.line == node.lineno for e in edges):
            edges.append(Edge(name, dst, rel, node.lineno, in_function, type_only))

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    add(alias.name, node, in_function, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == package or mod.startswith(package + "."):
                for alias in node.names:  # `from .pkg import sub` imports the submodule pkg.sub
                    sub = f"{mod}.{alias.name}"
                    add(sub if sub in known else mod, node, in_function, type_only)
        elif isinstance(node, ast.Call):
            target = _literal_module(node)
            if target and (target == package or target.startswith(package + ".")):
                add(target, node, in_function, type_only)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_only)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_only)

    visit(tree, False, False)
    return edges


def import_graph(root: Path, package: str) -> tuple[set[str], list[Edge]]:
    mods = module_names(root, package)
    known = set(mods)
    return known, [e for name, f in mods.items() for e in imports_of(name, f, known, package)]


# ------------------------------------------------------------------ the checks


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index of the layer with the longest prefix naming ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            covers = module == p or ("." in p and module.startswith(p + "."))  # the root: itself only
            if covers and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def layer_violations(known: set[str], edges: list[Edge], layers) -> list[str]:
    problems = [
        f"{m} is in no layer: add it to LAYERS in tests/test_layers.py"
        for m in sorted(known)
        if layer_of(m, layers) is None
    ]
    for e in edges:
        ls, ld = layer_of(e.src, layers), layer_of(e.dst, layers)
        if ls is not None and ld is not None and ld > ls:
            problems.append(f"{e}: the {layers[ls][0]} layer imports the {layers[ld][0]} layer above it")
    return problems


def unit_of(module: str, package: str) -> str:
    """kit.data.encode -> kit.data; kit.engine -> kit.engine: sub-packages count as one unit."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def cycles(nodes: set[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Each strongly connected component with more than one node, as one concrete cycle."""
    adj: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a != b:
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
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
                comps.append(comp)

    for v in sorted(adj):
        if v not in index:
            strong(v)
    out = []
    for comp in comps:  # a shortest path from the first node back to itself, inside the component
        members, start = set(comp), sorted(comp)[0]
        prev: dict[str, str] = {}
        frontier, seen = [start], {start}
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in adj[v]:
                    if w in members and (w not in seen or w == start) and start not in prev:
                        prev[w] = v
                        seen.add(w)
                        nxt.append(w)
            frontier = nxt
        path, v = [start], prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        out.append([start, *reversed(path[1:]), start])
    return out


def cycle_problems(known: set[str], edges: list[Edge], package: str) -> list[str]:
    run = [e for e in edges if not e.type_only]
    where = {(e.src, e.dst): e for e in run}
    problems = []
    for cyc in cycles(known, [(e.src, e.dst) for e in run]):
        hops = "; ".join(str(where[(a, b)]) for a, b in zip(cyc, cyc[1:]))
        problems.append(f"module cycle {' -> '.join(cyc)}: {hops}")
    units = {unit_of(m, package) for m in known}
    unit_edges = [
        (unit_of(e.src, package), unit_of(e.dst, package)) for e in run if e.src != package and e.dst != package
    ]  # the facade imports everything, by design
    by_unit: dict[tuple[str, str], Edge] = {}
    for e in run:
        by_unit.setdefault((unit_of(e.src, package), unit_of(e.dst, package)), e)
    for cyc in cycles(units, unit_edges):
        hops = "; ".join(str(by_unit[(a, b)]) for a, b in zip(cyc, cyc[1:]))
        problems.append(f"package cycle {' -> '.join(cyc)}: {hops}")
    return problems


def check(root: Path, package: str, layers) -> list[str]:
    known, edges = import_graph(root, package)
    return layer_violations(known, edges, layers) + cycle_problems(known, edges, package)


# ------------------------------------------------------------------ the real tree


def test_kit_keeps_its_layers_and_has_no_import_cycles():
    problems = check(KIT, "kit", LAYERS)
    assert not problems, "import contract broken:\n  " + "\n  ".join(problems)


def test_the_graph_sees_function_level_and_relative_imports():
    """Guard against a checker that passes because it sees nothing: known edges of the real tree."""
    known, edges = import_graph(KIT, "kit")
    pairs = {(e.src, e.dst) for e in edges}
    assert {"kit.engine", "kit.data.preview", "kit.rundir", "kit.cli", "kit.widgets.chat"} <= known
    assert ("kit.engine", "kit.config") in pairs  # from .config import RunConfig
    assert any(e.src == "kit.engine" and e.dst.startswith("kit.stages") and e.in_function for e in edges)
    assert ("kit.infer.hf", "kit.rundir") in pairs  # from ..rundir import ...
    assert ("kit.data.preview", "kit.data.encode") in pairs  # from .encode import ...


# ------------------------------------------------------------------ the checker fails on violations


def _fake(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    for rel, text in {"__init__.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


FAKE_LAYERS = [
    ("base", ("fake.config",)),
    ("data", ("fake.data",)),
    ("stages", ("fake.stages",)),
    ("engine", ("fake.engine",)),
    ("front ends", ("fake.widgets", "fake.cli")),
    ("facade", ("fake",)),
]


def test_checker_passes_a_clean_fake_package(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "X = 1\n",
            "data/__init__.py": "from .rows import read\n",
            "data/rows.py": "from ..config import X\n\ndef read():\n    return X\n",
            "stages/__init__.py": "from ..data import read\n",
            "engine.py": "def run():\n    from .stages import read\n    return read()\n",
            "cli.py": "from .engine import run\n",
            "widgets/__init__.py": "import fake.engine\n",
        },
    )
    assert check(root, "fake", FAKE_LAYERS) == []


def test_checker_reports_an_upward_import_inside_a_function(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "",
            "data/__init__.py": "",
            "data/preview.py": "def preview():\n    from ..stages import recipe\n    return recipe\n",
            "stages/__init__.py": "recipe = 1\n",
            "engine.py": "",
            "widgets/__init__.py": "",
            "cli.py": "",
        },
    )
    problems = check(root, "fake", FAKE_LAYERS)
    assert len(problems) == 1
    assert "data/preview.py:2 (in a function) fake.data.preview -> fake.stages" in problems[0]
    assert "the data layer imports the stages layer" in problems[0]


def test_checker_reports_the_engine_importing_a_front_end(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "",
            "engine.py": "import importlib\n\ndef show():\n    return importlib.import_module('fake.widgets.panel')\n",
            "widgets/__init__.py": "",
            "widgets/panel.py": "",
        },
    )
    problems = check(root, "fake", FAKE_LAYERS)
    assert any("fake.engine -> fake.widgets.panel" in p and "front ends" in p for p in problems), problems


def test_checker_reports_a_cycle_hidden_in_functions(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "",
            "stages/__init__.py": "",
            "stages/common.py": "def f():\n    from .rm import head\n    return head\n",
            "stages/rm.py": "from . import common\nhead = 1\n",
        },
    )
    problems = check(root, "fake", FAKE_LAYERS)
    assert len(problems) == 1 and problems[0].startswith("module cycle fake.stages.common -> fake.stages.rm"), problems
    assert "(in a function)" in problems[0] and "(at module level)" in problems[0]


def test_checker_reports_a_package_cycle_and_an_unplaced_module(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "",
            "data/__init__.py": "",
            "data/a.py": "from ..stages.b import y\nx = 1\n",
            "stages/__init__.py": "",
            "stages/b.py": "y = 2\n",
            "stages/c.py": "from ..data.a import x\n",
            "tracking.py": "",
        },
    )
    problems = check(root, "fake", FAKE_LAYERS)
    assert any(p.startswith("fake.tracking is in no layer") for p in problems), problems
    assert any(p.startswith("package cycle fake.data -> fake.stages -> fake.data") for p in problems), problems
    assert not any(p.startswith("module cycle") for p in problems)  # a.py -> b.py, c.py -> a.py: no module cycle


def test_type_checking_imports_count_for_layers_not_cycles(tmp_path):
    root = _fake(
        tmp_path,
        {
            "config.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import Run\n",
            "engine.py": "from .config import X\n",
        },
    )
    problems = check(root, "fake", FAKE_LAYERS)
    assert len(problems) == 1 and "the base layer imports the engine layer" in problems[0], problems


@pytest.mark.parametrize(
    "line,dst",
    [
        ("from . import engine", "fake.engine"),
        ("from .data import rows", "fake.data.rows"),
        ("from .data.rows import read", "fake.data.rows"),
        ("import fake.data", "fake.data"),
        ("from fake.data import read", "fake.data"),
    ],
)
def test_import_forms_resolve_to_modules(tmp_path, line, dst):
    root = _fake(
        tmp_path, {"cli.py": line + "\n", "engine.py": "", "data/__init__.py": "read = 1\n", "data/rows.py": ""}
    )
    known, edges = import_graph(root, "fake")
    assert [(e.src, e.dst) for e in edges] == [("fake.cli", dst)]
