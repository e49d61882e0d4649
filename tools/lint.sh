#!/usr/bin/env bash
# make lint: golangci-lint (.golangci.yml) over the Go code and flake8
# (setup.cfg) over the Python. Both are pinned and installed here like
# every other tool: golangci-lint built from its Go module into a cache
# folder, flake8 from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
GOLANGCI_VERSION=v2.15.0
GO=${GO:-go}
bin="${PYRUNNER_TOOLS_DIR:-$HOME/.cache/pyrunner-tools}/golangci-lint-$GOLANGCI_VERSION"
if [ ! -x "$bin/golangci-lint" ]; then
  echo "lint: building golangci-lint $GOLANGCI_VERSION (once per machine)"
  GOBIN="$bin" CGO_ENABLED=0 $GO install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_VERSION"
fi
if ! /usr/bin/python3 -m flake8 --version >/dev/null 2>&1; then
  echo "lint: installing flake8"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq flake8 >/dev/null
fi
"$bin/golangci-lint" run ./...
/usr/bin/python3 -m flake8 $(git ls-files '*.py')
/usr/bin/python3 tools/check-links.py
echo "lint: clean"
