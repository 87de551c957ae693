# Quick start: `make demo` and `make test`. Each installs what it needs first (a virtual
# environment in .venv from requirements.txt, at the tested versions of constraints.txt), so a
# machine with only Python 3 and access to PyPI is enough.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEMO_ROOT ?= data/demo
WORKERS ?= 2

.PHONY: install test fuzz demo data demo-pretrain demo-finetune demo-fewshot demo-vis demo-seg demo-report bench clean-demo

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c constraints.txt
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

# The long fuzzing run of every reader of user files (docs/FUZZING.md): FUZZ_MINUTES of Hypothesis
# rounds over every target (tests/fuzz/long_run.py); the findings and the example counts go to
# $(FUZZ_OUT) (summary.json, findings/<target>/...). FUZZ_ENGINE=atheris: coverage-guided libFuzzer
# instead (tests/fuzz/atheris_run.py; the [fuzz] extra). `make test` runs a short, fixed pass.
FUZZ_MINUTES ?= 30
FUZZ_ENGINE ?= hypothesis
FUZZ_OUT ?= experiments/fuzz-$(FUZZ_ENGINE)
fuzz: install
ifeq ($(FUZZ_ENGINE),atheris)
	$(PY) -m pip install --quiet atheris -c constraints.txt
	OMP_NUM_THREADS=1 $(PY) tests/fuzz/atheris_run.py --minutes $(FUZZ_MINUTES) --out $(FUZZ_OUT)
else
	OMP_NUM_THREADS=1 $(PY) tests/fuzz/long_run.py --minutes $(FUZZ_MINUTES) --out $(FUZZ_OUT)
endif

# ---------------------------------------------------------------------------------------- demo
# `make demo` runs every job on the embedded procedural data and ends with one page,
# experiments/demo/REPORT.md (+ summary.json, accuracy.png). Each target is a file the stage writes
# (a stamp for training runs, whose checkpoints are rewritten every epoch), so `make demo-vis`
# after `make demo` reuses the pre-trained checkpoint, and an interrupted demo resumes at the
# stage that did not finish. `python -m demo.stage` times each stage (experiments/demo/timings.json).
DEMO_OUT := experiments/demo
STAMPS := $(DEMO_OUT)/stamps
RUN = $(PY) -m demo.stage
DEMO_DATA := $(DEMO_ROOT)/.demo-complete
PRE_CFG := cfgs/demo/pretrain_demo.yaml
FT_CFG := cfgs/demo/finetune_demo.yaml
FS_CFG := cfgs/demo/fewshot_demo.yaml
PRETRAINED := experiments/pretrain_demo/demo/ckpt-last.pth
FINETUNED := experiments/finetune_demo/demo/ckpt-best.pth
MODELNET := $(DEMO_ROOT)/ModelNet/modelnet40_normal_resampled
SEG_ROOT := $(DEMO_ROOT)/shapenetcore_partanno_segmentation_benchmark_v0_normal
SEG_NPOINT := 512
SEG_ARGS := --root $(SEG_ROOT) --trans_dim 96 --depth 4 --num_heads 3 --npoint $(SEG_NPOINT) --num_group 32 --group_size 32 \
	--return_layers 1 2 3 --batch_size 8 --epoch 8 --warmup_epoch 0 --learning_rate 0.001 --num_workers $(WORKERS) --no_progress
SVM_ARGS := --config $(PRE_CFG) --modelnet_root $(MODELNET) --modelnet_classes 10 --modelnet_npoints 1024 --num_workers $(WORKERS)
REPORT := $(DEMO_OUT)/REPORT.md

.DELETE_ON_ERROR:

data: $(DEMO_DATA)

# --force: this rule runs when the data is missing or its generator changed; then every dataset is rewritten
$(DEMO_DATA): demo/generate.py demo/shapes.py tools/make_demo_data.py | install
	$(RUN) data -- $(PY) tools/make_demo_data.py --root $(DEMO_ROOT) --force
	touch $@

demo-pretrain: $(STAMPS)/pretrain

$(STAMPS)/pretrain: $(DEMO_DATA) $(PRE_CFG)
	$(RUN) pretrain -- $(PY) main.py --config $(PRE_CFG) --exp_name demo --overwrite --num_workers $(WORKERS) --no_progress
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/finetune: $(STAMPS)/pretrain $(FT_CFG)
	$(RUN) finetune -- $(PY) main.py --config $(FT_CFG) --finetune_model --ckpts $(PRETRAINED) --exp_name demo --overwrite --num_workers $(WORKERS) --no_progress
	touch $@

$(STAMPS)/scratch: $(DEMO_DATA) $(FT_CFG)
	$(RUN) finetune-scratch -- $(PY) main.py --config $(FT_CFG) --scratch_model --exp_name demo_scratch --overwrite --num_workers $(WORKERS) --no_progress
	mkdir -p $(STAMPS) && touch $@

experiments/finetune_demo/test_demo/test_results.json: $(STAMPS)/finetune
	$(RUN) vote -- $(PY) main.py --test --vote --ckpts $(FINETUNED) --exp_name demo --num_workers $(WORKERS) --no_progress

$(DEMO_OUT)/svm_pretrained.json: $(STAMPS)/pretrain
	$(RUN) svm -- $(PY) tools/svm.py $(SVM_ARGS) --ckpts $(PRETRAINED) --out $@ --no_progress

$(DEMO_OUT)/svm_random_init.json: $(DEMO_DATA) $(PRE_CFG)
	$(RUN) svm-random-init -- $(PY) tools/svm.py $(SVM_ARGS) --random_init --out $@ --no_progress

experiments/fewshot_demo/demo_5w10s_summary.json: $(STAMPS)/pretrain $(FS_CFG)
	$(RUN) fewshot -- $(PY) tools/fewshot_all.py --config $(FS_CFG) --way 5 --shot 10 --exp_name demo \
	    --finetune_model --ckpts $(PRETRAINED) --overwrite --num_workers $(WORKERS) --no_progress

experiments/fewshot_demo/demo_scratch_5w10s_summary.json: $(DEMO_DATA) $(FS_CFG)
	$(RUN) fewshot-scratch -- $(PY) tools/fewshot_all.py --config $(FS_CFG) --way 5 --shot 10 --exp_name demo_scratch \
	    --scratch_model --overwrite --num_workers $(WORKERS) --no_progress

segmentation/log/part_seg/demo/test_results.json: $(STAMPS)/pretrain
	$(RUN) seg -- $(PY) segmentation/main.py --ckpts $(PRETRAINED) --log_dir demo --overwrite $(SEG_ARGS)
	$(RUN) seg-test -- $(PY) segmentation/main.py --test --log_dir demo --root $(SEG_ROOT) --npoint $(SEG_NPOINT) --vis 4 --num_workers $(WORKERS) --no_progress

segmentation/log/part_seg/demo_scratch/test_results.json: $(DEMO_DATA)
	$(RUN) seg-scratch -- $(PY) segmentation/main.py --log_dir demo_scratch --overwrite $(SEG_ARGS)
	$(RUN) seg-scratch-test -- $(PY) segmentation/main.py --test --log_dir demo_scratch --root $(SEG_ROOT) --npoint $(SEG_NPOINT) --num_workers $(WORKERS) --no_progress

experiments/pretrain_demo/demo/vis/reconstructions.png: $(STAMPS)/pretrain
	$(RUN) reconstructions -- $(PY) main_vis.py --ckpts $(PRETRAINED) --config $(PRE_CFG) --exp_name demo --num_samples 6 --num_workers $(WORKERS) --no_progress

experiments/pretrain_demo/demo/tsne.json: $(STAMPS)/pretrain $(FT_CFG)
	$(RUN) tsne -- $(PY) tools/tsne.py --config $(FT_CFG) --ckpts $(PRETRAINED) --out experiments/pretrain_demo/demo/tsne.png --no_progress

$(DEMO_OUT)/tsne_random_init.json: $(DEMO_DATA) $(FT_CFG)
	$(RUN) tsne-random-init -- $(PY) tools/tsne.py --config $(FT_CFG) --out $(DEMO_OUT)/tsne_random_init.png --no_progress

experiments/pretrain_demo/demo/curves.png: $(STAMPS)/pretrain
	$(PY) tools/plot_curves.py experiments/pretrain_demo/TFBoard/demo --out $@

DEMO_FINETUNE := $(STAMPS)/finetune $(STAMPS)/scratch experiments/finetune_demo/test_demo/test_results.json \
	$(DEMO_OUT)/svm_pretrained.json $(DEMO_OUT)/svm_random_init.json
DEMO_FEWSHOT := experiments/fewshot_demo/demo_5w10s_summary.json experiments/fewshot_demo/demo_scratch_5w10s_summary.json
DEMO_SEG := segmentation/log/part_seg/demo/test_results.json segmentation/log/part_seg/demo_scratch/test_results.json
DEMO_VIS := experiments/pretrain_demo/demo/vis/reconstructions.png experiments/pretrain_demo/demo/tsne.json \
	$(DEMO_OUT)/tsne_random_init.json experiments/pretrain_demo/demo/curves.png

demo-finetune: $(DEMO_FINETUNE)
demo-fewshot: $(DEMO_FEWSHOT)
demo-seg: $(DEMO_SEG)
demo-vis: $(DEMO_VIS)

demo-report $(REPORT): $(DEMO_FINETUNE) $(DEMO_FEWSHOT) $(DEMO_SEG) $(DEMO_VIS)
	$(PY) -m demo.report --out $(DEMO_OUT)

demo: $(REPORT)

bench: install
	$(PY) bench/run.py

# The elastic-restart tests RUNS times in a row; a restarted group that does not form at its first
# attempt fails a run (`make elastic-soak RUNS=10`)
RUNS ?= 10
.PHONY: elastic-soak
elastic-soak: install
	for i in $$(seq $(RUNS)); do echo "run $$i/$(RUNS)"; $(PY) -m pytest -q -p no:cacheprovider tests/test_elastic.py || exit 1; done

clean-demo:
	rm -rf experiments/pretrain_demo experiments/finetune_demo experiments/fewshot_demo $(DEMO_OUT) \
	    segmentation/log/part_seg/demo segmentation/log/part_seg/demo_scratch $(DEMO_ROOT)
