"""Fine-tuning on a folder of class subfolders, ``--test``, and named predictions
(engine/predict.py, tools/predict.py): the CSV's accuracy equals ``--test``'s on the same files,
bad files are skipped and reported, the Python API on arrays and paths."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

import datasets.PointCloudFolder as folder_module
import main as main_module
from engine.predict import Predictor, list_inputs, true_class
from models.Inter_MAE import Inter_MAE
from test_folder import N_POINTS, make_mesh, write_folder
from tools import predict as predict_cmd
from utils.checkpoint import load_checkpoint_file
from utils.cli import InputError

pytest.importorskip("trimesh")

CLASSES = ["ball", "plate", "stick"]
TINY = ["model.trans_dim=32", "model.encoder_dims=32", "model.depth=2", "model.num_heads=2", "model.group_size=8",
        "model.num_group=8", "npoints=64", "total_bs=4", "scheduler.kwargs.initial_epochs=0",
        f"dataset.train.N_POINTS={N_POINTS}", f"dataset.val.N_POINTS={N_POINTS}", f"dataset.test.N_POINTS={N_POINTS}"]
TINY_TC = dict(mask_ratio=0.5, mask_type="rand", trans_dim=32, encoder_dims=32, depth=2, drop_path_rate=0.1,
               num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def run_main(*argv: str):
    return main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


def read_csv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A classifier trained for 8 epochs (``--scratch_model``; ``--finetune_model``: the last test)
    on a train/ test/ folder of three separable shapes (every format), tested with ``--test``:
    (data root, run folder, test accuracy, experiment root)."""
    tmp = tmp_path_factory.mktemp("ft")
    folder_module._SCANS.clear()
    root = write_folder(tmp / "my shapes", split_dirs={"train": 8, "test": 4}, seed=3)
    exp_root = tmp / "exp"
    run_main("--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--exp_name", "mine", "--data_root", str(root),
             "--experiment_root", str(exp_root), "--opts", *TINY, "max_epoch=8")
    run = exp_root / "finetune_folder" / "mine"
    results = run_main("--test", "--ckpts", str(run / "ckpt-best.pth"), "--experiment_root", str(exp_root))
    return root, run, results["acc"], exp_root


def test_finetune_learns_the_classes_of_the_folder(finetuned):
    _, run, acc, _ = finetuned
    best = load_checkpoint_file(str(run / "ckpt-best.pth"))
    assert best["class_names"] == CLASSES
    assert best["config"]["model"]["cls_dim"] == 3
    assert best["best_metrics"]["acc"] >= 75.0  # chance: 33 %
    assert acc == pytest.approx(best["best_metrics"]["acc"], abs=1e-3)  # --test on the same test/ files


def test_predict_csv_accuracy_equals_test(finetuned, tmp_path):
    root, run, acc, _ = finetuned
    out = tmp_path / "out" / "predictions.csv"
    code = predict_cmd.main(["--ckpts", str(run / "ckpt-best.pth"), "--input", str(root / "test"), "--out", str(out),
                             "--topk", "2", "--device", "cpu", "--batch_size", "5"])
    assert code == 0
    rows = read_csv(out)
    assert len(rows) == 12 and list(rows[0])[:7] == ["path", "predicted", "probability", "top_1", "prob_1", "top_2", "prob_2"]
    for row in rows:
        assert row["predicted"] in CLASSES and row["predicted"] == row["top_1"] and row["error"] == ""
        assert row["true_class"] == Path(row["path"]).parent.name
        assert 0.0 < float(row["prob_2"]) <= float(row["probability"]) <= 1.0
    csv_acc = 100.0 * np.mean([r["predicted"] == r["true_class"] for r in rows])
    assert csv_acc == pytest.approx(acc, abs=1e-3)
    log = out.with_suffix(".log").read_text(encoding="utf-8")
    assert f"[predict] accuracy = {acc:.4f} %" in log and "per-class accuracy: ball" in log
    assert "confusion matrix (rows: true class, columns: predicted)" in log
    assert (tmp_path / "out" / "predictions_confusion.png").stat().st_size > 0


def test_predict_skips_bad_files_and_strict_stops(finetuned, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root, run, _, _ = finetuned
    inputs = tmp_path / "new files"
    shutil.copytree(root / "test" / "ball", inputs / "ball")
    (inputs / "ball" / "empty.off").write_bytes(b"")
    (inputs / "notes.foo").write_text("x")
    out = tmp_path / "p.csv"
    argv = ["--ckpts", str(run / "ckpt-best.pth"), "--input", str(inputs), "--out", str(out), "--device", "cpu"]
    assert predict_cmd.main(argv) == 1  # written, but a file was skipped
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert rows["empty.off"]["error"] == "empty" and rows["empty.off"]["predicted"] == ""
    assert rows["notes.foo"]["error"].startswith("unknown extension .foo")
    assert sum(1 for r in rows.values() if r["predicted"]) == 4
    log = out.with_suffix(".log").read_text(encoding="utf-8")
    assert "skipped" in log and "empty.off: empty" in log
    out.unlink()
    with pytest.raises(InputError, match=r"^2 bad inputs \(--strict\): unknown extension .foo; .*\(1 input\): "
                                         r"[^;]*notes.foo; empty \(1 input\): [^;]*empty.off; nothing written; ") as info:
        predict_cmd.main(argv + ["--strict"])
    assert not out.exists()
    listed = Path(str(info.value).rsplit("; every input and its reason: ", 1)[1])
    assert listed.parent == tmp_path and sorted(Path(line.split("\t")[0]).name for line in
                                                listed.read_text(encoding="utf-8").splitlines()[1:]) == ["empty.off", "notes.foo"]
    with pytest.raises(InputError, match="neither a file nor a folder"):
        predict_cmd.main(["--ckpts", str(run / "ckpt-best.pth"), "--input", str(tmp_path / "nope"), "--out", str(out)])


def test_python_api_on_paths_and_arrays(finetuned):
    root, run, _, _ = finetuned
    predictor = Predictor.from_checkpoint(str(run / "ckpt-best.pth"), device="cpu")
    assert predictor.class_names == CLASSES and predictor.n_points == N_POINTS and predictor.npoints == 64
    files = [p for p, _ in list_inputs(str(root / "test"))]
    by_path = predictor.predict(files, topk=3)
    assert [r.path for r in by_path] == files and all(len(r.topk) == 3 for r in by_path)
    # arrays: the clouds as the files give them, batched (B, N, 3), or a list of (N_i, 3)
    clouds = np.stack([predictor.read(f) for f in files])
    by_array = predictor.predict(clouds)
    assert [r.name for r in by_array] == [r.name for r in by_path]
    mesh_points = np.asarray(make_mesh("stick", np.random.default_rng(0)).sample(500, seed=0))
    single = predictor.predict([mesh_points, mesh_points[:10]])
    assert single[0].name in CLASSES and single[1].error.startswith("too small")
    voted = predictor.predict(files[:2], vote=3)
    assert all(r.name in CLASSES for r in voted)
    assert true_class(str(root / "test" / "ball" / "x.off"), str(root / "test"), CLASSES) == "ball"
    assert true_class(str(root / "test" / "ball" / "x.off"), "", CLASSES) == "ball"
    assert true_class(str(root / "x.off"), "", CLASSES) is None


def test_split_and_class_count_checks(finetuned, tmp_path):
    """``--finetune_model`` on a folder without train/ test/: the seeded split of the run is written
    to its split.json and ``--test`` (the run's config.yaml) reuses it; a cls_dim that disagrees
    with the folder's classes is an error."""
    folder_module._SCANS.clear()
    root = write_folder(tmp_path / "flat", per_class=5, seed=4)
    exp_root = tmp_path / "exp"
    with pytest.raises(InputError, match="cls_dim.*3 classes"):
        run_main("--config", "cfgs/finetune_folder.yaml", "--scratch_model", "--exp_name", "bad", "--data_root",
                 str(root), "--experiment_root", str(exp_root), "--opts", *TINY, "max_epoch=1", "model.cls_dim=4")
    pre = Inter_MAE(EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2", transformer_config=EasyDict(TINY_TC)))
    torch.save({"base_model": pre.state_dict()}, tmp_path / "pre.pth")
    run_main("--config", "cfgs/finetune_folder.yaml", "--finetune_model", "--ckpts", str(tmp_path / "pre.pth"),
             "--exp_name", "flat", "--data_root", str(root), "--experiment_root", str(exp_root), "--opts", *TINY,
             "max_epoch=1")
    run = exp_root / "finetune_folder" / "flat"
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 12 and len(split["test"]) == 3
    results = run_main("--test", "--ckpts", str(run / "ckpt-last.pth"), "--exp_name", "flat", "--experiment_root",
                       str(exp_root))
    tested = json.loads((exp_root / "finetune_folder" / "test_flat" / "test_results.json").read_text())
    assert tested["test_shapes"] == 3 and results["acc"] == pytest.approx(tested["acc"])


def test_predict_reads_files_with_fewer_points_than_n_points_but_enough_for_npoints(finetuned, tmp_path):
    """The run read N_POINTS = 96 points per file and feeds npoints = 64: a point file of 80 points is
    predicted from all of them (as a run on such files with N_POINTS: auto); one of 10 points is a
    row with the reason, naming npoints."""
    root, run, _, _ = finetuned
    predictor = Predictor.from_checkpoint(str(run / "ckpt-best.pth"), device="cpu")
    assert (predictor.n_points, predictor.npoints) == (N_POINTS, 64)
    mesh = make_mesh("stick", np.random.default_rng(2))
    for n in (80, 10):
        np.save(tmp_path / f"stick_{n}.npy", np.asarray(mesh.sample(n, seed=n), dtype=np.float32))
    out = tmp_path / "p.csv"
    code = predict_cmd.main(["--ckpts", str(run / "ckpt-best.pth"), "--input", str(tmp_path / "stick_80.npy"),
                             str(tmp_path / "stick_10.npy"), str(root / "test" / "stick"), "--out", str(out),
                             "--device", "cpu"])
    assert code == 1
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert rows["stick_80.npy"]["predicted"] in CLASSES and rows["stick_80.npy"]["error"] == ""
    assert rows["stick_10.npy"]["error"] == "too small: 10 points, fewer than npoints = 64"
    assert sum(1 for r in rows.values() if r["predicted"]) == 5  # 80 points and the 4 test sticks
    cloud = predictor.read(str(tmp_path / "stick_80.npy"))
    xyz = np.load(tmp_path / "stick_80.npy").astype(np.float64)
    xyz -= xyz.mean(axis=0)
    np.testing.assert_allclose(cloud, xyz / np.linalg.norm(xyz, axis=1).max(), atol=1e-6)  # every point, in order
