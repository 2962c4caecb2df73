# The front door: `make run` and `make test`. Everything installs itself into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/creditwallet/v1/*.proto)
# mypy cannot follow setuptools' package-dir mapping; it reads the import root through links
# (run from there, so that every file has one module name).
TYPECHECK := $(VENV)/typecheck/creditwallet

.PHONY: all venv proto proto-check api-docs lint browser test run bench faults wheel clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -rf $(VENV)/typecheck && mkdir -p $(TYPECHECK)
	ln -s $(abspath protos/creditwallet/__init__.py) $(abspath protos/creditwallet/py.typed) \
		$(abspath protos/creditwallet/core) $(abspath protos/creditwallet/v1) $(TYPECHECK)/
	ln -s $(abspath server) $(TYPECHECK)/server
	ln -s $(abspath webhook_gateway) $(TYPECHECK)/gateway
	ln -s $(abspath clients) $(TYPECHECK)/client
	ln -s $(abspath tests) $(VENV)/typecheck/tests
	ln -s $(abspath protos/apidoc.py) $(VENV)/typecheck/apidoc.py
	touch $(STAMP)

venv: $(STAMP)

# The generated package creditwallet.v1 is committed beside its sources (so a wheel or an
# editable install needs no code generator); `make proto` rewrites it, `make proto-check`
# (part of `make lint`) fails when the committed code is not what the protos generate.
PROTOC = $(PY) -m grpc_tools.protoc -I protos \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc
GENERATED = *_pb2.py *_pb2.pyi *_pb2_grpc.py *_pb2_grpc.pyi

proto: $(STAMP)
	cd protos/creditwallet/v1 && rm -f $(GENERATED)
	$(PROTOC) --python_out=protos --grpc_python_out=protos --mypy_out=protos \
		--mypy_grpc_out=protos $(PROTO_SRC)

proto-check: $(STAMP)
	rm -rf $(VENV)/protocheck && mkdir -p $(VENV)/protocheck
	$(PROTOC) --python_out=$(VENV)/protocheck --grpc_python_out=$(VENV)/protocheck \
		--mypy_out=$(VENV)/protocheck --mypy_grpc_out=$(VENV)/protocheck $(PROTO_SRC) > /dev/null
	cd protos/creditwallet/v1 && for f in $(GENERATED); do \
		cmp -s $$f $(abspath $(VENV))/protocheck/creditwallet/v1/$$f \
		|| { echo "$$f differs from what protoc generates: run make proto"; exit 1; }; done
	cd $(VENV)/protocheck/creditwallet/v1 && for f in $(GENERATED); do \
		test -f $(abspath protos/creditwallet/v1)/$$f \
		|| { echo "$$f is generated but not committed: run make proto"; exit 1; }; done

# docs/api.md is generated from the comments of the protos; the test suite fails on drift.
api-docs: $(STAMP)
	$(PY) protos/apidoc.py

lint: proto-check
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	@echo "mypy (paths below are relative to the import root: creditwallet/server = server/)"
	cd $(VENV)/typecheck && $(abspath $(VENV))/bin/mypy --config-file $(abspath pyproject.toml) \
		-p creditwallet -p tests -m apidoc

# The console's tests drive Debian's chromium (Playwright, no browser download): installed
# here when missing, as pgbouncer is for `make faults` (the tests' fixture does the same).
browser:
	@test -x /usr/bin/chromium || { \
		echo "installing chromium (Debian package) for the console's browser tests"; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: lint browser
	$(VENV)/bin/pytest

run: $(STAMP)
	$(PY) -m creditwallet.server.devrun

bench: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m creditwallet.server.bench.run $(BENCH_ARGS)

# The PgBouncer scenario needs Debian's pgbouncer: installed here when missing (not by `make test`).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
faults: $(STAMP)
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
		echo "installing pgbouncer (Debian package) for the PgBouncer scenario"; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq pgbouncer; }
	$(VENV)/bin/pytest tests/faults -o addopts="-ra -q -p no:cacheprovider" --faults-full

wheel: $(STAMP)
	rm -rf dist && $(PY) -m build --wheel --outdir dist .

clean:
	rm -rf $(VENV) .data dist build
