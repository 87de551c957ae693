"""Part segmentation: metrics by hand (engine/partseg.py), model shape and category-restricted eval
(models/PartSegTransformer.py), feature propagation against numpy, loading pre-training
checkpoints, and runs of segmentation/main.py (train + test, 2-process torchrun)."""
from __future__ import annotations

import json

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from engine.partseg import PartSegMeter, restrict_to_category, shape_iou
from models.Inter_MAE import MaskTransformer
from models.PartSegTransformer import PartSegTransformer, PointNetFeaturePropagation
from segmentation.main import main as seg_main
from utils.checkpoint import CheckpointError, load_checkpoint_file
from writers import CATS, SEG_CLASSES, write_shapenetpart


@pytest.fixture(scope="module")
def part_root(tmp_path_factory) -> Path:
    return write_shapenetpart(tmp_path_factory.mktemp("shapenetpart"), {"Bag": (3, 1, 2), "Table": (3, 1, 2)})


# ------------------------------------------------------------------------------------ metrics
def test_shape_iou_by_hand():
    bag = SEG_CLASSES["Bag"]  # parts 4, 5
    assert shape_iou(np.array([4, 5, 5, 5]), np.array([4, 4, 5, 5]), bag) == pytest.approx((1 / 2 + 2 / 3) / 2)
    airplane = SEG_CLASSES["Airplane"]  # parts 2 and 3 absent from both -> 1 each
    assert shape_iou(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), airplane) == 1.0
    assert shape_iou(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), airplane) == pytest.approx((2 / 3 + 1 / 2 + 1 + 1) / 4)
    # predicted part 3 absent from the truth: IoU 0 for it
    assert shape_iou(np.array([0, 0, 3, 3]), np.array([0, 0, 1, 1]), airplane) == pytest.approx((1 + 0 + 1 + 0) / 4)


def test_meter_one_category():
    meter = PartSegMeter()
    meter.update(np.array([[4, 5, 5, 5], [4, 4, 5, 5]]), np.array([[4, 4, 5, 5], [4, 4, 5, 5]]), np.array([1, 1]))
    m = meter.compute()
    assert m["instance_avg_iou"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert m["class_avg_iou"] == pytest.approx(m["instance_avg_iou"])
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["class_avg_accuracy"] == pytest.approx((3 / 4 + 4 / 4) / 2)  # part 4: 3 of 4, part 5: 4 of 4


def test_meter_several_categories():
    meter = PartSegMeter()
    meter.update(torch.tensor([[4, 5, 5, 5], [4, 4, 5, 5]]), torch.tensor([[4, 4, 5, 5], [4, 4, 5, 5]]), torch.tensor([1, 1]))
    meter.update(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0]]))
    bag_a, bag_b, plane = (1 / 2 + 2 / 3) / 2, 1.0, (2 / 3 + 1 / 2 + 1 + 1) / 4
    m = meter.compute()
    assert m["instance_avg_iou"] == pytest.approx((bag_a + bag_b + plane) / 3)
    assert m["class_avg_iou"] == pytest.approx(((bag_a + bag_b) / 2 + plane) / 2)
    assert m["accuracy"] == pytest.approx(10 / 12)
    # seen parts 0, 1, 4, 5: recalls 2/2, 1/2, 3/4, 4/4
    assert m["class_avg_accuracy"] == pytest.approx((1 + 1 / 2 + 3 / 4 + 1) / 4)
    merged = PartSegMeter.merged([meter.state(), PartSegMeter().state()])
    assert merged.compute() == m
    meter.sync()  # a single process: nothing to merge, the metrics stay
    assert meter.compute() == m


def test_restrict_to_category_against_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 20, generator=g)
    category = torch.tensor([1, 10, 15])
    logits[:, 0] = 100.0  # the global best part (Airplane) belongs to none of these categories
    pred = restrict_to_category(logits, category)
    for b, c in enumerate(category.tolist()):
        parts = SEG_CLASSES[CATS[c]]
        for n in range(20):
            assert pred[b, n].item() == parts[int(np.argmax([logits[b, p, n].item() for p in parts]))]


# -------------------------------------------------------------------------------------- model
def tiny_model(**kw) -> PartSegTransformer:
    args = dict(trans_dim=32, depth=3, num_heads=2, num_group=16, group_size=8)
    args.update(kw)
    return PartSegTransformer(**args)


@pytest.mark.parametrize("normal", [False, True])
def test_model_output_shape_and_restricted_eval(normal):
    torch.manual_seed(0)
    model = tiny_model(normal=normal).eval()
    pts = torch.randn(2, 128, 6 if normal else 3)
    category = torch.tensor([3, 11])
    with torch.no_grad():
        logits = model(pts, category)
    assert logits.shape == (2, 50, 128)
    pred = restrict_to_category(logits, category)
    assert set(pred[0].tolist()) <= set(SEG_CLASSES["Car"]) and set(pred[1].tolist()) <= set(SEG_CLASSES["Mug"])
    one_hot = torch.nn.functional.one_hot(category, 16)
    with torch.no_grad():
        assert torch.allclose(model(pts, one_hot), logits, atol=1e-5)


def test_feature_propagation_matches_numpy():
    torch.manual_seed(1)
    xyz1, xyz2, feats = torch.randn(2, 30, 3), torch.randn(2, 7, 3), torch.randn(2, 5, 7)
    out = PointNetFeaturePropagation(5, [4]).interpolate(xyz1, xyz2, feats).numpy()
    for b in range(2):
        for n in range(30):
            d = ((xyz2[b].numpy() - xyz1[b, n].numpy()) ** 2).sum(1)
            near = np.argsort(d)[:3]
            w = 1 / (d[near] + 1e-8)
            np.testing.assert_allclose(out[b, :, n], (feats[b].numpy()[:, near] * (w / w.sum())).sum(1), rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------- checkpoints
def save_pretrain_ckpt(path: Path, patch_embed: str) -> dict:
    encoder = MaskTransformer(trans_dim=32, depth=3, num_heads=2, encoder_dims=32, patch_embed=patch_embed)
    state = {f"MAE_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 1, 32)  # decoder-side entries are dropped
    torch.save({"base_model": state, "epoch": 0}, path)
    return encoder.state_dict()


def test_checkpoint_loads_encoder_strictly_and_rejects_other_embedding(tmp_path):
    path = tmp_path / "pointmae.pth"
    encoder_state = save_pretrain_ckpt(path, "point_mae")
    model = tiny_model(patch_embed="point_mae")
    report = model.load_model_from_ckpt(str(path))
    assert sorted(report.loaded) == sorted(encoder_state)
    for key, value in encoder_state.items():
        assert torch.equal(model.state_dict()[key], value)
    assert all(k.startswith(("label_conv.", "propagation_0.", "convs", "bns")) for k in report.missing)
    with pytest.raises(CheckpointError, match="'point_mae' patch embedding"):
        tiny_model(patch_embed="inter_mae").load_model_from_ckpt(str(path))
    with pytest.raises(CheckpointError, match="point_mae"):
        seg_main(["--ckpts", str(path), "--patch_embed", "inter_mae", "--root", str(tmp_path), "--log_root",
                  str(tmp_path / "log"), "--trans_dim", "32", "--depth", "3", "--num_heads", "2", "--device", "cpu"])


# ----------------------------------------------------------------------------------- runs
def test_main_trains_one_epoch_then_tests(tmp_path, part_root):
    ckpt = tmp_path / "intermae.pth"
    save_pretrain_ckpt(ckpt, "inter_mae")
    common = ["--root", str(part_root), "--log_root", str(tmp_path / "log"), "--log_dir", "smoke", "--npoint", "128",
              "--device", "cpu", "--num_workers", "0"]
    best = seg_main(common + ["--ckpts", str(ckpt), "--batch_size", "4", "--epoch", "1", "--warmup_epoch", "0",
                              "--trans_dim", "32", "--depth", "3", "--num_heads", "2", "--num_group", "16", "--group_size", "8"])
    run = tmp_path / "log" / "part_seg" / "smoke"
    saved = load_checkpoint_file(str(run / "checkpoints" / "best_model.pth"))
    assert saved["epoch"] == 0 and saved["config"]["model"]["trans_dim"] == 32
    assert "encoder.first_trans.q_conv.weight" in saved["base_model"]
    assert saved["metrics"]["instance_avg_iou"] == pytest.approx(best["instance_avg_iou"])
    log = (run / "logs" / "pt.txt").read_text()
    loaded = f"[PartSegTransformer] pretrain checkpoint {ckpt}: loaded 55 tensors into the encoder (inter_mae patch embedding)"
    for text in (loaded, "[Training] EPOCH: 0", "class avg accuracy", "class avg mIoU", "instance avg mIoU", "eval mIoU of Bag"):
        assert text in log
    assert list((run / "logs").glob("events.*"))
    # --test rebuilds the tiny model from the checkpoint's model section
    tested = seg_main(common + ["--test", "--vis", "3"])
    assert set(tested) == {"accuracy", "class_avg_accuracy", "class_avg_iou", "instance_avg_iou"}
    assert all(0.0 <= v <= 1.0 for v in tested.values())
    results = json.loads((run / "test_results.json").read_text())
    assert {k: results[k] for k in tested} == pytest.approx(tested)
    assert set(results["category_iou"]) <= {"Bag", "Table"}
    assert (run / "predictions.png").stat().st_size > 1000


def test_shapes_to_draw_takes_one_per_category_first():
    from engine.partseg import shapes_to_draw

    assert shapes_to_draw([0, 0, 0, 1, 1, 2], 4) == [0, 3, 5, 1]
    assert shapes_to_draw([3, 3], 5) == [0, 1]


def test_torchrun_two_cpu_processes(tmp_path, part_root):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # --standalone: a rendezvous on a free local port, so runs can overlap and repeat.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "segmentation" / "main.py"), "--launcher", "pytorch", "--root", str(part_root), "--log_root",
           str(tmp_path / "log"), "--log_dir", "ddp", "--npoint", "64", "--device", "cpu", "--num_workers", "0",
           "--batch_size", "4", "--epoch", "1", "--trans_dim", "32", "--depth", "3", "--num_heads", "2",
           "--num_group", "8", "--group_size", "8"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = load_checkpoint_file(str(tmp_path / "log" / "part_seg" / "ddp" / "checkpoints" / "best_model.pth"))
    assert not any(k.startswith("module.") for k in saved["base_model"])
    assert "processes: 2" in (tmp_path / "log" / "part_seg" / "ddp" / "logs" / "pt.txt").read_text()
