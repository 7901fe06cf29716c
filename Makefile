# Two entry points on a fresh machine (see README):
#   make demo   installs into .venv and runs the main job on a demo clip
#   make test   installs into .venv and runs the test-suite (what CI runs)
PY ?= python3
VENV ?= .venv
SHARED ?= ../shared

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test,app]'  # app: the web UI's tests need gradio
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fastsync run --video $(SHARED)/assets/demo3_video.mp4 --audio $(SHARED)/assets/demo1_audio.wav \
		--output out.mp4 --random-weights --model-size tiny --device cpu

test: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/pytest -q

.PHONY: install demo test
