"""The house's layout holds: who imports whom (no cycle, commands only from the CLI, QAW one floor
below synthesis) and no file in src/ past its size limit (STYLE.md: one concept per file)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_LINES = 450  # STYLE.md's "under ~400 lines", with room for a docstring's growth


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in (SRC / "qarad").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """qarad modules `name` imports anywhere: function bodies and `if TYPE_CHECKING:` blocks too (a
    cycle through type hints is still two files that need each other)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                found.update(f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, pkg, modules) for name, (path, pkg) in modules.items()}


def test_only_cli_imports_the_commands_and_nothing_imports_cli():
    for name, imported in _graph().items():
        if name == "qarad.__main__":  # `python -m qarad`: the command's second entry point
            assert imported == {"qarad.cli"}, imported
            continue
        if name == "qarad.cli" or name.startswith("qarad.commands"):
            assert "qarad.cli" not in imported, name
            continue
        assert not {m for m in imported if m == "qarad.cli" or m.startswith("qarad.commands")}, name


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def walk(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])


def test_quality_sits_below_synthesis():
    """QAW scores samples; synthesis (its scorer of synth folders, the model folder) builds on it,
    never the reverse."""
    for name, imported in _graph().items():
        if name.startswith("qarad.quality"):
            assert not {m for m in imported if m.startswith("qarad.synthesis")}, name



def test_no_file_in_src_is_too_long():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "qarad").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
