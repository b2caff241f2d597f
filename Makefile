# The two commands of the README's quick start. Each sets up .venv on a fresh machine first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PROFILE ?= quick

.PHONY: reproduce test setup setup-test browser bench clean

reproduce: setup          ## set up, then the quick profile into results/quick/, verdicts beside the committed run's (PROFILE=full: regenerate figures/ and paper/, about 2.5 hours)
	$(VENV)/bin/drpo-sim reproduce --$(PROFILE)

test: setup-test browser  ## set up (with the test tools), then lint (ruff, import layers) and run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --maxschedchunk 2

browser:                  ## Debian's chromium and chromedriver, for the explorer's browser tests
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }

setup: $(STAMP)           ## the package and what it runs with

setup-test: $(TEST_STAMP) ## and the test tools (pytest, hypothesis, the notebook kernel, selenium, ruff, import-linter)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "drpo_sim needs Python >= 3.11, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e .
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c 'import drpo_sim.cli, drpo_sim.paper.reproduce'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -c constraints.txt verl
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt $(VERL_LOSS_DEPS)
	$(PY) -c "$$COMPILE_ALL"
	touch $(TEST_STAMP)

# verl, for tests/integrations/test_verl.py: verl 0.9.1 declares transformers<5.11, which TRL 1.16
# (the test extra's, transformers>=5.19) excludes, so pip cannot resolve both into one environment.
# Its policy losses need neither: verl goes in without its dependency list, with what its loss path
# (verl.trainer.ppo.core_algos, verl.workers.utils.losses) imports; pinned in constraints.txt.
VERL_LOSS_DEPS := ray omegaconf codetiming orjson tensordict

# Byte-compiling. pip compiles every module it installs, in one thread: 74 of the 120 s that
# installing the package takes on two cores. So `setup` installs without compiling and compiles
# only what drpo_sim imports, by importing it (with bytecode writing on, whatever the shell says):
# 64 s in all. The tests start many processes that import more, so `setup-test` compiles the
# whole environment on every core, as pip would (files in newer syntax, such as torch's Python
# 3.12 test helpers, are skipped as pip skips them).
define COMPILE_ALL
import compileall, sysconfig
compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
endef
export COMPILE_ALL

bench: setup              ## throughput of the objectives, policy_loss, simulator, sweeps, replay, LM lab and arena against floors and peers
	$(PY) benchmarks/bench_objectives.py
	$(PY) benchmarks/bench_policy_loss.py
	$(PY) benchmarks/bench_sim.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_replay.py
	$(PY) benchmarks/bench_lm.py
	$(PY) benchmarks/bench_arena.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis results
