"""Linear SVM on frozen features (engine/svm.py), the few-shot summary (tools/fewshot_all.py), SVM
validation during pre-training through main.py, and the ``tools/svm.py`` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import main as main_module
from datasets import build_dataset_from_cfg
from engine.svm import fit_linear_svm
from models.Inter_MAE import Inter_MAE
from tools import svm as svm_tool
from tools.fewshot_all import summarize
from utils.checkpoint import load_checkpoint_file
from utils.config import cfg_from_yaml_file
from writers import modelnet_cfg, write_modelnet, write_tiny_pretrain_config


def run_main(*argv: str) -> None:
    main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


def test_linear_svm_and_fewshot_summary():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    y_train, y_test = np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 5)
    x_train = centres[y_train] + rng.normal(size=(40, 16))
    x_test = centres[y_test] + rng.normal(size=(20, 16))
    assert fit_linear_svm(x_train, y_train, x_test, y_test, C=1.0) == 100.0
    flipped = (y_test + 1) % 4  # every test label wrong
    assert fit_linear_svm(x_train, y_train, x_test, flipped, C=1.0) == 0.0
    mean, std = summarize([90.0, 92.0, 97.0, 95.0])
    assert mean == pytest.approx(93.5) and std == pytest.approx(np.sqrt((3.5 ** 2 + 1.5 ** 2 + 3.5 ** 2 + 1.5 ** 2) / 4))


def test_svm_validation_during_pretraining_and_cli(tmp_path, shapenet55_root):
    from sklearn.svm import LinearSVC

    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 12), ("test", 6)), n_rows=300, cache_points=256)
    cfg = write_tiny_pretrain_config(tmp_path / "tiny_pre.yaml", shapenet55_root, epochs=1)
    entry = "{{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: {s}, npoints: 256, N_POINTS: 256, DATA_PATH: {r}}}}}"
    cfg.write_text(cfg.read_text() + f"svm_validation: {{enabled: true, C: 0.5, train: {entry.format(s='train', r=tmp_path / 'mn')}, "
                                     f"test: {entry.format(s='test', r=tmp_path / 'mn')}}}\n")
    run_main("--config", str(cfg), "--exp_name", "svm", "--experiment_root", str(tmp_path / "exp"))
    ckpt = load_checkpoint_file(str(tmp_path / "exp" / "tiny_pre" / "svm" / "ckpt-last.pth"))
    logged = ckpt["metrics"]["svm_acc"]
    assert list((tmp_path / "exp" / "tiny_pre" / "TFBoard" / "svm" / "test").glob("events.*"))

    # independent recomputation from the saved weights: max ++ mean of unmasked encoder tokens
    model = Inter_MAE(cfg_from_yaml_file(str(cfg)).model)
    model.load_state_dict(ckpt["base_model"])
    model.eval()
    feats = {}
    for subset in ("train", "test"):
        ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", subset, 256))
        pts = torch.stack([ds[i][2][0] for i in range(len(ds))])
        with torch.no_grad():
            nb, ct = model.group_divider(pts)
            tok, _ = model.MAE_encoder(nb, ct, noaug=True)
        feats[subset] = (torch.cat([tok.max(1).values, tok.mean(1)], 1).numpy(), np.array([ds[i][2][1] for i in range(len(ds))]))
    svm = LinearSVC(C=0.5, random_state=0, max_iter=10000).fit(*feats["train"])
    expected = (svm.predict(feats["test"][0]) == feats["test"][1]).mean() * 100
    assert logged == pytest.approx(expected, abs=1e-6)
    cli = svm_tool.main(["--config", str(cfg), "--ckpts", str(tmp_path / "exp" / "tiny_pre" / "svm" / "ckpt-last.pth"),
                         "--modelnet_root", str(tmp_path / "mn"), "--modelnet_npoints", "256", "--num_workers", "0",
                         "--device", "cpu"])
    assert cli == pytest.approx(expected, abs=1e-6)
    # --random_init: no checkpoint, the encoder as initialised; --out writes the figure
    out = tmp_path / "svm_random.json"
    random_acc = svm_tool.main(["--config", str(cfg), "--random_init", "--modelnet_root", str(tmp_path / "mn"),
                                "--modelnet_npoints", "256", "--num_workers", "0", "--device", "cpu", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["acc"] == pytest.approx(random_acc) and saved["random_init"] is True and saved["ckpts"] is None
    with pytest.raises(SystemExit):  # --ckpts and --random_init exclude each other
        svm_tool.main(["--config", str(cfg), "--random_init", "--ckpts", "x.pth"])
