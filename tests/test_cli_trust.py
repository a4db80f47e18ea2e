"""Exit code 5 for the whole TrustError branch, and cryptography loaded only when verification is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from doras_oras import errors, trust
from doras_oras.cli import EXIT_TRUST
from doras_oras.cli.exits import EXIT_ERROR, EXIT_USAGE, exit_code_for


def _subclasses(cls: type[errors.TrustError]) -> list[type[errors.TrustError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


@pytest.mark.parametrize("cls", _subclasses(errors.TrustError), ids=lambda c: c.__name__)
def test_every_trust_error_exits_5(cls: type[errors.TrustError]) -> None:
    assert exit_code_for(cls("refused")) == EXIT_TRUST == trust.EXIT_TRUST == 5


def test_the_other_codes_stay() -> None:
    assert exit_code_for(errors.InvalidArgumentError("x")) == EXIT_USAGE
    assert exit_code_for(errors.RegistryError("x", status=500)) == EXIT_ERROR
    assert len({c.reason for c in _subclasses(errors.TrustError)}) == len(_subclasses(errors.TrustError))


@pytest.mark.parametrize("module", ["doras_oras.cli.main", "doras_oras.pull", "doras_oras.full"])
def test_cryptography_is_not_loaded_without_verification(module: str) -> None:
    code = f"import sys, {module}; print(any(m.startswith('cryptography') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
