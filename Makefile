# pyrunner — see README.md. `make run` starts the stack, `make test` tests it.
GO      ?= go
BINS    := bin/pyrunner-api bin/pyrunner-worker bin/pyrunner-keeper bin/pyrunner-demodata bin/pyrunner
export CGO_ENABLED := 1

.PHONY: all build deps run stop test test-go test-python test-compose lint bench clean

all: build

build:
	$(GO) build -o bin/pyrunner-api ./api
	$(GO) build -o bin/pyrunner-worker ./worker
	CGO_ENABLED=0 $(GO) build -o bin/pyrunner-keeper ./cmd/pyrunner-keeper
	$(GO) build -o bin/pyrunner-demodata ./cmd/pyrunner-demodata
	$(GO) build -o bin/pyrunner ./cmd/pyrunner

deps:
	@tools/deps.sh

run: deps build
	@tools/stack.sh start

stop:
	@tools/stack.sh stop

test: deps build test-python test-go

test-go:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 40m ./...

test-python:
	cd python && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests
	cd clients/python && PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_unit.py

# golangci-lint (.golangci.yml) and flake8 (setup.cfg), pinned and
# installed by the script.
lint:
	@tools/lint.sh

# The real compose.yaml with 4 workers on a real Docker engine (installs
# Docker and debootstrap, starts an engine if none runs; see the script).
test-compose:
	@tools/compose-test.sh

bench: deps build
	@tools/deps.sh bench
	$(GO) run ./bench

clean:
	-@tools/stack.sh stop >/dev/null 2>&1
	rm -rf bin .run
