"""Classifier fine-tuning (engine/finetune.py): the training subset drawn from the FPS set, voting,
accuracy, a fine-tune + ``--test --vote`` run through main.py, exact resume, and few-shot over all
folds (tools/fewshot_all.py)."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch import nn

import main as main_module
from engine import finetune
from extensions.pointops import furthest_point_sample
from models import build_model_from_cfg
from models.Inter_MAE import Inter_MAE
from utils.checkpoint import load_checkpoint_file
from utils.config import cfg_from_yaml_file
from writers import TINY_FINETUNE, TINY_TC, numpy_fps, write_modelnet


def run_main(*argv: str) -> None:
    main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


# ------------------------------------------------------------------------ sampling and voting
def _row_index(sub: np.ndarray, full: np.ndarray) -> np.ndarray:
    d = ((sub[:, None, :] - full[None, :, :]) ** 2).sum(-1)
    assert np.allclose(d.min(1), 0)
    return d.argmin(1)


def test_training_subset_is_drawn_from_the_fps_set():
    torch.manual_seed(0)
    np.random.seed(0)
    pts = torch.randn(2, 300, 3)
    sub = finetune.fps_then_subset(pts, 128)  # FPS to 128 * 75 / 64 = 150, then 128 of them
    assert sub.shape == (2, 128, 3)
    for b in range(2):
        fps_set = set(numpy_fps(pts[b].double().numpy(), 150).tolist())
        idx = _row_index(sub[b].numpy(), pts[b].numpy())
        assert len(set(idx.tolist())) == 128 and set(idx.tolist()) <= fps_set


def test_fps_set_sizes_and_test_time_sampling():
    assert [finetune.points_for_sampling(n) for n in (64, 1024, 2048, 4096, 8192)] == [75, 1200, 2400, 4800, 8192]
    assert finetune.VOTE_TIMES == 10
    pts = torch.randn(2, 120, 3, generator=torch.Generator().manual_seed(0))
    assert finetune.fps_to(pts, 120) is pts  # N == npoints, no point near the origin, no duplicate: nothing to replace
    sub = finetune.fps_to(pts, 16)
    for b in range(2):
        torch.testing.assert_close(sub[b], pts[b, numpy_fps(pts[b].double().numpy(), 16)])
    points, labels = finetune.unpack_cls_batch((pts.double(), torch.tensor([[3], [4]], dtype=torch.int32)), torch.device("cpu"))
    assert points.dtype == torch.float32 and labels.dtype == torch.int64 and labels.tolist() == [3, 4]


def test_voting_averages_logits_of_subsets_of_the_fps_set():
    np.random.seed(0)
    pts = torch.randn(3, 200, 3)
    seen = []

    def stub_model(x):  # logits = [mean x, mean y, mean z, pass index]
        seen.append(x.clone())
        return torch.cat([x.mean(1), torch.full((x.shape[0], 1), float(len(seen) - 1))], dim=1)

    logits = finetune.vote_logits(stub_model, pts, npoints=64, times=10, transform=lambda x: x * 2.0)
    assert len(seen) == 10
    point_all = 64 * 75 // 64
    assert point_all == 75
    for b in range(3):
        fps_set = set(numpy_fps(pts[b].double().numpy(), point_all).tolist())
        for x in seen:
            idx = _row_index(x[b].numpy() / 2.0, pts[b].numpy())
            assert len(set(idx.tolist())) == 64 and set(idx.tolist()) <= fps_set
    by_hand = torch.stack([torch.cat([x.mean(1), torch.full((3, 1), float(k))], 1) for k, x in enumerate(seen)]).mean(0)
    torch.testing.assert_close(logits, by_hand)
    assert torch.allclose(logits[:, 3], torch.full((3,), 4.5))


def released_kernel_fps(points: np.ndarray, npoint: int) -> np.ndarray:
    """Brute-force NumPy port of the released pointnet2_ops FPS kernel run by one thread: (N, 3) ->
    (npoint,) indices. fp32 squared distances, points with x^2+y^2+z^2 <= 1e-3 (compared in double)
    never picked after the first pick, strict '>' (ties to the lowest index), 0 when nothing is left."""
    x, y, z = (points[:, c].astype(np.float32) for c in range(3))
    skip = (x * x + y * y + z * z).astype(np.float64) <= 1e-3
    temp = np.full(len(x), 1e10, np.float32)
    old, out = 0, [0]
    for _ in range(npoint - 1):
        d = (x - x[old]) * (x - x[old]) + (y - y[old]) * (y - y[old]) + (z - z[old]) * (z - z[old])
        temp = np.where(skip, temp, np.minimum(d, temp))
        best, besti = -1.0, 0
        for k in range(len(x)):
            if not skip[k] and temp[k] > best:
                best, besti = temp[k], k
        old = besti
        out.append(old)
    return np.array(out, dtype=np.int64)


def _rows_sorted(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def clouds_near_origin_and_duplicated() -> torch.Tensor:
    """(3, 75, 3): cloud 0 with points inside the 1e-3 ball (one exactly at the origin), cloud 1 with
    exact duplicates (of point 0 too), cloud 2 with point 0 inside the ball."""
    pts = np.random.default_rng(5).normal(size=(3, 75, 3)).astype(np.float32)
    pts[0, [4, 30, 74]] *= np.float32(0.005)
    pts[0, 11] = 0.0
    pts[1, [20, 21, 60]] = pts[1, [3, 3, 0]]
    pts[2, [0, 9]] *= np.float32(0.005)
    return torch.from_numpy(pts)


def test_fps_of_every_point_follows_the_released_kernel():
    """N == npoints: the released code still runs the kernel, which replaces points near the origin
    and exact duplicates by repeats of its tie pick; fps_to gives the same multiset of points."""
    pts = clouds_near_origin_and_duplicated()
    out = finetune.fps_to(pts, 75)
    assert out.shape == (3, 75, 3)
    for b in range(3):
        reference = pts[b].numpy()[released_kernel_fps(pts[b].numpy(), 75)]
        np.testing.assert_array_equal(_rows_sorted(out[b].numpy()), _rows_sorted(reference))
        torch.testing.assert_close(out[b, 0], pts[b, 0])  # the first pick stays first
        backend = pts[b][furthest_point_sample(pts[b:b + 1], 75, backend="torch")[0]]
        np.testing.assert_array_equal(_rows_sorted(out[b].numpy()), _rows_sorted(backend.numpy()))
    assert (out[0] == pts[0, 0]).all(-1).sum() == 5  # point 0 and its four repeats
    assert (out[1] == pts[1, 0]).all(-1).sum() == 4  # point 0, its duplicate and two for point 3's duplicates
    assert (out[2] == pts[2, 1]).all(-1).sum() == 2  # point 0 inside the ball: the tie pick is point 1
    with_normals = torch.cat([pts, pts + 10.0], -1)  # extra channels follow the xyz rows
    torch.testing.assert_close(finetune.fps_to(with_normals, 75), torch.cat([out, out + 10.0], -1))
    clean = torch.randn(2, 75, 3, generator=torch.Generator().manual_seed(1)) + 3.0
    assert finetune.fps_to(clean, 75) is clean


def test_training_subset_and_voting_of_every_point_follow_the_released_kernel():
    pts = clouds_near_origin_and_duplicated()
    pool = finetune.fps_to(pts, 75)
    np.random.seed(3)
    sub = finetune.fps_then_subset(pts, 64)  # point_all = min(75, 75): every point
    np.random.seed(3)
    torch.testing.assert_close(sub, pool[:, torch.from_numpy(np.random.choice(75, 64, replace=False))])
    seen = []
    np.random.seed(4)
    finetune.vote_logits(lambda x: seen.append(x.clone()) or x.mean(1), pts, npoints=64, times=3, transform=lambda x: x)
    np.random.seed(4)
    for x in seen:
        torch.testing.assert_close(x, pool[:, torch.from_numpy(np.random.choice(75, 64, replace=False))])


def test_accuracy_in_percent_over_the_loader():
    class SignOfMeanX(nn.Module):  # class 1 when the mean x of the cloud is positive
        def forward(self, x):
            m = x[..., 0].mean(1)
            return torch.stack([-m, m], dim=1)

    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(40, 3)).astype(np.float32) + np.float32(s) for s in (3, -3, 3, -3, 3)]
    labels = [1, 0, 0, 0, 1]  # 4 of 5 agree with the sign of mean x
    loader = [("ModelNet", ["sample"] * 2, (torch.from_numpy(np.stack(clouds[i:i + 2])), torch.tensor(labels[i:i + 2])))
              for i in range(0, 5, 2)]
    acc = finetune.accuracy(SignOfMeanX(), loader, torch.device("cpu"), npoints=40)
    assert acc == pytest.approx(80.0)


# ------------------------------------------------------------------------- runs through main.py
def test_finetune_then_test_with_vote_through_main(tmp_path):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    # two voting runs instead of the released 299 (best-of-runs reporting: tests/test_faithful.py)
    cfg.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=2) + "voting: {repeats: 2}\n")
    pre = Inter_MAE(EasyDict(NAME="Inter_MAE", group_size=8, num_group=8, loss="cdl2",
                             transformer_config=EasyDict(TINY_TC, decoder_embed_dim=16)))
    torch.save({"base_model": pre.state_dict()}, tmp_path / "pre.pth")
    exp_root = tmp_path / "exp"
    run_main("--config", str(cfg), "--finetune_model", "--ckpts", str(tmp_path / "pre.pth"), "--exp_name", "ft",
             "--experiment_root", str(exp_root))
    exp = exp_root / "tiny_ft" / "ft"
    best = load_checkpoint_file(str(exp / "ckpt-best.pth"))
    last = load_checkpoint_file(str(exp / "ckpt-last.pth"))
    assert last["epoch"] == 1 and 0.0 <= best["best_metrics"]["acc"] <= 100.0
    assert last["best_metrics"] == best["best_metrics"] and best["metrics"]["acc"] == best["best_metrics"]["acc"]
    ft_log = next(exp.glob("*.log")).read_text()
    n_encoder = sum(1 for k in pre.state_dict() if k.startswith("MAE_encoder."))
    classifier = build_model_from_cfg(cfg_from_yaml_file(cfg).model)
    n_new = sum(1 for k in classifier.state_dict() if k.startswith(("cls_head_finetune.", "cls_pos", "cls_token")))
    n_unused = len(pre.state_dict()) - n_encoder
    assert (f"[PointTransformer] pretrain checkpoint {tmp_path / 'pre.pth'}: loaded {n_encoder} tensors into the encoder "
            f"(inter_mae patch embedding); new: cls_head_finetune, cls_pos, cls_token ({n_new} tensors); "
            f"not used: {n_unused} checkpoint tensors") in ft_log
    assert list((exp_root / "tiny_ft" / "TFBoard" / "ft" / "test").glob("events.*"))

    run_main("--config", str(cfg), "--test", "--vote", "--ckpts", str(exp / "ckpt-best.pth"), "--exp_name", "ft",
             "--experiment_root", str(exp_root))
    log = next((exp_root / "tiny_ft" / "test_ft").glob("*.log")).read_text()
    plain = float(log.split("[TEST] plain accuracy")[1].split("=")[1].split("%")[0])
    vote = float(log.split("[TEST_VOTE] voting accuracy")[1].split(") =")[1].split("%")[0])
    # the test set is the validation set: the plain test accuracy reproduces ckpt-best's.
    assert plain == pytest.approx(best["best_metrics"]["acc"], abs=1e-3)
    assert 0.0 <= vote <= 100.0 and round(vote * 6 / 100) == pytest.approx(vote * 6 / 100, abs=1e-4)
    # the same figures in the run's test_results.json (what the demo report reads)
    results = json.loads((exp_root / "tiny_ft" / "test_ft" / "test_results.json").read_text())
    assert results["acc"] == pytest.approx(plain, abs=1e-3) and results["vote_acc"] == pytest.approx(vote, abs=1e-3)
    assert results["test_shapes"] == 6 and results["ckpts"] == str(exp / "ckpt-best.pth")


def test_finetune_resume_reproduces_the_uninterrupted_run(tmp_path):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    cfg.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=3))
    exp_root = str(tmp_path / "exp")
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "full", "--experiment_root", exp_root)
    # stopped after 2 of 3 epochs: the schedule stays the 3-epoch one (set explicitly, else it follows max_epoch)
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "split", "--experiment_root", exp_root, "--opts",
             "max_epoch=2", "scheduler.kwargs.epochs=3")
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "split", "--experiment_root", exp_root, "--resume",
             "--opts", "max_epoch=3")
    full = load_checkpoint_file(f"{exp_root}/tiny_ft/full/ckpt-last.pth")
    split = load_checkpoint_file(f"{exp_root}/tiny_ft/split/ckpt-last.pth")
    assert full["epoch"] == split["epoch"] == 2 and full["metrics"] == split["metrics"]
    assert full["best_metrics"] == split["best_metrics"]
    for key, value in full["base_model"].items():
        assert torch.equal(value, split["base_model"][key]), key
    # metrics.jsonl: epochs 0, 1, 2 once each, the resumed run's lines equal to the uninterrupted run's
    full_lines, split_lines = (metrics_lines(f"{exp_root}/tiny_ft/{name}") for name in ("full", "split"))
    assert [line["epoch"] for line in split_lines] == [0, 1, 2]
    assert figures(split_lines) == figures(full_lines)
    logged = re.findall(r"\[Validation\] EPOCH: (\d+) acc = (\S+)", next((tmp_path / "exp" / "tiny_ft" / "full").glob("*.log")).read_text())
    assert [(line["epoch"], f"{line['acc']:.6g}") for line in full_lines] == [(int(e), acc) for e, acc in logged]
    assert {"train_loss", "train_acc", "lr", "epoch_time_s", "wall_time"} <= set(full_lines[-1])


def metrics_lines(run_dir) -> list:
    with open(f"{run_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def figures(lines: list) -> list:
    """The lines without their timings (which differ between runs)."""
    return [{k: v for k, v in line.items() if k not in ("epoch_time_s", "wall_time")} for line in lines]


# ------------------------------------------------------------------------------------ few-shot
TINY_FEWSHOT = """
optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
scheduler: {{type: CosLR, kwargs: {{epochs: 1, initial_epochs: 0}}}}
dataset: {{
  train: {{_base_: cfgs/dataset_configs/ModelNet40FewShot.yaml, others: {{subset: train, DATA_PATH: {root}}}}},
  val: {{_base_: cfgs/dataset_configs/ModelNet40FewShot.yaml, others: {{subset: test, DATA_PATH: {root}}}}}}}
model: {{NAME: PointTransformer, trans_dim: 16, depth: 1, drop_path_rate: 0.0, cls_dim: 40, num_heads: 2,
        group_size: 8, num_group: 8, encoder_dims: 16}}
npoints: 64
total_bs: 10
max_epoch: 1
grad_norm_clip: 10
"""


def write_fewshot_folds(root, folds=(0, 1)):
    rng = np.random.default_rng(2)
    (root / "5way_10shot").mkdir(parents=True)
    for fold in folds:
        split = {name: [(rng.normal(size=(80, 6)).astype(np.float32), k, 3 * k + fold) for k in range(5) for _ in range(n)]
                 for name, n in (("train", 10), ("test", 20))}
        with open(root / "5way_10shot" / f"{fold}.pkl", "wb") as f:
            pickle.dump(split, f)


FEWSHOT_ARGS = ("--way", "5", "--shot", "10", "--exp_name", "fs", "--scratch_model", "--num_workers", "0", "--device", "cpu")


def test_fewshot_all_folds_from_scratch(tmp_path):
    """No --folds: the folds on disk (2 here; the default used to be 10), then the summary file."""
    from tools import fewshot_all

    write_fewshot_folds(tmp_path / "fs")
    cfg = tmp_path / "tiny_fs.yaml"
    cfg.write_text(TINY_FEWSHOT.format(root=tmp_path / "fs"))
    exp_root = tmp_path / "exp"
    mean, std, accs = fewshot_all.main(["--config", str(cfg), "--experiment_root", str(exp_root), *FEWSHOT_ARGS])
    assert len(accs) == 2 and mean == pytest.approx(np.mean(accs)) and std == pytest.approx(np.std(accs))
    for fold, acc in zip((0, 1), accs):
        exp = exp_root / "tiny_fs" / f"fs_5w10s_fold{fold}"
        log = next(exp.glob("*.log")).read_text()
        assert "Training from scratch" in log
        assert load_checkpoint_file(str(exp / "ckpt-best.pth"))["best_metrics"]["acc"] == acc
        lines = metrics_lines(exp)  # epochs 0 .. max_epoch (released count), validated after epoch 1 only
        assert [line["epoch"] for line in lines] == [0, 1] and "acc" not in lines[0] and lines[1]["acc"] == acc
        assert round(acc) == pytest.approx(acc, abs=1e-3)  # k / 100 test shapes
    summary = json.loads((exp_root / "tiny_fs" / "fs_5w10s_summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["failed"] == {} and summary["completed"] == 2
    assert summary["accuracy"] == {"0": accs[0], "1": accs[1]} and summary["mean"] == mean and summary["std"] == std


def test_fewshot_all_goes_on_past_a_corrupt_fold(tmp_path, capsys):
    from tools import fewshot_all

    write_fewshot_folds(tmp_path / "fs", folds=(1,))
    (tmp_path / "fs" / "5way_10shot" / "0.pkl").write_bytes(b"\x80\x04 truncated pickle")
    (tmp_path / "fs" / "5way_10shot" / "notes.txt").write_text("not a fold")
    cfg = tmp_path / "tiny_fs.yaml"
    cfg.write_text(TINY_FEWSHOT.format(root=tmp_path / "fs"))
    exp_root = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        fewshot_all.main(["--config", str(cfg), "--experiment_root", str(exp_root), *FEWSHOT_ARGS])
    assert exit_info.value.code not in (0, None) and "1 of 2 folds failed (0)" in str(exit_info.value.code)
    summary = json.loads((exp_root / "tiny_fs" / "fs_5w10s_summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["completed"] == 1 and list(summary["failed"]) == ["0"]
    assert "0.pkl" in summary["failed"]["0"]  # the error names the fold file
    assert list(summary["accuracy"]) == ["1"] and summary["mean"] == summary["accuracy"]["1"] and summary["std"] == 0.0
    out = capsys.readouterr().out
    assert "fold 0 FAILED" in out and "fold 0 failed: " in out
    assert (exp_root / "tiny_fs" / "fs_5w10s_fold1" / "ckpt-last.pth").is_file()  # the fold after the failure ran
