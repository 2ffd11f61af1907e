"""The import rules of docs/ARCHITECTURE.md, checked on the source: contexts know no adapters and no SQL."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "modelmarket"
CONTEXTS = ("accounts", "registry", "metering", "billing", "audit", "routing", "privacy", "lab")
FORBIDDEN_IN_CONTEXTS = ("modelmarket.adapters", "sqlalchemy", "alembic", "psycopg", "sqlite3")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def package_imports(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(SRC)): imports_of(p) for p in sorted((SRC / package).rglob("*.py"))}


def offending(imports: dict[str, set[str]], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in imports.items()
        for name in names
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    )


@pytest.mark.parametrize("context", CONTEXTS)
def test_contexts_import_no_adapter_and_no_sql(context: str) -> None:
    assert offending(package_imports(context), FORBIDDEN_IN_CONTEXTS) == []


@pytest.mark.parametrize("context", CONTEXTS)
def test_contexts_import_no_edge(context: str) -> None:
    edges = ("modelmarket.gateway", "modelmarket.cli", "modelmarket.bootstrap", "modelmarket.demo")
    assert offending(package_imports(context), edges) == []


def test_metering_does_not_import_runtime() -> None:
    assert offending(package_imports("metering"), ("modelmarket.runtime",)) == []


def test_core_imports_no_context() -> None:
    inner = tuple(f"modelmarket.{p}" for p in (*CONTEXTS, "runtime", "gateway", "cli", "adapters", "bootstrap"))
    assert offending(package_imports("core"), inner) == []


def test_only_bootstrap_and_tests_construct_adapters() -> None:
    """Outside adapters/, only the composition roots (bootstrap, the gateway's compose) import adapters."""
    allowed = {"bootstrap.py", "gateway/compose.py", "gateway/errors.py"}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel.startswith("adapters/") or rel in allowed:
            continue
        found += [f"{rel} imports {n}" for n in imports_of(path) if n.startswith("modelmarket.adapters")]
    assert found == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule above would catch a context importing SQLAlchemy (guards against a checker that sees nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from sqlalchemy import select\nimport modelmarket.adapters.store\n")
    assert offending({"bad.py": imports_of(bad)}, FORBIDDEN_IN_CONTEXTS) == [
        "bad.py imports modelmarket.adapters.store",
        "bad.py imports sqlalchemy",
    ]
