# The front door: `make run` and `make test`. Everything installs itself into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/creditwallet/v1/*.proto)
PROTO_OUT := protos/creditwallet/v1/.generated

.PHONY: all venv proto lint test run bench faults clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -c "import os, sysconfig; open(os.path.join(sysconfig.get_paths()['purelib'], 'creditwallet_protos.pth'), 'w').write(os.path.abspath('protos') + '\n')"
	touch $(STAMP)

venv: $(STAMP)

# The one generated-code package, creditwallet.v1, written beside its sources.
$(PROTO_OUT): $(STAMP) $(PROTO_SRC)
	rm -f protos/creditwallet/v1/*_pb2*.py protos/creditwallet/v1/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -I protos \
		--python_out=protos --grpc_python_out=protos \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_out=protos --mypy_grpc_out=protos \
		$(PROTO_SRC)
	touch protos/creditwallet/__init__.py protos/creditwallet/v1/__init__.py $(PROTO_OUT)

proto: $(PROTO_OUT)

lint: proto
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

run: proto
	$(PY) -m server.devrun

bench: proto
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m tests.bench.run $(BENCH_ARGS)

faults: proto
	$(VENV)/bin/pytest tests/faults -o addopts="-ra -q -p no:cacheprovider" --faults-full

clean:
	rm -rf $(VENV) .data protos/creditwallet/v1/*_pb2*.py* $(PROTO_OUT)
