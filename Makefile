# Two commands do everything on a fresh machine: `make reproduce` and `make test`.
# Both create .venv (torch, torchvision and the notebook tools from requirements.txt) when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?=
SEEDS  ?= 1
OUT    ?=

.PHONY: install lab reproduce test benchmark gpu-check clean-runs

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# JupyterLab on notebooks/, from the venv (created on first use); KIT_PROFILE=smoke|binder|cpu picks the run size.
lab: install
	$(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# The reproduction: every numbered notebook headless (papermill), results in runs/<profile>/.
# Profile: $KIT_PROFILE, else cpu, also on a GPU machine (PROFILE=paper asks for the paper's
# settings, GPU hours; PROFILE=smoke for a quick check). SEEDS=3: mean ± std over three seeds.
reproduce: install
	$(PY) -m patchgd_kit reproduce $(if $(PROFILE),--profile $(PROFILE)) --seeds $(SEEDS) $(if $(OUT),--out $(OUT))

# All tests: the kit's pytest suite, then every notebook under nbval on the smoke profile.
test: install
	$(PY) -m pytest tests -q --durations=15
	KIT_PROFILE=smoke TQDM_DISABLE=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

benchmark: install
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_alternatives.py
	$(PY) benchmarks/bench_streaming.py
	$(PY) benchmarks/bench_adam.py
	$(PY) benchmarks/bench_gigapixel.py --sides 2048,8192,16384 --estimate-only

# The GPU check (under 8 minutes on one GPU): the memory planner against measured CUDA peaks, budgets
# enforced, one fp16 epoch per method, images/s and Table 3's latency, written to
# docs/gpu-checks/<date>-<device>.md and .json. Without CUDA: the same plan, tiny, on the CPU, written
# to runs/gpu-check-dry/ (OUT=folder to choose; DRY=1 forces it on a GPU machine).
gpu-check: install
	$(PY) -m patchgd_kit gpu-check $(if $(OUT),--out $(OUT)) $(if $(DRY),--dry)

clean-runs:
	rm -rf runs
