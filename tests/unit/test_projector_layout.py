"""The projector's shape, kept: its seams (subscription, processor, recovery) never import each other or the
runner, everything they share sits a floor below them, and every module stays small enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECTOR = Path(__file__).resolve().parents[2] / "projector"
SEAMS = {"subscription", "processor", "recovery"}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PROJECTOR / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("seam", sorted(SEAMS))
def test_a_seam_imports_no_other_seam_nor_the_runner(seam: str) -> None:
    forbidden = {f"projector.{other}" for other in SEAMS - {seam}} | {"projector.runner"}
    assert not _imports(seam) & forbidden


@pytest.mark.parametrize("path", sorted(PROJECTOR.glob("*.py")), ids=lambda p: p.name)
def test_every_module_reads_in_one_sitting(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 250


def test_only_the_adapters_know_their_client_libraries() -> None:
    for path in PROJECTOR.glob("*.py"):
        text = path.read_text()
        if "import pymongo" in text or "from pymongo" in text or "from bson" in text:
            # The MongoDB adapter, in three modules: the connection, the accounts, the transactions.
            assert path.name in {"mongo_connection.py", "mongo_read_model.py", "mongo_transactions.py"}, path.name
        if path.stem in SEAMS - {"subscription"} | {"runner"}:
            assert "redis.exceptions" not in text and "import redis" not in text, path.name
