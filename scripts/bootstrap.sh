#!/usr/bin/env bash
# Install everything doras-oras needs for its demo, tests and benchmarks on a
# fresh Debian machine (run as root). Idempotent: a second run is quick.
#   - Debian packages: docker-registry (CNCF distribution), skopeo, umoci,
#     bsdiff/bspatch, openssl, apache2-utils (htpasswd), iproute2
#   - the oras CLI v1.3.6 into .tools/bin (git-ignored)
#   - with --with-cosign (the tests: scripts/test.sh): cosign v2.6.5 into .tools/bin too
#     (building it takes minutes; the demo does not use it, not even with --sign)
#   - a virtualenv in .venv (git-ignored) with doras-oras and its test extras
# What apt-get, go and pip print goes to .tools/bootstrap.log; it is shown when a step fails.
set -euo pipefail
with_cosign=0
for arg in "$@"; do
  case $arg in
    --with-cosign) with_cosign=1 ;;
    *) printf 'bootstrap: unknown argument %s (usage: bootstrap.sh [--with-cosign])\n' "$arg" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'bootstrap: %s\n' "$*" >&2; }

mkdir -p .tools/bin
logfile="$root/.tools/bootstrap.log"
printf '== bootstrap %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$logfile"  # the last run only
# quiet CMD...: run CMD with its output in the log; on failure show the log's end and stop
quiet() {
  printf '$ %s\n' "$*" >>"$logfile"
  if ! "$@" >>"$logfile" 2>&1; then
    log "failed: $* (the end of $logfile follows)"
    tail -n 40 "$logfile" >&2
    exit 1
  fi
}

need_apt=()
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci bspatch:bsdiff \
            openssl:openssl htpasswd:apache2-utils tc:iproute2; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -qq
  quiet apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x .tools/bin/oras ] || ! .tools/bin/oras version 2>/dev/null | grep 'Version: *1.3.6' >/dev/null; then
  log "go install oras.land/oras/cmd/oras@v1.3.6"
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod quiet go install oras.land/oras/cmd/oras@v1.3.6
fi
# cosign (signing and the reference verifier of the trust tests, docs/trust.md): only when asked
ready=".venv/bin/python, .tools/bin/oras"
if [ "$with_cosign" = 1 ]; then
  ready="$ready, .tools/bin/cosign"
  if [ ! -x .tools/bin/cosign ] || ! .tools/bin/cosign version 2>/dev/null | grep 'GitVersion: *v2.6.5$' >/dev/null; then
    log "go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 (takes minutes)"
    GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod quiet go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5
  fi
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "creating .venv and installing doras-oras[test]"
  [ -x .venv/bin/python ] || quiet python3 -m venv .venv
  quiet .venv/bin/pip install -q --upgrade pip
  quiet .venv/bin/pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
log "ready: $ready"
