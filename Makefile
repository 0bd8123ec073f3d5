# The README's two commands, `make demo` and `make test`, each do their own
# set-up on a fresh machine and are safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-node node-bins demo demo-cluster venv compile cluster-bins lint unit cluster fuzz bench bench-webhook bench-sidecar bench-grpc bench-discovery bench-instructions soak golden clean lock wheel smoke smoke-wheel smoke-image image

# The venv holds exactly the pinned, hash-checked requirements/dev.txt (the
# runtime pins of requirements/runtime.txt, the test tools, and the build
# dependencies make compile uses); `make lock` updates the pins.
$(STAMP): pyproject.toml requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.txt
	# The editable install puts the project root on sys.path (pyproject.toml's
	# package-dir says why); make compile builds the data plane in place.
	SHARDMESH_PURE_PYTHON=1 $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

venv: $(STAMP)

# The sidecar's data plane compiled with mypyc, next to its sources (setup.py
# says why). Rebuilt whenever a sidecar source changes; tests/conftest.py
# refuses to run on a stale build.
COMPILED_STAMP := sidecar/.compiled
$(COMPILED_STAMP): $(STAMP) setup.py $(wildcard sidecar/*.py)
	$(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v -e '^warning' -e 'BetaConfiguration' -e 'cannot be found' || true
	@$(BIN)/python -c 'import sidecar; assert sidecar.compiled(), "mypyc build failed"'
	@touch $@

compile: $(COMPILED_STAMP)

# Builds (once, then cached by version) kube-apiserver, kube-controller-manager,
# kubectl and etcd for the cluster tests. Without Go it says what to install.
cluster-bins:
	@bash tests/cluster/build.sh

# The node tier's host side (tests/cluster/build-node.sh): kubelet, kube-scheduler,
# CNI plugins, crictl and pause built once per version and cached; containerd,
# runc and iptables apt-installed when missing.
node-bins:
	@bash tests/cluster/build-node.sh

# Real pods on a real node (tests/node): the image built and run by containerd + kubelet.
test-node: venv compile cluster-bins node-bins
	$(BIN)/pytest -m node tests/node

test: venv compile cluster-bins node-bins
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest
	@$(MAKE) --no-print-directory smoke

# The installed product, not the source tree (tests/smoke): the wheel built in
# isolation and installed in a fresh venv with the pinned runtime dependencies
# only, then the image under the manifests' securityContext.
smoke: smoke-wheel smoke-image

smoke-wheel: venv
	@bash tests/smoke/wheel.sh

smoke-image: venv
	@bash tests/image/smoke.sh

# The image (tests/image/build.sh): IMAGE=... to tag it, BASE=... for the base;
# without python:3.11-slim locally, a Debian bookworm base is made here.
image:
	@bash tests/image/build.sh

# sdist and wheel in dist/, built as users build them (isolated, pinned build deps).
wheel: venv
	PIP_CONSTRAINT=requirements/build.txt $(BIN)/python -m build --outdir dist .

# Re-resolve requirements/*.txt from pyproject.toml (UPGRADE=1: newest releases).
lock: venv
	$(BIN)/python -m pip install -q 'uv>=0.5'
	UV=$(abspath $(BIN))/uv bash requirements/lock.sh

unit: venv compile
	$(BIN)/pytest -m "not cluster"

cluster: venv compile cluster-bins
	$(BIN)/pytest -m cluster

# The fuzz tests (tests/sidecar/test_fuzz.py) with a long budget: FUZZ_EXAMPLES per
# test (make test runs them with 40). Failures print the smallest input found.
FUZZ_EXAMPLES ?= 2000
# Then, if atheris is installed, coverage-guided runs of the parsers (tests/sidecar/fuzz_atheris.py).
ATHERIS_RUNS ?= 1000000
fuzz: venv compile
	SHARDMESH_FUZZ=1 FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -m fuzz --hypothesis-show-statistics -q
	@if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		$(BIN)/python -m tests.sidecar.fuzz_atheris -runs=$(ATHERIS_RUNS) -max_len=2048; \
	else echo "make fuzz: atheris is not installed ($(BIN)/pip install atheris): skipped"; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: venv compile
	$(BIN)/shardmesh demo

demo-cluster: venv compile cluster-bins
	$(BIN)/python -m tests.e2e.demo_cluster

golden: venv
	REFRESH_GOLDEN=1 $(BIN)/pytest tests/webhook -k golden

bench: bench-webhook bench-sidecar

bench-webhook: venv
	$(BIN)/python bench/webhook.py

bench-sidecar: venv compile
	@bash bench/ensure-peers.sh
	$(BIN)/python bench/sidecar.py

# Unary gRPC at 1 and 50 streams on one connection (h2load from nghttp2-client;
# the Go backends need Go 1.24+).
bench-grpc: venv compile
	@bash bench/ensure-peers.sh h2load nginx haproxy
	$(BIN)/python bench/grpc.py

# Discovery for SUBSCRIBERS (default 1,000) light sidecars on the test control plane,
# directory mode vs direct mode (bench/discovery.py): API-server watches, CPU, RSS and
# requests during a rollout, scale-event propagation, relists after an API-server
# restart. About 4 minutes, and heavy: it runs under nice.
bench-discovery: venv compile cluster-bins
	nice $(BIN)/python bench/discovery.py --subscribers $(or $(SUBSCRIBERS),1000)

# Not a benchmark: user-space instructions per proxied request (callgrind), a number
# the machine's noise does not move, for judging a change to the request path.
bench-instructions: venv compile
	@bash bench/ensure-peers.sh wrk nginx valgrind
	$(BIN)/python bench/sidecar_instructions.py

# Mixed traffic with faults through a sidecar process for DURATION seconds (default 600):
# RSS and fds over time, misroutes and lost requests (both must be 0).
soak: venv compile
	$(BIN)/python bench/soak.py --duration $(or $(DURATION),600)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist $(COMPILED_STAMP)
	rm -f sidecar/*.so *__mypyc*.so
