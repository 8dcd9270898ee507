"""The house's layers, checked from the source: core/ imports neither side, launcher/ (login node)
and training/ (compute node) stand on core/ and never import each other, no import cycle, one
module names the SLURM commands, no file over 400 lines, and an import placed inside a function
only where it defers a heavy dependency, with a comment saying so."""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "launcher", "training")
# Third-party packages worth deferring: seconds to import, or absent on a login node.
HEAVY = {"tensorflow", "tf_keras", "keras", "horovod", "matplotlib", "s3fs", "fsspec", "sklearn", "PIL",
         "h5py", "numpy", "tensorboard"}
SLURM_COMMAND = re.compile(r"[\"'](squeue|sacct|scancel|scontrol|sbatch)[\"']")
SLURM_MODULE = "core.slurm"
MAX_LINES = 400


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(name: str) -> str | None:
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> tuple[tuple[str, bool, str], ...]:
    """(imported name, placed inside a function, source line) for every import of `module`."""
    path = modules()[module]
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if node is not fn}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules() else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            found.append((name, id(node) in inside, lines[node.lineno - 1]))
    return tuple(found)


def project_edges(module: str, function_level: bool | None = None) -> set[str]:
    return {target for name, inside, _ in imports(module)
            if name.split(".")[0] in PACKAGES and (target := _resolve(name)) and target != module
            and (function_level is None or inside == function_level)}


@cache
def heavy(module: str) -> bool:
    """Importing `module` loads a heavy third-party package (at module level, directly or not)."""
    direct = any(name.split(".")[0] in HEAVY for name, inside, _ in imports(module) if not inside)
    return direct or any(heavy(t) for t in project_edges(module, function_level=False))


def test_no_import_cycle_among_the_projects_modules():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in project_edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                cycles.append(sorted([v, *component]))

    for module in modules():
        if module not in index:
            visit(module)
    assert cycles == []


def test_core_imports_neither_side_and_the_sides_never_import_each_other():
    wrong = sorted(f"{m} -> {t}" for m in modules() for t in project_edges(m)
                   if (m.startswith("core") and not t.startswith("core"))
                   or (m.startswith("training") and t.startswith("launcher"))
                   or (m.startswith("launcher") and t.startswith("training")))
    assert wrong == []


def test_slurm_commands_are_named_in_one_module():
    naming = sorted(m for m, path in modules().items() if SLURM_COMMAND.search(path.read_text(encoding="utf-8")))
    assert naming == [SLURM_MODULE]


def test_no_file_over_400_lines():
    long = {m: n for m, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_imports_inside_functions_only_defer_a_heavy_dependency_and_say_so():
    wrong = []
    for module in modules():
        for name, inside, line in imports(module):
            target = _resolve(name) if name.split(".")[0] in PACKAGES else None
            if not inside or target is None or target == module:
                continue
            if not heavy(target):
                wrong.append(f"{module}: {line.strip()} (light: import it at the top)")
            elif "#" not in line:
                wrong.append(f"{module}: {line.strip()} (say which heavy dependency it defers)")
    assert sorted(set(wrong)) == []


def test_core_and_the_login_side_load_nothing_heavy_at_import():
    loaded = sorted(m for m in modules() if m.startswith(("core", "launcher")) and heavy(m))
    assert loaded == []
