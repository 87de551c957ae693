# Quick start: `make demo` and `make test`. Each installs what it needs first (a virtual
# environment in .venv from requirements.txt), so a machine with only Python 3 is enough.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEMO_ROOT ?= data/demo
WORKERS ?= 2

.PHONY: install test demo data demo-pretrain bench clean-demo

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

data: install
	$(PY) tools/make_demo_data.py --root $(DEMO_ROOT)

demo-pretrain: data
	$(PY) main.py --config cfgs/demo/pretrain_demo.yaml --exp_name demo --num_workers $(WORKERS)

demo: demo-pretrain

bench: install
	$(PY) bench/bench_ops.py
	$(PY) bench/bench_pretrain.py

clean-demo:
	rm -rf experiments/pretrain_demo experiments/finetune_demo $(DEMO_ROOT)
