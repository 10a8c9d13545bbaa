# Two entry points for a fresh machine: `make demo` and `make test`.
# Both install what is missing (Debian data packages where apt exists, a .venv with the CPU
# torch first and the pinned rest), then run.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.proteus-installed
TORCH  ?= torch==2.13.0
PRESET ?= configs/offline/vision-fmnist-mnist.yaml
DEBIAN_DATA := dataset-fashion-mnist wordnet-base

.PHONY: demo test install data-packages clean

demo: install
	$(VENV)/bin/proteus run $(PRESET)

test: install
	$(PY) -m pytest -q

install: data-packages $(STAMP)

# The Debian packages carry Fashion-MNIST and WordNet; skipped where apt is missing or they exist.
data-packages:
	@if [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -e /usr/share/wordnet/data.noun ]; then \
	  true; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $(DEBIAN_DATA); \
	else \
	  echo "note: apt-get not found; install $(DEBIAN_DATA) yourself or point the configs at your copies"; \
	fi

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
