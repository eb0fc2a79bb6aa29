# Container images (deploy/container/): the wheelhouse they install from, the builds and their
# tests. Included by the Makefile. Set up a host without Docker first with
# deploy/container/host-setup.sh (as root; CI does).

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' edge_embed/__init__.py)
IMAGE ?= edge-embed
# docker where a daemon answers, else podman.
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
WHEELHOUSE ?= wheelhouse
DOCKERFILE := deploy/container/Dockerfile
# podman: keep HEALTHCHECK (the OCI format drops it), use the host's network (the only one that
# reaches Debian's mirror on hosts like CI's), and never try a registry for the base image.
BUILD_FLAGS := $(if $(filter podman,$(ENGINE)),--format docker --network host --pull=never,--network host)
# The arm64 stand-in for debian:bookworm-slim that host-setup.sh imports: one local tag names
# one image, so it carries an arch suffix and reaches the Dockerfile as its BASE.
ARM64_BASE ?= docker.io/library/debian:bookworm-slim-arm64
# The runtime's requirements, read from pyproject.toml (one list), plus the wheel's build
# backend, which the build stage needs offline.
WHEELHOUSE_REQS = $(shell $(PYTHON) -c 'import shlex, tomllib; \
	print(shlex.join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))') \
	'setuptools>=77' wheel
# The -minilm image's bundle stage (amd64 only): the export stack, `.[export,model]` read from
# pyproject.toml, with torch's CPU build pinned first in the list as `make install` pins it (the
# CUDA build would pull several GB). A set of its own, so that the runtime stage's wheelhouse,
# copied into every build, stays small. pip, so that the venv's own upgrade finds one offline.
EXPORT_REQS = $(shell $(PYTHON) -c 'import shlex, tomllib; \
	extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; \
	print(shlex.join(extras["export"] + extras["model"]))') pip
# Debian bookworm's python3 is 3.11; its glibc 2.36 runs manylinux_2_28 wheels and older.
WHEEL_PLATFORMS_amd64 := --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
WHEEL_PLATFORMS_arm64 := --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64

.PHONY: wheelhouse image image-arm64 image-test test-arm64

wheelhouse: $(WHEELHOUSE)/amd64/.complete $(WHEELHOUSE)/arm64/.complete \
	$(WHEELHOUSE)/amd64-export/.complete

# Defined before the pattern rule below, which would otherwise match amd64-export too.
$(WHEELHOUSE)/amd64-export/.complete: pyproject.toml
	rm -rf $(@D) && mkdir -p $(@D)
	$(PYTHON) -m pip download -q -d $(@D) --only-binary=:all: $(WHEEL_PLATFORMS_amd64) \
		--python-version 3.11 --implementation cp $(EXPORT_REQS)
	touch $@

$(WHEELHOUSE)/%/.complete: pyproject.toml
	rm -rf $(@D) && mkdir -p $(@D)
	$(PYTHON) -m pip download -q -d $(@D) --only-binary=:all: $(WHEEL_PLATFORMS_$*) \
		--python-version 3.11 --implementation cp $(WHEELHOUSE_REQS)
	touch $@

image: $(WHEELHOUSE)/amd64/.complete $(WHEELHOUSE)/amd64-export/.complete
	$(ENGINE) build $(BUILD_FLAGS) -f $(DOCKERFILE) --build-arg VERSION=$(VERSION) \
		--target runtime -t $(IMAGE):$(VERSION) .
	$(ENGINE) build $(BUILD_FLAGS) -f $(DOCKERFILE) --build-arg VERSION=$(VERSION) \
		--target minilm -t $(IMAGE):$(VERSION)-minilm .
	$(PY) -m tests.container.sizes $(ENGINE) docker.io/library/debian:bookworm-slim \
		$(IMAGE):$(VERSION) $(IMAGE):$(VERSION)-minilm

# The runtime image for arm64 (bundles mounted), built under qemu user emulation.
image-arm64: $(WHEELHOUSE)/arm64/.complete
	$(ENGINE) build $(BUILD_FLAGS) -f $(DOCKERFILE) --build-arg VERSION=$(VERSION) \
		--platform linux/arm64 --build-arg BASE=$(ARM64_BASE) \
		--target runtime -t $(IMAGE):$(VERSION)-arm64 .
	$(PY) -m tests.container.sizes $(ENGINE) $(ARM64_BASE) $(IMAGE):$(VERSION)-arm64

CONTAINER_ENV = EDGE_EMBED_MODELS=$(abspath $(MODELS)) EDGE_EMBED_ENGINE=$(ENGINE) \
	EDGE_EMBED_IMAGE=$(IMAGE):$(VERSION)

image-test: image $(INT8)/bundle.json
	$(CONTAINER_ENV) $(BIN)/pytest -q -p no:cacheprovider -m container $(PYTEST_ARGS) tests/container

test-arm64: image-arm64 $(INT8)/bundle.json
	$(CONTAINER_ENV) $(BIN)/pytest -q -p no:cacheprovider -m arm64 $(PYTEST_ARGS) tests/container
