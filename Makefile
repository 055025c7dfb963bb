# cellfarm: `make demo` runs the loop on embedded defaults, `make test` runs lint, types and tests.
# Both create the virtual environment when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SHARED ?= $(abspath ../shared/data)
export CELLFARM_SHARED_DATA ?= $(SHARED)

.PHONY: setup demo test lint typecheck pytest ui bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	# torch is installed first and pinned: its CPU build is the one found locally (no CUDA download).
	$(PY) -m pip install -q --no-compile -c constraints.txt "torch==2.13.0"
	# compat: the project's folder goes on sys.path (a .pth), so its packages are found as regular packages
	# before any namespace folder of the same name: Ray puts the driver's working directory on its workers'
	# sys.path, and a `models/` or `lake/` folder there shadowed ours under setuptools' default import finder.
	$(PY) -m pip install -q --no-compile -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	# pip byte-compiles ~24,000 files one after another (84 s here); compileall on every core: 50 s on 2. A few
	# files written for newer Pythons (torch's py312 tests) do not compile, under pip neither: not an error.
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/cellfarm demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# Two workers, a test file per worker at a time (its module fixtures stay shared): many tests wait on servers,
# Ray and subprocesses, so the second core works while the first waits. A third worker did not help on 2 cores
# (each test ran 1.5-2x slower; pytest 12:59 against 11:29 with two).
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# mypy (~50 s of one core on a fresh clone) runs beside pytest, whose workers leave a core idle while they wait
# on servers, Ray and subprocesses; a failure of either fails `make test`.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

ui: setup
	$(VENV)/bin/cellfarm ui --seed

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .cellfarm .pytest_cache .mypy_cache .ruff_cache
