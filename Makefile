# napari-histo: `make demo` and `make test` are the only set-up steps.
# Both create .venv, install torch (CPU pin) first, then the package with its
# dev extras, and install Xvfb + Mesa with apt when missing and running as root.
# The dev extras install PyQt5 and PyQt6; QT=pyqt6 (`make test QT=pyqt6`, `make demo
# QT=pyqt6`) runs napari on PyQt6 (QT_API); PyQt5 stays the default binding.

SHELL := /bin/bash
PYTHON ?= python3
QT ?= pyqt5
ifeq ($(filter $(QT),pyqt5 pyqt6),)
  $(error QT must be pyqt5 or pyqt6, got "$(QT)")
endif
export QT_API := $(QT)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
XVFB_RUN := xvfb-run -a -s "-screen 0 1280x1024x24"
# napari under Xvfb needs Mesa's GL and the xcb/xkbcommon libraries Qt loads.
SYSTEM_PACKAGES := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
# Run napari under Xvfb when there is no display.
ifeq ($(strip $(DISPLAY)$(WAYLAND_DISPLAY)),)
  HEADLESS := $(XVFB_RUN)
else
  HEADLESS :=
endif

.PHONY: demo test bench lint install system-deps clean

demo: install
ifeq ($(strip $(HEADLESS)),)
	$(VENV)/bin/napari-histo demo
else
	$(HEADLESS) $(VENV)/bin/napari-histo demo --screenshot out/demo.png
	@echo "no display: ran the demo under Xvfb; screenshot in out/demo.png"
endif

test: install
	$(HEADLESS) $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/napari-histo bench read --json
	$(HEADLESS) $(VENV)/bin/napari-histo bench open --json

lint: install
	$(VENV)/bin/ruff check napari_histo tests

install: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[dev]"
	touch $@

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "note: cannot install$$missing (no apt-get); napari needs Xvfb and Mesa when headless"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "note: missing$$missing; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 0; fi; \
	echo "installing$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
