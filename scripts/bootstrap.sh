#!/usr/bin/env bash
# Install everything doras-oras needs for its demo, tests and benchmarks on a
# fresh Debian machine (run as root). Idempotent: a second run is quick.
#   - Debian packages: docker-registry (CNCF distribution), skopeo, umoci,
#     bsdiff/bspatch, openssl, apache2-utils (htpasswd), iproute2
#   - the oras CLI v1.3.6 and cosign v2.6.5 into .tools/bin (git-ignored)
#   - a virtualenv in .venv (git-ignored) with doras-oras and its test extras
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'bootstrap: %s\n' "$*" >&2; }

need_apt=()
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci bspatch:bsdiff \
            openssl:openssl htpasswd:apache2-utils tc:iproute2; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

mkdir -p .tools/bin
if [ ! -x .tools/bin/oras ] || ! .tools/bin/oras version 2>/dev/null | grep 'Version: *1.3.6' >/dev/null; then
  log "go install oras.land/oras/cmd/oras@v1.3.6"
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install oras.land/oras/cmd/oras@v1.3.6 >&2
fi
# cosign (signing and the reference verifier of the trust tests, docs/trust.md)
if [ ! -x .tools/bin/cosign ] || ! .tools/bin/cosign version 2>/dev/null | grep 'GitVersion: *v2.6.5$' >/dev/null; then
  log "go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 (takes minutes)"
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 >&2
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "creating .venv and installing doras-oras[test]"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e ".[test]" >&2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
log "ready: .venv/bin/python, .tools/bin/oras, .tools/bin/cosign"
