#!/usr/bin/env bash
# The test command of the README: installs what is missing, then lints,
# type-checks and runs the whole test suite against the real peers
# (docker-registry, oras CLI, skopeo, umoci, bspatch) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh --with-cosign  # the trust tests verify with the real cosign
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
echo "== ruff" >&2
ruff check doras_oras tests scripts
echo "== mypy --strict doras_oras" >&2
mypy --strict doras_oras
echo "== pytest" >&2
exec python -m pytest "$@"
