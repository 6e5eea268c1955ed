# Set-up and everyday commands. Every target creates what it needs: on a fresh
# machine `make demo` and `make test` are the only two commands a user runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_REPO ?= .cache/demo_models
CACHE_DIR ?= .cache

PERF_ANALYZER_DIR ?= $(CACHE_DIR)/perf_analyzer
PROMETHEUS_DIR ?= $(CACHE_DIR)/prometheus

.PHONY: help venv install install-test protos demo demo-models test test-fast lint clean perf-analyzer bench prometheus fuzz \
	image-tools image-base image image-test kubectl gcc azurite

help:
	@echo "make demo      create .venv, install, build demo models, serve REST :8000 and gRPC :8001"
	@echo "make test      create .venv with test extras and run the whole suite (unit, e2e, system)"
	@echo "make test-fast the unit layer alone (tests/unit: in process, seconds)"
	@echo "make install   install the gateway into .venv"
	@echo "make protos    regenerate gateway/proto/*_pb2.py from protos/*.proto"
	@echo "make lint      ruff (style) and mypy (types) over the code"
	@echo "make bench     gateway vs benchmark_app on the bench models (BENCH_ARGS=--repetitions 3 ...)"
	@echo "make fuzz      a long Hypothesis + schemathesis run (FUZZ_EXAMPLES, SCHEMATHESIS_EXAMPLES)"
	@echo "make perf-analyzer  install Triton's perf_analyzer into $(PERF_ANALYZER_DIR)"
	@echo "make image     build the CPU image with podman on a debootstrap base; make image-test runs it"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

# The stamps make re-runs cheap; they change when pyproject.toml does.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Generated code: never edit gateway/proto/*_pb2.py by hand. The generated
# modules import each other as top-level modules; rewrite that to a relative
# import so they work inside the gateway.proto package.
protos: $(VENV)/.installed-test
	$(PY) -m grpc_tools.protoc -I protos --python_out=gateway/proto --pyi_out=gateway/proto \
		protos/ovgw_model_config.proto protos/ovgw_grpc_service.proto
	sed -i 's/^import ovgw_model_config_pb2 as/from . import ovgw_model_config_pb2 as/' \
		gateway/proto/ovgw_grpc_service_pb2.py
	sed -i 's/^import ovgw_model_config_pb2 as/from . import ovgw_model_config_pb2 as/' \
		gateway/proto/ovgw_grpc_service_pb2.pyi

demo-models: $(VENV)/.installed
	$(PY) -m gateway.demo_models $(DEMO_REPO)

demo: demo-models
	$(PY) -m gateway --config_path $(DEMO_REPO)/config.json --port 8001 --rest_port 8000

# Triton's perf_analyzer (see loadgen/install_perf_analyzer.sh for why it needs a private runtime).
perf-analyzer: $(VENV)/.installed-test
	loadgen/install_perf_analyzer.sh $(PERF_ANALYZER_DIR) $(PY)

# Debian's prometheus package (server and promtool), unpacked into the cache: no service, no system change.
prometheus:
	@if [ ! -x $(PROMETHEUS_DIR)/usr/bin/prometheus ]; then \
		mkdir -p $(PROMETHEUS_DIR) && cd $(PROMETHEUS_DIR) && apt-get update -qq \
		&& apt-get download -o APT::Sandbox::User=root prometheus && dpkg-deb -x prometheus_*.deb . \
		&& rm -f prometheus_*.deb; fi
	$(PROMETHEUS_DIR)/usr/bin/prometheus --version

# The CPU image, built for real with podman (vfs storage, chroot isolation: what works without a container
# runtime) on a base image made here by debootstrap, since no registry is reachable. The site's CA bundle goes
# into the base, as a company base image would carry it, so that pip in the build reaches PyPI. The built
# image's filesystem is exported to $(IMAGE_DIR)/exported, where tests/system/test_image.py runs it under chroot.
IMAGE_DIR ?= $(CACHE_DIR)/image
PODMAN := podman --storage-driver=vfs
DEBIAN_MIRROR ?= http://deb.debian.org/debian

image-tools:
	@command -v podman >/dev/null && command -v debootstrap >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq podman debootstrap >/dev/null)

image-base: image-tools
	@if [ ! -f $(IMAGE_DIR)/rootfs/usr/bin/python3 ]; then \
		rm -rf $(IMAGE_DIR)/rootfs.tmp && mkdir -p $(IMAGE_DIR) && \
		debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
			$(IMAGE_DIR)/rootfs.tmp $(DEBIAN_MIRROR) > $(IMAGE_DIR)/debootstrap.log && \
		mv $(IMAGE_DIR)/rootfs.tmp $(IMAGE_DIR)/rootfs; fi
	cp /etc/ssl/certs/ca-certificates.crt $(IMAGE_DIR)/rootfs/etc/ssl/certs/ca-certificates.crt
	printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > $(IMAGE_DIR)/rootfs/etc/pip.conf
	tar -C $(IMAGE_DIR)/rootfs -c . | $(PODMAN) import - localhost/ovgw-base:bookworm

# vfs storage copies the whole filesystem for every layer it commits: building without the intermediate
# layers takes a third of the time here. Keep them for fast rebuilds with IMAGE_BUILD_FLAGS=--layers=true
# (docker, and podman on overlay storage, keep them cheaply; the Dockerfiles order them for that).
IMAGE_BUILD_FLAGS ?= --layers=false

image: image-base
	$(PODMAN) build $(IMAGE_BUILD_FLAGS) --format docker --isolation=chroot --pull=never \
		--build-arg BASE_IMAGE=localhost/ovgw-base:bookworm \
		-f deploy/docker/Dockerfile.cpu -t localhost/ovgw:cpu .
	rm -rf $(IMAGE_DIR)/exported && mkdir -p $(IMAGE_DIR)/exported
	$(PODMAN) rm -f ovgw-export >/dev/null 2>&1 || true
	$(PODMAN) create --name ovgw-export localhost/ovgw:cpu >/dev/null
	$(PODMAN) export ovgw-export | tar -x -C $(IMAGE_DIR)/exported
	$(PODMAN) rm -f ovgw-export >/dev/null
	$(PODMAN) image inspect localhost/ovgw:cpu > $(IMAGE_DIR)/inspect.json

image-test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests/system/test_image.py

# Debian's kubectl (kustomize built in), for tests/system/test_deploy.py.
kubectl:
	@command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null)
	kubectl version --client

# Azurite, Azure Blob Storage's local server, for the object-storage tests: the last release for Node 20.
AZURITE_DIR ?= $(CACHE_DIR)/azurite
azurite:
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)
	@[ -x $(AZURITE_DIR)/node_modules/.bin/azurite-blob ] || \
		npm install --silent --no-audit --no-fund --prefix $(AZURITE_DIR) azurite@3.35.0
	$(AZURITE_DIR)/node_modules/.bin/azurite-blob --version

# gcc and the C headers: the pipeline tests build a custom node library (loadgen/custom_nodes/resize_node.c).
gcc:
	@command -v gcc >/dev/null || (apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null)
	gcc --version | head -1

# perf_analyzer's install may fail on a machine without the registries; its tests then skip and say why.
# The protocol test classes, run a second time with worker processes (gateway/testing.py's
# OVGW_TEST_WORKERS), and the memory bound, which covers every process; the whole e2e layer passes
# that way too, except the connection bounds (per process), but takes 5 minutes.
WORKER_E2E = tests/e2e/test_tritonclient_grpc.py tests/e2e/test_tritonclient_http.py \
	tests/e2e/test_error_table.py tests/e2e/test_triton_extensions.py tests/e2e/test_kserve_sdk.py \
	tests/e2e/test_shared_memory.py tests/e2e/test_scheduling.py tests/e2e/test_request_memory.py

test: $(VENV)/.installed-test
	@mkdir -p $(CACHE_DIR)
	-@$(MAKE) --no-print-directory perf-analyzer > $(CACHE_DIR)/perf_analyzer_install.log 2>&1 \
		|| echo "perf_analyzer could not be installed; see $(CACHE_DIR)/perf_analyzer_install.log"
	-@$(MAKE) --no-print-directory prometheus > $(CACHE_DIR)/prometheus_install.log 2>&1 \
		|| echo "prometheus could not be installed; see $(CACHE_DIR)/prometheus_install.log"
	-@$(MAKE) --no-print-directory kubectl > $(CACHE_DIR)/kubectl_install.log 2>&1 \
		|| echo "kubectl could not be installed; see $(CACHE_DIR)/kubectl_install.log"
	-@$(MAKE) --no-print-directory gcc > $(CACHE_DIR)/gcc_install.log 2>&1 \
		|| echo "gcc could not be installed; see $(CACHE_DIR)/gcc_install.log"
	-@$(MAKE) --no-print-directory azurite > $(CACHE_DIR)/azurite_install.log 2>&1 \
		|| echo "Azurite could not be installed; see $(CACHE_DIR)/azurite_install.log"
	PERF_ANALYZER=$(abspath $(PERF_ANALYZER_DIR))/perf_analyzer \
	PROMETHEUS=$(abspath $(PROMETHEUS_DIR))/usr/bin/prometheus $(PY) -m pytest -q --durations=25 tests
	@echo "the protocol tests again, every gateway serving from 3 processes (the owner and 2 workers):"
	OVGW_TEST_WORKERS=3 PERF_ANALYZER=$(abspath $(PERF_ANALYZER_DIR))/perf_analyzer \
		$(PY) -m pytest -q $(WORKER_E2E)

# The inner loop: in-process tests of one module with fake neighbours; no servers, sockets or tools.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q tests/unit

# Benchmarks (not tests): results in bench-results/ (git-ignored); the last step regenerates
# docs/performance.md from the newest run of each (docs/benchmarking.md).
bench: $(VENV)/.installed-test
	$(PY) -m loadgen.bench.throughput $(BENCH_ARGS)
	$(PY) -m loadgen.bench.ceiling $(CEILING_BENCH_ARGS)
	$(PY) -m loadgen.bench.cpu_split $(CPU_SPLIT_ARGS)
	$(PY) -m loadgen.bench.scheduling $(SCHED_BENCH_ARGS)
	$(PY) -m loadgen.bench.images $(IMAGE_BENCH_ARGS)
	$(PY) -m loadgen.bench.overload $(OVERLOAD_BENCH_ARGS)
	$(MAKE) --no-print-directory gcc
	$(PY) -m loadgen.bench.pipelines $(PIPELINE_BENCH_ARGS)
	$(PY) -m loadgen.bench.object_storage $(OBJECT_STORAGE_BENCH_ARGS)
	$(MAKE) --no-print-directory perf-analyzer
	PERF_ANALYZER=$(PERF_ANALYZER_DIR)/perf_analyzer $(PY) -m loadgen.bench.shared_memory $(SHM_BENCH_ARGS)
	PERF_ANALYZER=$(PERF_ANALYZER_DIR)/perf_analyzer $(PY) -m loadgen.bench.workers $(WORKERS_BENCH_ARGS)
	$(PY) -m loadgen.bench.scheduling --workers 2 $(SCHED_BENCH_ARGS)
	$(PY) -m loadgen.bench.report --latest bench-results

# Longer fuzzing than make test's fixed seeds: Hypothesis on both decoders, schemathesis on the REST API.
FUZZ_EXAMPLES ?= 20000
SCHEMATHESIS_EXAMPLES ?= 300
fuzz: $(VENV)/.installed-test
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SCHEMATHESIS_EXAMPLES=$(SCHEMATHESIS_EXAMPLES) \
		$(PY) -m pytest -q tests/system/test_fuzz.py tests/system/test_openapi.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check gateway tests loadgen
	$(VENV)/bin/ruff format --check gateway tests loadgen
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(CACHE_DIR) .pytest_cache build *.egg-info
