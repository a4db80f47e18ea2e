"""The shape of the test suite (docs/testing.md, "The test suite"): helpers live in support modules.

A test module never imports another test module (``from tests.test_x import ...``, ``from test_x
import ...``, ``from .test_x import ...``, at the top or inside a function): what two test files share
belongs in a helper module (``*_support.py``, ``conftest.py``). The imports are read from the source
(``ast``), so the rule holds for every import a test module could make.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> list[str]:
    """Every module name an ``import`` or ``from ... import`` of ``source`` names (last dotted part)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name.rsplit(".", 1)[-1] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module is not None:
                names.append(node.module.rsplit(".", 1)[-1])
            else:  # from . import test_x
                names += [alias.name for alias in node.names]
    return names


def test_the_rule_sees_every_spelling_of_a_test_module_import() -> None:
    source = (
        "from tests.test_a import x\nfrom test_b import y\nfrom .test_c import z\nfrom . import test_d\n"
        "import tests.test_e\ndef f():\n    from tests.test_f import w\n"
        "from tests.pull_support import unique\nimport pytest\n"
    )
    tests = [name for name in imported_modules(source) if name.startswith("test_")]
    assert tests == ["test_a", "test_b", "test_c", "test_d", "test_e", "test_f"]


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        path.name: sorted({name for name in imported_modules(path.read_text()) if name.startswith("test_")})
        for path in sorted(TESTS.glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}
