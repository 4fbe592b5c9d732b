"""The house rules a newcomer relies on: no import cycles, nothing imports the Hydra entry or the tuner, small
modules and functions, no name that collides with the standard library or with build output.

Limits: a module at most 400 lines, a function at most 60 (the epoch loop may stay one readable class). Imports are
read from the source with ast (lazy imports inside functions included), so a cycle is caught before it bites."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "trainbench"
ENTRY = "trainbench.cli"  # the Hydra task train.py calls: on top, imported by nothing in the package
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
# Folder names packaging tools and the common .gitignore templates treat as build output (a package named so is
# skipped by tools or silently left out of a commit).
BUILD_OUTPUT = {"dist", "build", "eggs", "sdist", "wheels", "site-packages", "__pypackages__", "htmlcov", "venv"}
# `python -m trainbench.inspect` is the user's command (SPEC and README name it): a shim that only calls
# trainbench.questions.main, imported by nothing. Every other module's name is free of the standard library's.
COMMAND_SHIMS = {"trainbench.inspect": "trainbench.questions"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ["trainbench", *p.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (any level: top or inside functions)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[: len(base) - (node.level - 1)]
                mod = ".".join(root + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from .x import name`: the module x (a name is not a module)
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("trainbench"):
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) - {"trainbench"} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The check can fail: a made-up graph with a loop is reported."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_imports_the_hydra_entry_module():
    importers = sorted(m for m, deps in import_graph().items() if ENTRY in deps)
    assert importers == [], f"{ENTRY} is imported by {importers}"


def test_plan_does_not_import_hydra():
    """make_plan is callable from any tool, with any config: no Hydra import in plan.py."""
    tree = ast.parse((PKG / "plan.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "hydra"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_and_function_sizes(name):
    path = _modules()[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines > {MAX_MODULE_LINES}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            assert n <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {n} lines > {MAX_FUNCTION_LINES}"


def _names() -> list[tuple[str, str]]:
    """(module, each of its path parts below trainbench) for every module and package."""
    return [(m, part) for m in _modules() for part in m.split(".")[1:]]


def test_no_module_or_package_is_named_like_the_standard_library_or_build_output():
    bad = sorted(
        {
            f"{m} ({part})"
            for m, part in _names()
            if m not in COMMAND_SHIMS and (part in sys.stdlib_module_names or part in BUILD_OUTPUT)
        }
    )
    assert bad == [], f"modules named like the standard library or build output: {bad}"


def test_the_name_rule_can_fail():
    """The check sees what it must: `dist`, `inspect`, `logging` would each be refused."""
    assert {"dist", "build"} <= BUILD_OUTPUT and {"inspect", "logging", "types"} <= set(sys.stdlib_module_names)


@pytest.mark.parametrize("shim, target", sorted(COMMAND_SHIMS.items()))
def test_command_shims_hold_no_code_and_are_imported_by_nothing(shim, target):
    path = _modules()[shim]
    tree = ast.parse(path.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert len(path.read_text().splitlines()) <= 10 and len(calls) == 1, f"{path.name} must only call {target}.main"
    assert _imports(shim, path, set(_modules())) == {target}
    importers = sorted(m for m, deps in import_graph().items() if shim in deps)
    assert importers == [], f"{shim} is imported by {importers}"


def test_nothing_below_the_hydra_task_imports_the_tuner():
    """The tuner writes presets (trainbench.presets); the plan applies them: no run path depends on tune/."""
    importers = sorted(
        m
        for m, deps in import_graph().items()
        if not m.startswith("trainbench.tune") and any(d.startswith("trainbench.tune") for d in deps)
    )
    assert importers == [], f"{importers} import trainbench.tune"


def test_the_formatter_owns_the_layout():
    """At most 10 formatter exemptions in the package, each with its reason in a comment on the line above; no line
    over the 120-character limit (ruff format cannot split long strings, so this is checked here)."""
    exemptions, long_lines = [], []
    for path in sorted(PKG.rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "# fmt: skip" in line or line.strip() == "# fmt: off":
                reason = lines[i - 1].strip() if i else ""
                exemptions.append((path.name, i + 1, reason.startswith("#") and len(reason) > 20))
            if len(line) > 120:
                long_lines.append(f"{path.name}:{i + 1}")
    assert len(exemptions) <= 10, exemptions
    assert all(ok for *_, ok in exemptions), f"exemptions without a reason: {exemptions}"
    assert long_lines == []


@pytest.mark.parametrize("group", ["device", "optimizer", "norm", "data", "loader", "model", "launcher"])
def test_readmes_config_table_lists_exactly_the_choices_in_conf(group):
    """A group's choices have one source, conf/<group>/; the README's table is checked against it."""
    from trainbench.config import group_choices

    readme = (PKG.parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{group}=` |"))
    listed = {c.strip(" `") for c in row.split("|")[2].split(",")}
    assert listed == set(group_choices(group)), (group, listed)
