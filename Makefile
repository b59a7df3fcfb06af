# volplugd — `make run` and `make test` do all setup on a fresh Debian + Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Run as root: the real Docker plugin folders and /run/volplugd. As a user: ./run/.
ifeq ($(shell id -u),0)
RUN_ARGS ?= --config etc/volplugd/volplugd.toml
else
RUN_ARGS ?= --config etc/volplugd/volplugd.toml --plugin-dir $(CURDIR)/run/plugins \
            --control-socket $(CURDIR)/run/control.sock
endif
PYTEST_ARGS ?= -n 2

.PHONY: run test lint bench system-deps clean install uninstall

$(BIN)/.runtime: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $@

$(BIN)/.dev: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@ $(BIN)/.runtime

run: $(BIN)/.runtime
	@mkdir -p run/plugins
	@echo "volplugd: try a plugin with: $(BIN)/python -m tests.fakeplugin <plugin-dir>/demo.sock"
	@echo "          then: $(BIN)/volplugctl --socket <control socket> ls"
	$(BIN)/volplugd $(RUN_ARGS)

system-deps:
	@./.ci/system-deps.sh

lint: $(BIN)/.dev
	$(BIN)/ruff check volplugd tests bench
	$(BIN)/mypy volplugd
	$(BIN)/lint-imports

test: system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/.dev
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
