# sealroot — see README.md. Every target installs the Debian packages it needs (as root).
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo

.PHONY: all build release test unit lint demo bench deps clean

all: build

build:
	./scripts/deps.sh build
	$(CARGO) build

release:
	./scripts/deps.sh build
	$(CARGO) build --release

# The whole suite: format, lints, unit tests and swtpm/LUKS2 integration tests.
test:
	./scripts/deps.sh build test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

demo: release
	./scripts/deps.sh demo
	./scripts/demo-host.sh

bench: release
	./scripts/deps.sh bench
	./scripts/bench.sh

clean:
	$(CARGO) clean
