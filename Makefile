# Quick start: `make demo` and `make test`. Each installs what it needs first (a virtual
# environment in .venv from requirements.txt, at the tested versions of constraints.txt), so a
# machine with only Python 3 and access to PyPI is enough.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEMO_ROOT ?= data/demo
WORKERS ?= 2

.PHONY: install test demo data demo-pretrain demo-finetune demo-vis demo-seg bench clean-demo

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c constraints.txt
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

data: install
	$(PY) tools/make_demo_data.py --root $(DEMO_ROOT)

demo-pretrain: data
	$(PY) main.py --config cfgs/demo/pretrain_demo.yaml --exp_name demo --overwrite --num_workers $(WORKERS)

PRETRAINED := experiments/pretrain_demo/demo/ckpt-last.pth

demo-finetune: demo-pretrain
	$(PY) main.py --config cfgs/demo/finetune_demo.yaml --finetune_model --ckpts $(PRETRAINED) --exp_name demo --overwrite --num_workers $(WORKERS)
	$(PY) main.py --config cfgs/demo/finetune_demo.yaml --scratch_model --exp_name demo_scratch --overwrite --num_workers $(WORKERS)
	$(PY) main.py --config cfgs/demo/finetune_demo.yaml --test --vote --ckpts experiments/finetune_demo/demo/ckpt-best.pth --exp_name demo --num_workers $(WORKERS)
	$(PY) tools/svm.py --config cfgs/demo/pretrain_demo.yaml --ckpts $(PRETRAINED) --modelnet_root $(DEMO_ROOT)/ModelNet/modelnet40_normal_resampled --modelnet_npoints 1024 --C 0.01 --num_workers $(WORKERS)

demo-vis: demo-pretrain
	$(PY) main_vis.py --test --ckpts $(PRETRAINED) --config cfgs/demo/pretrain_demo.yaml --exp_name demo --num_samples 6 --num_workers $(WORKERS)
	$(PY) tools/tsne.py --config cfgs/demo/finetune_demo.yaml --ckpts $(PRETRAINED) --out experiments/pretrain_demo/demo/tsne.png
	$(PY) tools/plot_curves.py experiments/pretrain_demo/TFBoard/demo --out experiments/pretrain_demo/demo/curves.png

SEG_ROOT := $(DEMO_ROOT)/shapenetcore_partanno_segmentation_benchmark_v0_normal

demo-seg: demo-pretrain
	$(PY) segmentation/main.py --ckpts $(PRETRAINED) --root $(SEG_ROOT) --log_dir demo --overwrite \
	    --trans_dim 192 --depth 6 --num_heads 3 --npoint 256 --num_group 16 --group_size 32 \
	    --batch_size 8 --epoch 8 --warmup_epoch 0 --learning_rate 0.001 --num_workers $(WORKERS)
	$(PY) segmentation/main.py --test --log_dir demo --npoint 256 --root $(SEG_ROOT) --num_workers $(WORKERS)

demo: demo-pretrain demo-finetune demo-seg demo-vis

bench: install
	$(PY) bench/run.py

clean-demo:
	rm -rf experiments/pretrain_demo experiments/finetune_demo segmentation/log/part_seg/demo $(DEMO_ROOT)
