"""The demo's machinery: stage timings, the report (every figure read from the runs' files), the
make targets' file dependencies and the surface textures of the procedural data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from demo import report, stage
from demo import shapes as P

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- stages
def test_stage_records_the_time_of_a_successful_command(tmp_path, capsys):
    timings = tmp_path / "t.json"
    assert stage.main(["first", "--timings", str(timings), "--", sys.executable, "-c", "import time; time.sleep(0.2)"]) == 0
    assert stage.main(["second", "--timings", str(timings), "--", sys.executable, "-c", "pass"]) == 0
    data = json.loads(timings.read_text())
    assert set(data) == {"first", "second"} and data["first"] >= 0.2
    assert "[demo] first:" in capsys.readouterr().out


def test_a_failing_stage_returns_its_status_and_is_not_recorded(tmp_path, capsys):
    timings = tmp_path / "t.json"
    rc = stage.main(["bad", "--timings", str(timings), "--", sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3 and not timings.exists()
    assert "bad: failed (exit status 3)" in capsys.readouterr().err


def test_stage_without_a_command_is_a_usage_error(tmp_path):
    assert stage.main(["x", "--timings", str(tmp_path / "t.json")]) == 2


# ------------------------------------------------------------------------------------- report
def _write_runs(root: Path) -> dict:
    """A demo tree with known figures, in the files the runs write."""
    def ckpt(rel, metrics, best, epoch):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"base_model": {}, "epoch": epoch, "metrics": metrics, "best_metrics": best}, path)

    def js(rel, data):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    ckpt(report.SOURCES["pretrain"], {"val_loss_rec": 0.0123, "train_loss_rec": 0.02}, {}, 9)
    ckpt(report.SOURCES["finetune_pretrained"], {"acc": 70.0}, {"acc": 81.5, "epoch": 7}, 7)
    ckpt(report.SOURCES["finetune_scratch"], {"acc": 40.0}, {"acc": 52.25, "epoch": 9}, 9)
    js(report.SOURCES["vote"], {"acc": 80.0, "vote_acc": 83.0, "voting": {"times": 4, "repeats": 1}})
    js(report.SOURCES["svm_pretrained"], {"acc": 77.0, "C": 0.01})
    js(report.SOURCES["svm_random"], {"acc": 31.0, "C": 0.01})
    # the summaries tools/fewshot_all.py writes
    js(report.SOURCES["fewshot_pretrained"], {"way": 5, "shot": 10, "folds": [0, 1], "accuracy": {"0": 84.0, "1": 92.0},
                                              "mean": 88.0, "std": 4.0, "completed": 2, "failed": {}})
    js(report.SOURCES["fewshot_scratch"], {"way": 5, "shot": 10, "folds": [0, 1], "accuracy": {"0": 48.0, "1": 52.0},
                                           "mean": 50.0, "std": 2.0, "completed": 2, "failed": {}})
    js(report.SOURCES["seg_pretrained"], {"instance_avg_iou": 0.61, "class_avg_iou": 0.58})
    js(report.SOURCES["seg_scratch"], {"instance_avg_iou": 0.55, "class_avg_iou": 0.52})
    js(report.SOURCES["tsne_pretrained"], {"knn_acc": 75.0})
    js(report.SOURCES["tsne_random"], {"knn_acc": 35.0})
    js(report.SOURCES["timings"], {"pretrain": 120.0, "finetune": 30.0})
    return {}


def test_report_reads_every_figure_from_the_runs_files(tmp_path):
    _write_runs(tmp_path)
    out = tmp_path / "out"
    path, summary, missing = report.write_report(str(out), root=str(tmp_path))
    assert missing == []
    assert summary["classification"] == {"pretrained_acc": 81.5, "scratch_acc": 52.25, "vote_acc": 83.0, "test_acc": 80.0,
                                         "vote_passes": 4}
    assert summary["svm"]["pretrained_acc"] == 77.0 and summary["svm"]["random_init_acc"] == 31.0
    assert summary["fewshot"]["pretrained_mean"] == 88.0 and summary["fewshot"]["folds"] == 2
    assert summary["segmentation"]["pretrained_class_miou"] == 0.58
    assert summary["tsne_knn"] == {"pretrained_acc": 75.0, "random_init_acc": 35.0}
    assert summary["pretraining"] == {"epochs": 10, "val_loss_rec_last": 0.0123, "train_loss_rec_last": 0.02}
    assert summary["minutes"] == {"pretrain": 2.0, "finetune": 0.5} and summary["minutes_total"] == 2.5
    text = Path(path).read_text()
    for figure in ("81.5", "52.2", "83.0", "77.0", "31.0", "88.0 ± 4.0", "50.0 ± 2.0", "0.610", "0.520", "75.0"):
        assert figure in text, figure
    assert "![accuracy: pre-trained vs scratch](accuracy.png)" in text
    assert (out / "accuracy.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["classification"]["pretrained_acc"] == 81.5


def test_report_names_what_did_not_run(tmp_path):
    _write_runs(tmp_path)
    os.remove(tmp_path / report.SOURCES["seg_scratch"])
    os.remove(tmp_path / report.SOURCES["finetune_scratch"])
    path, summary, missing = report.write_report(str(tmp_path / "out"), root=str(tmp_path))
    assert sorted(missing) == sorted([report.SOURCES["seg_scratch"], report.SOURCES["finetune_scratch"]])
    assert summary["classification"]["scratch_acc"] is None
    text = Path(path).read_text()
    assert "## Not run" in text and report.SOURCES["seg_scratch"] in text and "not run" in text


def test_report_copies_the_pictures_it_finds(tmp_path):
    _write_runs(tmp_path)
    picture = tmp_path / report.PICTURES["tsne"]
    picture.parent.mkdir(parents=True, exist_ok=True)
    picture.write_bytes(b"\x89PNG fake")
    path, _, _ = report.write_report(str(tmp_path / "out"), root=str(tmp_path))
    assert (tmp_path / "out" / "tsne.png").read_bytes() == b"\x89PNG fake"
    assert "(tsne.png)" in Path(path).read_text()


# ------------------------------------------------------------------------------ make targets
MAKE = shutil.which("make")


def _dry_run(tmp_path: Path, target: str) -> str:
    return subprocess.run([MAKE, "-n", "-f", str(REPO / "Makefile"), target], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_demo_vis_after_the_demo_reuses_the_pretrained_checkpoint(tmp_path):
    """With the data, the install stamp and the pre-training stamp newer than what they depend on,
    `make demo-vis` plans the pictures only: no data generation, no pre-training."""
    inputs = ["requirements.txt", "constraints.txt", "demo/generate.py", "demo/shapes.py", "tools/make_demo_data.py",
              "cfgs/demo/pretrain_demo.yaml", "cfgs/demo/finetune_demo.yaml", "cfgs/demo/fewshot_demo.yaml"]
    outputs = [".venv/.installed-requirements", "data/demo/.demo-complete", "experiments/demo/stamps/pretrain"]
    now = time.time()
    for i, rel in enumerate(inputs + outputs):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        stamp = now - 100 + (0 if rel in inputs else 10 + i)
        os.utime(path, (stamp, stamp))
    plan = _dry_run(tmp_path, "demo-vis")
    assert "main_vis.py" in plan and "tools/tsne.py" in plan
    assert "make_demo_data.py" not in plan and "main.py --config cfgs/demo/pretrain_demo.yaml" not in plan
    # a changed pre-training config makes the pre-training stale again
    os.utime(tmp_path / "cfgs/demo/pretrain_demo.yaml", (now, now))
    assert "main.py --config cfgs/demo/pretrain_demo.yaml" in _dry_run(tmp_path, "demo-vis")


# -------------------------------------------------------------------------------- textures
def test_textures_move_points_along_the_normals_by_their_height_field():
    rng = np.random.default_rng(0)
    pts, nrm = P.sample_family("sphere", 2000, rng)
    assert np.array_equal(P.apply_texture(pts, nrm, "smooth", rng), pts)
    moved = P.apply_texture(pts, nrm, "ripples_x", rng)
    offset = moved.astype(np.float64) - pts
    # along the normal, by amplitude * sin(2 pi x / wavelength) (0.05, 0.35: demo.shapes)
    expected = 0.05 * np.sin(2 * np.pi * pts[:, 0].astype(np.float64) / 0.35)
    np.testing.assert_allclose(offset, nrm * expected[:, None], atol=1e-5)
    for name in P.TEXTURES:
        out = P.apply_texture(pts, nrm, name, rng)
        assert out.shape == pts.shape and np.isfinite(out).all() and np.abs(out - pts).max() < 0.25
    with pytest.raises(KeyError, match="unknown texture 'velvet'"):
        P.apply_texture(pts, nrm, "velvet", rng)


def test_the_pretraining_corpus_covers_every_modelnet_family():
    from demo import generate as G

    corpus = [fam for _, fam in G.SHAPENET_CLASSES]
    assert {fam for fam, _ in G.MODELNET40_CLASSES.values()} <= set(corpus)
    assert sorted(corpus) == sorted(P.FAMILIES)  # each family once
    assert len({synset for synset, _ in G.SHAPENET_CLASSES}) == len(G.SHAPENET_CLASSES)
