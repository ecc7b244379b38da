# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv when missing and installs everything into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# torch goes in first, alone, as the CPU build, so that nothing later resolves a
# bare `torch` to the multi-GB CUDA build. Point TORCH_PIP_ARGS at PyTorch's
# CPU wheel index on machines whose pip does not already offer the CPU wheel.
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/fedprofile demo

# The audit-report test renders the report in Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "the audit-report test needs Debian's chromium: sudo apt-get install chromium"; fi; }

# Two workers (CI has 2 cores); each test file runs whole on one of them.
test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
