"""The layers the folders show, held: the import contracts of pyproject.toml's
[tool.importlinter] (`lint-imports`), no import circles, the factory as the only constructor
of backends, and the lessons and the bench on the product's public names only.

`lint-imports` states the package rules (common imports neither program; the producer reaches
the consumer through producer/local.py only; pika inside common/rabbitmq/; typer and rich out
of common/ but for its CLI module; no circles among a package's modules). The checks below
are what an import graph cannot see: which calls build a backend, and which names are private.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("common", "consumer", "producer")
#: The shared tools' copy beside the clone (CI has a read-only one there).
IMPORT_CIRCLES = ROOT.parent / "shared" / "tools" / "import_circles.py"

#: What builds a backend, or a connection of its own: only the factory calls these, and the
#: backends' own packages (which build their links and brokers).
CONSTRUCTORS = {
    "RabbitBackend",
    "LocalBroker",
    "EventListener",
    "QueueCounter",
    "Link",
    "first_answering_link",
    "BlockingConnection",
    "SelectConnection",
}
#: Where those calls may be: the factory, the backends themselves, and the bench's own view
#: of the broker (bench/broker.py: its raw-pika publisher, the queue sampler and the gate it
#: measures every system with, the same for Celery, Dramatiq and this project) and the
#: raw-pika baselines it is compared with (bench/baselines.py).
MAY_CONSTRUCT = ("common/factory.py", "common/rabbitmq/", "common/local/", "bench/broker.py")
MAY_CONSTRUCT += ("bench/baselines.py",)


def _sources(*folders: str) -> Iterator[tuple[str, ast.Module]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "lint-imports is missing: pip install -e '.[test]'"
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not IMPORT_CIRCLES.exists(), reason=f"no {IMPORT_CIRCLES}")
def test_the_shared_tool_finds_no_import_circle() -> None:
    """../shared/tools/import_circles.py also counts `from package import module` as an
    import of the package's __init__, which the import graph above does not."""
    done = subprocess.run(
        [sys.executable, str(IMPORT_CIRCLES)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", done.stdout


def test_only_the_factory_builds_backends() -> None:
    """Nothing outside the factory and the backends constructs a backend, an event listener,
    a link or a pika connection: programs, lessons and bench call `common.factory`."""
    found = []
    for path, tree in _sources(*PRODUCT, "lessons", "bench"):
        if path.startswith(MAY_CONSTRUCT):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in CONSTRUCTORS:
                found.append(f"{path}:{node.lineno}: {name}(...)")
    assert found == [], "build it through common.factory:\n" + "\n".join(found)


def test_lessons_and_bench_use_public_names_of_the_product() -> None:
    """No `from producer.run import _x`, no `SomeClass._method` of a product import."""
    found = []
    for path, tree in _sources("lessons", "bench"):
        bound: set[str] = set()  # the names this file took from the product
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PRODUCT):
                for alias in node.names:
                    if _private(alias.name) or any(map(_private, node.module.split("."))):
                        found.append(
                            f"{path}:{node.lineno}: from {node.module} import {alias.name}"
                        )
                    bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PRODUCT):
                        if any(map(_private, alias.name.split("."))):
                            found.append(f"{path}:{node.lineno}: import {alias.name}")
                        bound.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in bound:
                    found.append(f"{path}:{node.lineno}: {base.id}...{node.attr}")
    assert found == [], "make the name public in the product, or do without:\n" + "\n".join(found)
