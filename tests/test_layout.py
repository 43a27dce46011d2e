"""The shape of the house, checked: what each top-level folder may import, what each image copies, the contract
defined once, no import cycles and short functions."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import contract

ROOT = Path(__file__).resolve().parents[1]
#: Project code, by importable top-level name: the folder each name lives in.
PACKAGES = {
    "contract": ROOT / "contract",
    "ml": ROOT / "ml",
    "mlops": ROOT / "plugins" / "mlops",
    "standins": ROOT / "standins",
    "dags": ROOT / "dags",
    "scripts": ROOT / "scripts",
    "benchmarks": ROOT / "benchmarks",
    "tests": ROOT / "tests",
}
PROJECT = [name for name in PACKAGES if name != "tests"]
#: What the ML-stage and inference-API images run may not import: the stand-ins and their packages, Airflow,
#: and the Airflow side of the project.
FORBIDDEN_IN_ML = {"standins", "httpx", "helm_python", "airflow", "mlops", "dags", "scripts", "tests"}
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long on purpose:"


def sources(*names: str) -> Iterator[Path]:
    for name in names:
        yield from sorted(PACKAGES[name].rglob("*.py"))


def module_name(path: Path) -> str:
    for name, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if name == "dags":
                parts = parts[1:]  # DAG files are loaded by path, not as a package
            return ".".join(p for p in parts if p != "__init__")
    raise ValueError(path)


def imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, in any import statement (deferred ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", list(sources("ml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_ml_imports_nothing_the_images_do_not_carry(path: Path) -> None:
    bad = {name for name in imports(path) if name.split(".")[0] in FORBIDDEN_IN_ML}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", list(sources("mlops", "dags")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_airflow_side_imports_neither_the_stages_nor_the_stand_ins(path: Path) -> None:
    """DAGs and plugins reach ``ml/`` through pods and the stand-ins through the local runtime's PATH only."""
    bad = {name for name in imports(path) if name.split(".")[0] in {"ml", "standins"}}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_contract_is_standard_library_only() -> None:
    outside = (
        {name.split(".")[0] for path in sources("contract") for name in imports(path)}
        - set(sys.stdlib_module_names)
        - {"__future__"}
    )
    assert not outside


@pytest.mark.parametrize("image", ["ml-stage", "inference-api"])
def test_production_images_copy_the_contract_and_no_stand_in(image: str) -> None:
    text = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
    assert "COPY contract/" in text
    assert "standins" not in text


def test_every_image_whose_code_imports_the_contract_copies_it() -> None:
    for image in ("terraform-drift", "airflow"):
        assert "COPY contract/" in (ROOT / "docker" / f"{image}.Dockerfile").read_text(), image


def contract_values() -> dict[str, str]:
    """The contract's values that are names nobody writes by chance: variables, files, tags, paths (not words
    such as "fail", "results" or "Progressing", which Kubernetes' own Deployment conditions also use)."""
    values = {
        name: value
        for name, value in vars(contract).items()
        if name.isupper()
        and isinstance(value, str)
        and (re.fullmatch(r"[A-Z][A-Z0-9_]+", value) or any(mark in value for mark in "._/"))
    }
    assert "XCOM_DIR_ENV" in values and "RUN_KEY_TAG" in values and "LOCAL_PID_FILE" in values
    return values


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in sources("ml", "mlops", "standins", "dags", "scripts", "benchmarks", "tests")
        if p.name != "test_layout.py"
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_contract_values_are_written_only_in_the_contract(path: Path) -> None:
    """A string constant equal to a contract value means a second definition: import it instead."""
    repeated = copied_contract_values(path)
    assert not repeated, f"{path.relative_to(ROOT)} writes {sorted(repeated)}: import it from contract"


def copied_contract_values(path: Path) -> set[str]:
    values = {value: name for name, value in contract_values().items()}
    strings = {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}
    return {f"{values[s]} ({s!r})" for s in strings if isinstance(s, str) and s in values}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path that ends where it starts, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return [*visiting[visiting.index(name) :], name]
        if name in done:
            return None
        visiting.append(name)
        for target in sorted(graph[name]):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(name)
        return None

    return next((cycle for name in sorted(graph) if (cycle := visit(name))), None)


def test_no_import_cycles_among_project_modules() -> None:
    """Every import counts, deferred ones too: a circle is a design knot even when it does not crash."""
    modules = {module_name(p): p for p in sources(*PROJECT)}
    graph = {
        name: {
            target
            for imported in imports(path)
            for target in (imported, imported.rpartition(".")[0])
            if target in modules and target != name
        }
        for name, path in modules.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def long_functions(path: Path) -> Iterator[str]:
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            body = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if length > MAX_FUNCTION_LINES and LONG_REASON not in body:
                yield f"{path}:{node.lineno} {node.name} ({length} lines)"


def test_functions_are_short_or_say_why_not() -> None:
    found = [hit for path in sources(*PROJECT) for hit in long_functions(path)]
    assert not found, f"over {MAX_FUNCTION_LINES} lines without a '# {LONG_REASON} ...' comment: {found}"


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    """The rules catch what they are about: a long function, a cycle-making import, a copied value."""
    sample = tmp_path / "sample.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample.write_text(f"import standins.helm\n\ndef f():\n{body}\n\nNAME = {contract.XCOM_DIR_ENV!r}\n")
    assert list(long_functions(sample)) and "standins.helm" in imports(sample)
    assert copied_contract_values(sample) == {f"XCOM_DIR_ENV ({contract.XCOM_DIR_ENV!r})"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
