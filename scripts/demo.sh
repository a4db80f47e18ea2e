#!/usr/bin/env bash
# The main-job command of the README: on loopback, start a real registry and
# the Doras-compatible server, publish two versions, pull v1, delta-pull v2,
# print what was saved.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
exec python -m doras_oras.testing demo "$@"
