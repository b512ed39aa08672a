"""The import structure: no circle among the project's modules, no forbidden direction between
layers (read from the source, function-level imports included), and every module importable on
its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "lightning_rlhf")

#: (importer prefix, imported prefixes it must never reach)
FORBIDDEN = [
    ("kernels", ("lightning_rlhf",)),
    ("lightning_rlhf.losses", ("lightning_rlhf.algorithms", "lightning_rlhf.data",
                               "lightning_rlhf.rl", "lightning_rlhf.offline")),
    ("lightning_rlhf.data", ("lightning_rlhf.algorithms", "lightning_rlhf.offline")),
    ("lightning_rlhf.models", ("lightning_rlhf.algorithms", "lightning_rlhf.offline")),
    ("lightning_rlhf.offline", ("lightning_rlhf.algorithms",)),
    ("lightning_rlhf.algorithms", ("lightning_rlhf.demo", "lightning_rlhf.cli")),
]  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (the deepest known module of each name)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_import_circle():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_forbidden_import_direction():
    bad = [
        f"{src} imports {dst}"
        for src, targets in _graph().items()
        for dst in targets
        for importer, banned in FORBIDDEN
        if _is_under(src, importer) and any(_is_under(dst, b) for b in banned)
    ]
    assert bad == []


def test_the_checks_catch_a_circle_and_a_forbidden_direction():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = _graph()
    assert "lightning_rlhf.models" in graph["lightning_rlhf.algorithms.base"]
    assert "lightning_rlhf.demo" not in graph["lightning_rlhf.algorithms.base"]
    # function-level imports are seen: ``python -m lightning_rlhf`` imports the demo inside main()
    assert "lightning_rlhf.demo" in graph["lightning_rlhf.__main__"]
    assert "lightning_rlhf.demo" not in graph["lightning_rlhf.cli"]


def test_every_module_imports_alone():
    """Each module in a clean slate (the project's modules dropped from ``sys.modules`` before
    each), so none relies on another having been imported first."""
    names = sorted(n for n in _modules() if not n.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in "
        f"{PACKAGES!r}]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
