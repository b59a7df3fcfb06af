# volplugd — `make run` and `make test` do all setup on a fresh Debian + Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Run as root: the real Docker plugin folders and /run/volplugd. As a user: ./run/.
ifeq ($(shell id -u),0)
TRY_DIR  := /run/docker/plugins
TRY_SOCK := /run/volplugd/control.sock
RUN_ARGS ?= --config etc/volplugd/volplugd.toml
else
TRY_DIR  := $(CURDIR)/run/plugins
TRY_SOCK := $(CURDIR)/run/control.sock
RUN_ARGS ?= --config etc/volplugd/volplugd.toml --plugin-dir $(TRY_DIR) \
            --control-socket $(TRY_SOCK)
endif
PYTEST_ARGS ?= -n 2 --dist loadgroup

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
	@mkdir -p $(TRY_DIR)
	@echo "volplugd: watching $(TRY_DIR) (and the other configured folders); control socket $(TRY_SOCK)"
	@echo "  try it, in another shell:  $(BIN)/python -m tests.fakeplugin $(TRY_DIR)/demo.sock"
	@echo "                             $(BIN)/volplugctl --socket $(TRY_SOCK) ls"
	@echo "  metrics and status page:   http://127.0.0.1:9612/   (Ctrl-C stops volplugd)"
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
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache

# install: `make install [DESTDIR=stage] [PREFIX=/opt/volplugd] [UNITDIR=/lib/systemd/system]`
# install: (docs/install.md). DESTDIR is a staging root for packagers and tests: the tree
# install: inside it names PREFIX (scripts' #! lines, units), so it runs once moved to /.
PREFIX  ?= /opt/volplugd
UNITDIR ?= /etc/systemd/system
# install: links to the commands on PATH, and volplugctl's bash completion.
BINDIR  ?= /usr/local/bin
COMPDIR ?= /usr/share/bash-completion/completions
# install: fixed, as in the unit: ExecStart= passes --config $(CONFDIR)/volplugd.toml.
CONFDIR := /etc/volplugd
# install: the default config as last installed, to tell an edited config from an old default.
SHIPPED_CONF = $(DESTDIR)$(PREFIX)/share/volplugd/volplugd.toml
# install: podman.dropin's default; uninstall removes it if volplugd generated it.
PODMAN_DROPIN := /etc/containers/containers.conf.d/50-volplugd.conf
# install: only on the real root, as root, with systemd running as PID 1.
ON_HOST = [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]
SYSTEMD_UP = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]

install:
	@case "$(PREFIX)" in /*) ;; *) echo "install: PREFIX must be absolute: $(PREFIX)" >&2; exit 2;; esac
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	@# The venv links to its base interpreter; ProtectHome=yes hides one under /root or /home.
	@case "$$(realpath $(DESTDIR)$(PREFIX)/bin/python)" in /root/*|/home/*) echo "install: \
	WARNING: the venv's Python is under /root or /home, hidden from the service by its \
	sandbox (ProtectHome=yes); reinstall with PYTHON=/usr/bin/python3" >&2;; esac
	@# setuptools builds in the checkout's build/ by default: it would ship modules deleted
	@# since the last build, and two installs at once collide there. A fresh folder each time.
	build=$$(mktemp -d) && printf '[build]\nbuild_base = %s/build\n[egg_info]\negg_base = %s\n' \
	  "$$build" "$$build" >"$$build/setup.cfg" && \
	DIST_EXTRA_CONFIG="$$build/setup.cfg" $(DESTDIR)$(PREFIX)/bin/python -m pip install -q \
	  --disable-pip-version-check --no-compile .; status=$$?; rm -rf "$$build"; exit $$status
	@# pip and venv wrote $(DESTDIR)$(PREFIX) into #! lines, activate scripts and pyvenv.cfg.
	@if [ -n "$(DESTDIR)" ]; then \
	  for f in $$(grep -lIF "$(DESTDIR)$(PREFIX)" $(DESTDIR)$(PREFIX)/pyvenv.cfg \
	      $$(find $(DESTDIR)$(PREFIX)/bin -maxdepth 1 -type f)); do \
	    sed -i "s|$(DESTDIR)$(PREFIX)|$(PREFIX)|g" "$$f"; done; fi
	@# Byte-code records PREFIX paths too, so tracebacks find the sources after the move.
	$(DESTDIR)$(PREFIX)/bin/python -m compileall -q -f $(if $(DESTDIR),-s $(DESTDIR) -p /) \
	  $(DESTDIR)$(PREFIX)/lib
	install -d $(DESTDIR)$(UNITDIR)
	for u in volplugd.service volplugd.socket; do \
	  sed "s|/opt/volplugd/|$(PREFIX)/|g" systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	@# The drop-in that starts docker.service/podman-restart.service after the plugins; the
	@# operator copies it into place (docs/install.md, "Order at boot").
	install -d $(DESTDIR)$(PREFIX)/share/volplugd/systemd
	sed "s|/opt/volplugd/|$(PREFIX)/|g" systemd/volplugd-wait.conf \
	  > $(DESTDIR)$(PREFIX)/share/volplugd/systemd/volplugd-wait.conf
	chmod 0644 $(DESTDIR)$(PREFIX)/share/volplugd/systemd/volplugd-wait.conf
	install -D -m 0644 docs/install.md $(DESTDIR)$(PREFIX)/share/doc/volplugd/install.md
	install -d $(DESTDIR)$(BINDIR)
	ln -sfn $(PREFIX)/bin/volplugd $(DESTDIR)$(BINDIR)/volplugd
	ln -sfn $(PREFIX)/bin/volplugctl $(DESTDIR)$(BINDIR)/volplugctl
	install -D -m 0644 etc/bash_completion.d/volplugctl $(DESTDIR)$(COMPDIR)/volplugctl
	@# The config: install the default unless the current one was edited (then .dist beside it).
	@install -d -m 0755 $(DESTDIR)$(CONFDIR)
	@conf=$(DESTDIR)$(CONFDIR)/volplugd.toml; \
	if [ ! -e $$conf ] || cmp -s $$conf $(SHIPPED_CONF) || cmp -s $$conf etc/volplugd/volplugd.toml; then \
	  install -m 0644 etc/volplugd/volplugd.toml $$conf && rm -f $$conf.dist; \
	  echo "install: $$conf is the default config"; \
	else \
	  install -m 0644 etc/volplugd/volplugd.toml $$conf.dist; \
	  echo "install: kept your changed $$conf; the new default is $$conf.dist"; fi
	install -D -m 0644 etc/volplugd/volplugd.toml $(SHIPPED_CONF)
	@if $(ON_HOST); then \
	  getent group volplugd >/dev/null || groupadd --system volplugd; \
	else echo "install: not creating the volplugd group (DESTDIR set or not root)"; fi
	@if $(SYSTEMD_UP); then systemctl daemon-reload; \
	  echo "install: now run: systemctl enable --now volplugd.socket volplugd"; fi

uninstall:
	@case "$(PREFIX)" in /*) ;; *) echo "uninstall: PREFIX must be absolute: $(PREFIX)" >&2; exit 2;; esac
	-@if $(SYSTEMD_UP); then systemctl disable --now volplugd.socket volplugd.service; fi
	rm -f $(DESTDIR)$(UNITDIR)/volplugd.service $(DESTDIR)$(UNITDIR)/volplugd.socket
	@# The command links only if they still point into PREFIX.
	@for c in volplugd volplugctl; do \
	  [ "$$(readlink $(DESTDIR)$(BINDIR)/$$c)" = "$(PREFIX)/bin/$$c" ] && rm -f $(DESTDIR)$(BINDIR)/$$c; \
	done; true
	rm -f $(DESTDIR)$(COMPDIR)/volplugctl
	@conf=$(DESTDIR)$(CONFDIR)/volplugd.toml; \
	if [ -e $$conf ] && ! cmp -s $$conf $(SHIPPED_CONF) && ! cmp -s $$conf etc/volplugd/volplugd.toml; then \
	  echo "uninstall: kept your changed $$conf"; else rm -f $$conf; fi; \
	rm -f $$conf.dist; rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true
	@# Only our own Podman drop-in (it starts with volplugd's mark); the folder only if empty.
	@f=$(DESTDIR)$(PODMAN_DROPIN); \
	if [ -f $$f ] && head -n 1 $$f | grep -q '^# Generated by volplugd'; then rm -f $$f; fi; \
	rmdir $$(dirname $$f) 2>/dev/null || true
	@# Remove PREFIX only if it is the virtual environment that `make install` made.
	@if [ -f $(DESTDIR)$(PREFIX)/pyvenv.cfg ] && [ -f $(SHIPPED_CONF) ]; then \
	  rm -rf $(DESTDIR)$(PREFIX) && echo "uninstall: removed $(DESTDIR)$(PREFIX)"; \
	elif [ -e $(DESTDIR)$(PREFIX) ]; then \
	  echo "uninstall: left $(DESTDIR)$(PREFIX): not a volplugd install" >&2; fi
	@if $(ON_HOST) && getent group volplugd >/dev/null; then \
	  if [ -z "$$(getent group volplugd | cut -d: -f4)" ]; then groupdel volplugd; \
	  else echo "uninstall: kept the volplugd group: it still has members"; fi; fi
	-@if $(SYSTEMD_UP); then systemctl daemon-reload; fi
