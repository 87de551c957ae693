"""Training engine and jobs: ``engine.py`` (the shared train/eval loop), ``builder.py`` (data,
model, optimizer, checkpoints), ``pretrain.py``, ``finetune.py``, ``partseg.py``, ``svm.py``."""
