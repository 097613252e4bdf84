"""The package's import structure, read from the source with ``ast`` (function-local imports included):
no import cycles, no import up the layer order of docs/architecture.md, no stage module importing another
stage, and no function-local import of a mindrlhf module.

Each check prints what it found as ``module -> imported module (file:line)``.
"""
import ast
import os
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mindrlhf")

# Bottom to top; a module may import its own layer and the layers below. Keys are paths inside the
# package ("" is the package's own __init__); the longest matching key gives a module's layer.
LAYERS = {
    "": 0, "io": 0, "algos": 0,
    "config": 1, "runtime": 1, "plugins": 1,
    "data": 2, "tasks": 2, "rewards": 2, "kernels": 2,
    "nn": 3,
    "roles": 4, "generation": 4,
    "trainers": 5,
    "evaluation": 6, "report": 6, "scoring": 6,
    "pipeline": 7, "pipeline_config": 7, "cli": 7, "launch": 7, "msrun_entry": 7,
}
# Packages at the floor import nothing else of mindrlhf: io is plain file formats, algos plain math.
FLOOR = ("io", "algos")
# Modules of trainers/ that are not stages; every other module there is a stage (sft, reward, ppo, ...).
NOT_STAGES = {"__init__", "artifacts", "loop", "supervised", "checkpoint", "metrics", "step", "experience", "adamw", "rankings",
              "ppo_config", "grpo_config", "grpo_experience", "dpo_reference", "dpo_rounds"}


class Import(NamedTuple):
    source: str        # importing module, dotted
    target: str        # imported module, dotted (the module itself when a name is imported from it)
    path: str          # file of the importing module, relative to the folder that holds the package
    line: int
    local: bool        # inside a function or class body

    def __str__(self):
        return f"{self.source} -> {self.target} ({self.path}:{self.line})"


def find_modules(root: str) -> Dict[str, tuple]:
    """{dotted name: (file path, is package)} for every .py file under the package folder ``root``; paths are
    relative to the folder that holds the package."""
    package = os.path.basename(os.path.normpath(root))
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
        rel = os.path.relpath(folder, os.path.dirname(os.path.normpath(root)))
        prefix = rel.replace(os.sep, ".")
        for name in sorted(files):
            if name.endswith(".py"):
                is_pkg = name == "__init__.py"
                dotted = prefix if is_pkg else f"{prefix}.{name[:-3]}"
                modules[dotted] = (os.path.join(rel, name), is_pkg)
    assert package in modules, f"{root} has no __init__.py"
    return modules


def _resolve(name: str, modules: dict) -> Optional[str]:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.c`` where c is a class -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def read_imports(base: str, modules: dict) -> List[Import]:
    """Every import of one of ``modules`` (files under ``base``) by one of them, at module level or inside
    functions."""
    found = []
    for source, (path, is_pkg) in modules.items():
        with open(os.path.join(base, path), encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        here = source.split(".") if is_pkg else source.split(".")[:-1]   # the package relative imports start in

        def visit(node, local):
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    origin = child.module or ""
                    if child.level:
                        up = here[:len(here) - (child.level - 1)]
                        origin = ".".join(up + ([origin] if origin else []))
                    targets = [f"{origin}.{alias.name}" for alias in child.names]
                for name in targets:
                    target = _resolve(name, modules)
                    if target is not None:
                        found.append(Import(source, target, path, child.lineno, local))
                visit(child, inner)

        visit(tree, False)
    return sorted(set(found), key=lambda i: (i.source, i.line, i.target))


def _layer(module: str, layers: dict) -> Optional[int]:
    parts = module.split(".")[1:]
    if not parts:
        return layers.get("")
    for end in range(len(parts), 0, -1):
        key = "/".join(parts[:end])
        if key in layers:
            return layers[key]
    return None


def _path_back(start: str, graph: dict, component: set, edge: dict) -> List[Import]:
    """The imports of a shortest path from ``start`` back to itself inside ``component`` (breadth first)."""
    paths, frontier = {start: []}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w == start:
                    return paths[v] + [edge[(v, w)]]
                if w in component and w not in paths:
                    paths[w] = paths[v] + [edge[(v, w)]]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no path back to {start} in {sorted(component)}")


def _cycles(imports: List[Import]) -> List[List[Import]]:
    """One concrete cycle per strongly connected component (Tarjan), as the imports that close it."""
    graph, edge = defaultdict(list), {}
    for imp in imports:
        if (imp.source, imp.target) not in edge:
            graph[imp.source].append(imp.target)
            edge[(imp.source, imp.target)] = imp
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or (v, v) in edge:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_back(min(c), graph, c, edge) for c in components]


def check(root: str, layers: dict = LAYERS, floor=FLOOR, not_stages=NOT_STAGES) -> dict:
    """Problems of the package at ``root``, by kind: each a list of lines ``module -> module (file:line)``."""
    modules = find_modules(root)
    package = os.path.basename(os.path.normpath(root))
    imports = read_imports(os.path.dirname(os.path.normpath(root)), modules)
    problems = {"cycle": [], "upward": [], "stage": [], "local": [], "no layer": []}
    for cycle in _cycles(imports):
        problems["cycle"].append(" ; ".join(str(imp) for imp in cycle))
    for module in modules:
        if _layer(module, layers) is None:
            problems["no layer"].append(f"{module}: add it to the layer table")
    for imp in imports:
        if imp.source == imp.target:
            continue
        src, dst = _layer(imp.source, layers), _layer(imp.target, layers)
        src_top, dst_top = (imp.source.split(".") + [""])[1], (imp.target.split(".") + [""])[1]
        if src is not None and dst is not None and dst > src:
            problems["upward"].append(f"{imp}: layer {src} imports layer {dst}")
        elif src_top in floor and dst_top != src_top:
            problems["upward"].append(f"{imp}: {src_top} is the floor and imports nothing else of {package}")
        stage = f"{package}.trainers."
        if (imp.source.startswith(stage) and imp.target.startswith(stage)
                and not {imp.source[len(stage):], imp.target[len(stage):]} & set(not_stages)):
            problems["stage"].append(f"{imp}: a stage imports another stage")
        if imp.local:
            problems["local"].append(f"{imp}: function-local import; import it at the top of the module")
    return problems


def _report(kind: str, found: list) -> str:
    text = f"{len(found)} {kind} problem(s):\n" + "\n".join(f"  {line}" for line in found)
    print(text)
    return text


@pytest.fixture(scope="module")
def problems():
    return check(ROOT)


def test_every_module_has_a_layer(problems):
    assert not problems["no layer"], _report("layer table", problems["no layer"])


def test_no_import_cycles(problems):
    assert not problems["cycle"], _report("cycle", problems["cycle"])


def test_no_import_goes_up_the_layers(problems):
    assert not problems["upward"], _report("upward import", problems["upward"])


def test_no_stage_imports_another_stage(problems):
    assert not problems["stage"], _report("stage", problems["stage"])


def test_no_function_local_imports_of_mindrlhf(problems):
    assert not problems["local"], _report("function-local import", problems["local"])


def test_the_checker_finds_each_kind_of_problem(tmp_path):
    """A tiny package with one of each problem: the checks above can fail."""
    files = {
        "__init__.py": "",
        "io/__init__.py": "from .files import write\n",
        "io/files.py": "import json\n\ndef write():\n    from pkg.data import formats  # up and local\n",
        "data/__init__.py": "",
        "data/formats.py": "from pkg.data.batching import pad\n",
        "data/batching.py": "def pad():\n    from . import formats  # a cycle inside data\n",
        "trainers/__init__.py": "",
        "trainers/loop.py": "from ..io import write\n",
        "trainers/sft.py": "from .loop import *\n",
        "trainers/ppo.py": "from . import loop\nfrom .sft import x\n",
        "stray.py": "",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    found = check(str(tmp_path / "pkg"), layers={"": 0, "io": 0, "data": 2, "trainers": 5}, floor=("io",),
                  not_stages={"__init__", "loop"})
    for kind, lines in found.items():
        _report(kind, lines)
    assert found["no layer"] == ["pkg.stray: add it to the layer table"]
    assert [line.split(" (")[0] for line in found["upward"]] == ["pkg.io.files -> pkg.data.formats"]
    assert len(found["cycle"]) == 1
    cycle = found["cycle"][0]
    assert "pkg.data.batching -> pkg.data.formats" in cycle and "pkg.data.formats -> pkg.data.batching" in cycle
    assert [line.split(" (")[0] for line in found["stage"]] == ["pkg.trainers.ppo -> pkg.trainers.sft"]
    assert sorted(line.split(" (")[0] for line in found["local"]) == ["pkg.data.batching -> pkg.data.formats",
                                                                       "pkg.io.files -> pkg.data.formats"]
    assert "files.py:4)" in found["upward"][0]  # the line of the import is named
