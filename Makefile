# echo-cam: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install lint format test test-fast browser docs demo demo-local bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The viewer's tests drive a real headless Chromium: Debian's, with its matching chromedriver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# The docs site (mkdocs-material) from docs/ into site/. --strict makes mkdocs' warnings errors:
# a broken link or anchor, or a page docs/hooks.py cannot generate, fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The whole suite, in a random order (pytest-randomly; the seed is printed at the start and the
# end, to replay an order: pytest -p randomly --randomly-seed=SEED).
test: lint browser docs
	$(BIN)/python -m pytest -ra -p randomly

# The fast loop: tests/unit (no Redis, S3, worker, browser nor training) without the slow tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "not slow" -q -p randomly

# The distributed path (Redis + SeaweedFS + a worker + the producer, all started and stopped here)
# on samples/ and synthetic calls, with a demo species model trained once (about 2 minutes on 2
# cores) and cached in .demo-cache/; ECHOCAM_WEIGHTS overrides the model.
demo: $(STAMP)
	@$(BIN)/python -m devtools.demo

# The same input and model in local mode (echocam run).
demo-local: $(STAMP)
	@$(BIN)/python -m devtools.demo --local

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out .demo .pytest_cache .ruff_cache site
