"""The layout's rules (docs/ARCHITECTURE.md), checked on every import at any depth.

Rooms: util <- io <- face <- render <- pipeline; training uses util and io; training.eval uses
training, face, render, io and util; only cli imports cli. Inside a room, modules import each
other without a cycle (the room rule already keeps cycles from spanning rooms). The walk covers
module-level and function-level imports, relative imports (resolved against the importing
module's package) and the string targets of ``importlib.import_module`` (an f-string counts by
its constant prefix).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: source folder -> the dotted package it is installed as (setup.py's package_dir)
ROOTS = {"maskkit": "maskkit", "training": "maskkit.training", "masks": "maskkit.masks"}

ALL_ROOMS = ("root", "util", "io", "face", "render", "pipeline", "training", "eval", "cli")
ALLOWED = {
    "root": {"root"},
    "util": {"root", "util"},
    "io": {"root", "util", "io"},
    "face": {"root", "util", "io", "face"},
    "render": {"root", "util", "io", "face", "render"},
    "pipeline": {"root", "util", "io", "face", "render", "pipeline"},
    "training": {"root", "util", "io", "training"},
    "eval": {"root", "util", "io", "face", "render", "training", "eval"},
    "cli": set(ALL_ROOMS),
}
#: Import cycles that predate the cycle rule, to be broken; no other cycle may appear (the last
#: one, training.api <-> training.checkpoints, was broken by moving find_checkpoint to
#: checkpoints/read.py).
KNOWN_CYCLES: list[list[str]] = []
#: Lines above which a module's docstring must say why it is long ("Length:").
MAX_LINES = 550


def room(module: str) -> str | None:
    """The room of a dotted ``maskkit`` module name (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "maskkit":
        return None
    if len(parts) == 1:
        return "root"
    head = parts[1]
    if head == "training":
        return "eval" if len(parts) > 2 and parts[2] == "eval" else "training"
    if head in ("render", "masks"):
        return "render"
    if head in ("util", "io", "face", "pipeline", "cli"):
        return head
    return "root"  # e.g. maskkit.__version__ imported as a name


def iter_modules(base: Path):
    """(dotted module name, path) of every .py file under the source roots of ``base``."""
    for folder, pkg in ROOTS.items():
        for path in sorted((base / folder).rglob("*.py")):
            rel = path.relative_to(base / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([pkg, *parts]), path


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """Every (line, imported module) in ``path``, at any depth."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # `from maskkit import cli` names a module too
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if target == "maskkit"]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "import_module" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.append((node.lineno, arg.value))
                elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                    out.append((node.lineno, arg.values[0].value.rstrip(".")))
    return out


def violations(base: Path) -> list[str]:
    """Every import arrow under ``base`` that breaks the room rule, as 'file:line: a -> b'."""
    bad = []
    for module, path in iter_modules(base):
        src_room = room(module)
        for line, target in imports_of(module, path):
            dst = room(target)
            if dst is not None and dst not in ALLOWED[src_room]:
                bad.append(f"{path.relative_to(base)}:{line}: {module} ({src_room}) -> {target} ({dst})")
    return bad


def import_graph(base: Path) -> dict[str, set[str]]:
    """Module -> the modules of the tree under ``base`` it imports (at any depth; ``from pkg
    import name`` counts ``pkg.name`` when that is a module)."""
    paths = dict(iter_modules(base))
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, target in imports_of(module, path):
            if target in paths and target != module:
                graph[module].add(target)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base_pkg = package.split(".")
                    target = ".".join(base_pkg[: len(base_pkg) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                graph[module] |= {f"{target}.{a.name}" for a in node.names} & (paths.keys() - {module})
    return graph


def import_cycles(base: Path) -> list[list[str]]:
    """Every import cycle among the modules under ``base`` (each as a sorted list of its modules:
    the strongly connected components of the import graph with more than one module)."""
    graph = import_graph(base)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_every_import_follows_the_room_rule():
    assert violations(REPO) == []


def test_the_rule_checker_catches_bad_imports(tmp_path):
    """A fixture tree with deliberately bad imports: each kind must be reported."""
    (tmp_path / "maskkit" / "io").mkdir(parents=True)
    (tmp_path / "maskkit" / "face").mkdir(parents=True)
    (tmp_path / "training" / "eval").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    for p in ("maskkit/__init__.py", "maskkit/io/__init__.py", "maskkit/face/__init__.py",
              "training/__init__.py", "training/eval/__init__.py"):
        (tmp_path / p).write_text("")
    (tmp_path / "maskkit/io/bad.py").write_text(
        "import json\n"
        "def f():\n    from maskkit.pipeline.runner import run_chunks  # function-level, upstream room\n")
    (tmp_path / "maskkit/face/rel.py").write_text("from ..pipeline import synth  # relative\n")
    (tmp_path / "training/eval/dyn.py").write_text(
        "import importlib\nm = importlib.import_module('maskkit.cli')\n"
        "n = importlib.import_module(f'maskkit.pipeline.{x}')\n")
    (tmp_path / "training/ok.py").write_text("from maskkit.io.shards import read_samples\nimport numpy\n")
    (tmp_path / "training/up.py").write_text("from .eval import dyn  # training must not use training.eval\n")
    bad = violations(tmp_path)
    text = "\n".join(bad)
    assert "maskkit.io.bad (io) -> maskkit.pipeline.runner (pipeline)" in text
    assert "maskkit.face.rel (face) -> maskkit.pipeline (pipeline)" in text
    assert "maskkit.training.eval.dyn (eval) -> maskkit.cli (cli)" in text
    assert "maskkit.training.eval.dyn (eval) -> maskkit.pipeline (pipeline)" in text
    assert "maskkit.training.up (training) -> maskkit.training.eval (eval)" in text
    assert not any("training.ok" in b for b in bad)
    assert len(bad) == 5


def test_no_import_cycle_inside_a_room():
    assert [c for c in import_cycles(REPO) if c not in KNOWN_CYCLES] == []


def test_the_cycle_checker_catches_a_cycle(tmp_path):
    """A fixture room whose modules import each other round a loop (function-level, relative and
    ``from package import module`` imports) must be reported; a chain without a loop must not."""
    (tmp_path / "maskkit" / "face").mkdir(parents=True)
    for p in ("maskkit/__init__.py", "maskkit/face/__init__.py"):
        (tmp_path / p).write_text("")
    (tmp_path / "maskkit/face/a.py").write_text("from .b import f\n")
    (tmp_path / "maskkit/face/b.py").write_text("def f():\n    from maskkit.face import c  # function-level\n")
    (tmp_path / "maskkit/face/c.py").write_text("import maskkit.face.a\n")
    (tmp_path / "maskkit/face/d.py").write_text("from . import a\n")  # into the loop, not part of it
    assert import_cycles(tmp_path) == [["maskkit.face.a", "maskkit.face.b", "maskkit.face.c"]]
    (tmp_path / "maskkit/face/c.py").write_text("import numpy\n")
    assert import_cycles(tmp_path) == []


@pytest.mark.parametrize("target,expected", [("maskkit.training.eval.report", "eval"), ("maskkit.training.api", "training"),
                                             ("maskkit.masks.generate", "render"), ("maskkit", "root"),
                                             ("numpy", None), ("maskkit.cli.eval", "cli")])
def test_room_names(target, expected):
    assert room(target) == expected


def test_command_modules_hold_no_library_code():
    """cli/ modules define click commands, private helpers and COMMANDS only: no dataclasses or
    public library functions (those live in a room the library and tests can import)."""
    problems = []
    for path in sorted((REPO / "maskkit" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                problems.append(f"{path.name}: class {node.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorated = any("command" in ast.unparse(d) or "group" in ast.unparse(d) for d in node.decorator_list)
                if not decorated and not node.name.startswith("_"):
                    problems.append(f"{path.name}: def {node.name}")
    assert problems == []


def test_long_modules_say_why():
    """No module is over ~500 lines without a reason in its docstring (a 'Length:' paragraph)."""
    long = []
    for module, path in iter_modules(REPO):
        n = len(path.read_text(encoding="utf-8").splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if n > MAX_LINES and "Length:" not in doc:
            long.append(f"{module}: {n} lines")
    assert long == []
