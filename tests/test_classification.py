"""Downstream classification: loaders on released formats, cache FPS, voting, few-shot, checkpoint
mapping, SVM and a fine-tuning run through main.py. Test data is written here in the released
formats (pickle / HDF5 / text), independently of the project's generators."""
from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from easydict import EasyDict

import main as main_module
from conftest import REPO  # noqa: F401  (puts the repository on sys.path)
from datasets import build_dataset_from_cfg
from datasets.common import DatasetFormatError
from models.Inter_MAE import Inter_MAE, Point_MAE
from models.PointTransformer import PointTransformer
from tools import runner_finetune
from tools.fewshot_all import summarize
from tools.svm import fit_linear_svm
from utils.checkpoint import CheckpointError, load_checkpoint_file

CLASSES40 = [f"class{i:02d}_x" if i % 7 == 0 else f"cls{i:02d}" for i in range(40)]


# ------------------------------------------------------------------------------------ writers
def numpy_fps(xyz: np.ndarray, npoint: int, start: int = 0) -> np.ndarray:
    """Brute-force farthest point sampling (indices), as the released numpy loop, fixed start."""
    dist = np.full(xyz.shape[0], 1e10)
    out = np.zeros(npoint, dtype=np.int64)
    far = start
    for i in range(npoint):
        out[i] = far
        dist = np.minimum(dist, ((xyz - xyz[far]) ** 2).sum(-1))
        far = int(np.argmax(dist))
    return out


def write_modelnet(root: Path, ids_per_split=(("train", 6), ("test", 4)), n_rows: int = 120, cache_points: int = 0,
                   num_category: int = 40, seed: int = 0) -> dict:
    """modelnet40_normal_resampled layout; with ``cache_points`` also the released .dat caches
    (FPS from index 0). Returns {split: (list of (rows (n_rows, 6)), labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = CLASSES40[:num_category]
    (root / f"modelnet{num_category}_shape_names.txt").write_text("\n".join(names) + "\n")
    out = {}
    for split, n in ids_per_split:
        ids, rows_all, labels = [], [], []
        for i in range(n):
            label = (3 * i + (split == "test")) % num_category
            shape_id = f"{names[label]}_{i + (1000 if split == 'test' else 1):04d}"
            rows = rng.normal(size=(n_rows, 6)).astype(np.float32) * np.float32(1 + label)
            (root / names[label]).mkdir(exist_ok=True)
            np.savetxt(root / names[label] / f"{shape_id}.txt", rows, fmt="%.6f", delimiter=",")
            rows = np.loadtxt(root / names[label] / f"{shape_id}.txt", delimiter=",").astype(np.float32)
            ids.append(shape_id)
            rows_all.append(rows)
            labels.append(label)
        (root / f"modelnet{num_category}_{split}.txt").write_text("\n".join(ids) + "\n")
        if cache_points:
            pts = [r[numpy_fps(r[:, :3], cache_points)] for r in rows_all]
            lab = [np.array([l], dtype=np.int32) for l in labels]
            with open(root / f"modelnet{num_category}_{split}_{cache_points}pts_fps.dat", "wb") as f:
                pickle.dump([pts, lab], f)
            out[split] = (pts, labels)
        else:
            out[split] = (rows_all, labels)
    return out


def unit_sphere(xyz: np.ndarray) -> np.ndarray:
    c = xyz - xyz.mean(0)
    return c / np.sqrt((c ** 2).sum(1)).max()


def modelnet_cfg(root: Path, subset: str, n_points: int, normals: bool = False, num_category: int = 40) -> EasyDict:
    return EasyDict(NAME="ModelNet", DATA_PATH=str(root), N_POINTS=n_points, NUM_CATEGORY=num_category,
                    USE_NORMALS=normals, subset=subset)


# ------------------------------------------------------------------------------------ loaders
@pytest.mark.parametrize("num_category", [40, 10])
def test_modelnet_reads_released_cache(tmp_path, num_category):
    data = write_modelnet(tmp_path / "mn", cache_points=48, num_category=num_category)
    for subset, size in (("train", 6), ("test", 4)):
        ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", subset, 48, normals=True, num_category=num_category))
        assert len(ds) == size
        pts_ref, labels = data[subset]
        for i in range(size):
            tax, model_id, (points, label) = ds[i]
            assert (tax, model_id) == ("ModelNet", "sample")
            assert points.dtype == torch.float32 and points.shape == (48, 6) and label == labels[i]
            expected = np.concatenate([unit_sphere(pts_ref[i][:, :3]), pts_ref[i][:, 3:]], axis=1)
            got = points.numpy()
            if subset == "train":  # point order shuffled, rows kept
                got, expected = got[np.lexsort(got.T)], expected[np.lexsort(expected.T)]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 48, normals=False, num_category=num_category))
    assert ds[0][2][0].shape == (48, 3)
    wrong = tmp_path / "mn" / f"modelnet{num_category}_test_32pts_fps.dat"  # holds 48-point shapes
    wrong.write_bytes((tmp_path / "mn" / f"modelnet{num_category}_test_48pts_fps.dat").read_bytes())
    with pytest.raises(DatasetFormatError, match=r"_test_32pts_fps.dat': expected \(32, 6\)"):
        build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 32, num_category=num_category))


def test_modelnet_builds_cache_with_fps_matching_numpy(tmp_path):
    pytest.importorskip("datasets.modelnet_cache", reason="the cache builder (datasets/modelnet_cache.py) is not in the tree")
    data = write_modelnet(tmp_path / "mn", ids_per_split=(("test", 3),), n_rows=150)
    ds = build_dataset_from_cfg(modelnet_cfg(tmp_path / "mn", "test", 40, normals=True))
    with open(tmp_path / "mn" / "modelnet40_test_40pts_fps.dat", "rb") as f:
        pts, labels = pickle.load(f)
    rows, gt = data["test"]
    assert len(ds) == len(pts) == 3
    for i in range(3):
        assert pts[i].dtype == np.float32 and pts[i].shape == (40, 6)
        assert labels[i].dtype == np.int32 and labels[i].shape == (1,) and labels[i][0] == gt[i]
        np.testing.assert_array_equal(pts[i], rows[i][numpy_fps(rows[i][:, :3].astype(np.float64), 40)])


def test_fewshot_loader_split_counts(tmp_path):
    rng = np.random.default_rng(0)
    way, shot = 5, 10
    split = {"train": [], "test": []}
    for name, per_class in (("train", shot), ("test", 20)):
        for k in range(way):
            for _ in range(per_class):
                split[name].append((rng.normal(size=(64, 6)).astype(np.float32), k, 7 * k))
    (tmp_path / f"{way}way_{shot}shot").mkdir()
    with open(tmp_path / f"{way}way_{shot}shot" / "3.pkl", "wb") as f:
        pickle.dump(split, f)
    base = dict(NAME="ModelNetFewShot", DATA_PATH=str(tmp_path), N_POINTS=64, NUM_CATEGORY=40, USE_NORMALS=False)
    for subset, size in (("train", way * shot), ("test", way * 20)):
        ds = build_dataset_from_cfg(EasyDict(base, subset=subset, way=way, shot=shot, fold=3))
        assert len(ds) == size
        labels = [ds[i][2][1] for i in range(size)]
        assert sorted(set(labels)) == list(range(way)) and all(labels.count(k) == size // way for k in range(way))
        points = ds[0][2][0]
        assert points.shape == (64, 3) and points.dtype == torch.float32
        assert np.isclose(np.sqrt((points.numpy() ** 2).sum(1)).max(), 1.0, atol=1e-5)
    with pytest.raises(DatasetFormatError, match="--way"):
        build_dataset_from_cfg(EasyDict(base, subset="train"))


@pytest.mark.parametrize("name,suffix", [("ScanObjectNN", ""), ("ScanObjectNN_hardest", "_augmentedrot_scale75")])
def test_scanobjectnn_reads_h5(tmp_path, name, suffix):
    rng = np.random.default_rng(1)
    ref = {}
    for prefix, n in (("training", 7), ("test", 3)):
        data = rng.normal(size=(n, 2048, 3)).astype(np.float32)
        label = rng.integers(0, 15, size=n).astype(np.int64)
        with h5py.File(tmp_path / f"{prefix}_objectdataset{suffix}.h5", "w") as h5:
            h5["data"], h5["label"], h5["mask"] = data, label, np.zeros((n, 2048), dtype=np.int64)
        ref[prefix] = (data, label)
    for subset, prefix in (("train", "training"), ("test", "test")):
        ds = build_dataset_from_cfg(EasyDict(NAME=name, ROOT=str(tmp_path), subset=subset))
        data, label = ref[prefix]
        assert len(ds) == len(label)
        for i in range(len(ds)):
            tax, _, (points, lab) = ds[i]
            assert tax == "ScanObjectNN" and points.shape == (2048, 3) and points.dtype == torch.float32
            assert lab == label[i]
            got = points.numpy()
            if subset == "train":
                got, exp = got[np.lexsort(got.T)], data[i][np.lexsort(data[i].T)]
            else:
                exp = data[i]
            np.testing.assert_array_equal(got, exp)
    with pytest.raises(DatasetFormatError, match="objectdataset"):
        build_dataset_from_cfg(EasyDict(NAME=name, ROOT=str(tmp_path / "nowhere"), subset="test"))


# ------------------------------------------------------------------------ sampling and voting
def _row_index(sub: np.ndarray, full: np.ndarray) -> np.ndarray:
    d = ((sub[:, None, :] - full[None, :, :]) ** 2).sum(-1)
    assert np.allclose(d.min(1), 0)
    return d.argmin(1)


def test_training_subset_is_drawn_from_the_fps_set():
    torch.manual_seed(0)
    np.random.seed(0)
    pts = torch.randn(2, 300, 3)
    sub = runner_finetune.fps_then_subset(pts, 128)  # FPS to 128 * 75 / 64 = 150, then 128 of them
    assert sub.shape == (2, 128, 3)
    for b in range(2):
        fps_set = set(numpy_fps(pts[b].double().numpy(), 150).tolist())
        idx = _row_index(sub[b].numpy(), pts[b].numpy())
        assert len(set(idx.tolist())) == 128 and set(idx.tolist()) <= fps_set


def test_voting_averages_logits_of_subsets_of_the_fps_set():
    np.random.seed(0)
    pts = torch.randn(3, 200, 3)
    seen = []

    def stub_model(x):  # logits = [mean x, mean y, mean z, pass index]
        seen.append(x.clone())
        return torch.cat([x.mean(1), torch.full((x.shape[0], 1), float(len(seen) - 1))], dim=1)

    logits = runner_finetune.vote_logits(stub_model, pts, npoints=64, times=10, transform=lambda x: x * 2.0)
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


# ---------------------------------------------------------------------------- checkpoint mapping
TINY_TC = dict(mask_ratio=0.5, mask_type="rand", trans_dim=32, encoder_dims=32, depth=2, drop_path_rate=0.1,
               num_heads=2, decoder_depth=1, decoder_num_heads=2)


def tiny_classifier(patch_embed: str) -> PointTransformer:
    return PointTransformer(EasyDict(NAME="PointTransformer", trans_dim=32, depth=2, drop_path_rate=0.1, cls_dim=5,
                                     num_heads=2, group_size=8, num_group=8, encoder_dims=32, patch_embed=patch_embed))


@pytest.mark.parametrize("cls,kind,marker", [(Inter_MAE, "inter_mae", "encoder.first_trans.q_conv.weight"),
                                             (Point_MAE, "point_mae", "encoder.first_conv.0.bias")])
def test_pretrain_checkpoint_maps_into_classifier(tmp_path, cls, kind, marker):
    extra = {"decoder_embed_dim": 16} if cls is Inter_MAE else {}
    pre = cls(EasyDict(NAME=cls.__name__, group_size=8, num_group=8, loss="cdl2",
                       transformer_config=EasyDict(TINY_TC, **extra)))
    state = {f"module.{k}": v for k, v in pre.state_dict().items()}  # as written by DDP
    torch.save({"base_model": state, "epoch": 3}, tmp_path / "pre.pth")
    model = tiny_classifier(kind)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("cls_head_finetune.")}
    report = model.load_model_from_ckpt(str(tmp_path / "pre.pth"))
    own = model.state_dict()
    enc = {k[len("MAE_encoder."):]: v for k, v in pre.state_dict().items() if k.startswith("MAE_encoder.")}
    assert marker in enc and set(enc) == set(report.loaded)
    for k, v in enc.items():
        assert torch.equal(own[k], v), k
    for k, v in head_before.items():
        assert torch.equal(own[k], v), k
    other = "point_mae" if kind == "inter_mae" else "inter_mae"
    with pytest.raises(CheckpointError, match=f"'{kind}' patch embedding"):
        tiny_classifier(other).load_model_from_ckpt(str(tmp_path / "pre.pth"))


# ----------------------------------------------------------------------------------- SVM, stats
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


# ------------------------------------------------------------------------- runs through main.py
TINY_FINETUNE = """
optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
scheduler: {{type: CosLR, kwargs: {{epochs: {epochs}, initial_epochs: 1}}}}
dataset: {{
  train: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: train, DATA_PATH: {root}, N_POINTS: 96}}}},
  val: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: test, DATA_PATH: {root}, N_POINTS: 96}}}},
  test: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: test, DATA_PATH: {root}, N_POINTS: 96}}}}}}
model: {{NAME: PointTransformer, trans_dim: 32, depth: 2, drop_path_rate: 0.1, cls_dim: 40, num_heads: 2,
        group_size: 8, num_group: 8, encoder_dims: 32, patch_embed: inter_mae}}
npoints: 64
total_bs: 4
step_per_update: 1
max_epoch: {epochs}
grad_norm_clip: 10
"""


def run_main(*argv: str) -> None:
    main_module.main([*argv, "--num_workers", "0", "--device", "cpu"])


def test_finetune_then_test_with_vote_through_main(tmp_path):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    cfg.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=2))
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
    assert f"[PointTransformer] from {tmp_path / 'pre.pth'}: loaded {n_encoder} tensors" in ft_log
    assert list((exp_root / "tiny_ft" / "TFBoard" / "ft" / "test").glob("events.*"))

    run_main("--config", str(cfg), "--test", "--vote", "--ckpts", str(exp / "ckpt-best.pth"), "--exp_name", "ft",
             "--experiment_root", str(exp_root))
    log = next((exp_root / "tiny_ft" / "test_ft").glob("*.log")).read_text()
    plain = float(log.split("[TEST] plain accuracy")[1].split("=")[1].split("%")[0])
    vote = float(log.split("[TEST_VOTE] voting accuracy")[1].split(") =")[1].split("%")[0])
    # the test set is the validation set: the plain test accuracy reproduces ckpt-best's.
    assert plain == pytest.approx(best["best_metrics"]["acc"], abs=1e-3)
    assert 0.0 <= vote <= 100.0 and round(vote * 6 / 100) == pytest.approx(vote * 6 / 100, abs=1e-4)


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


def test_fewshot_all_folds_from_scratch(tmp_path):
    from tools import fewshot_all

    rng = np.random.default_rng(2)
    (tmp_path / "fs" / "5way_10shot").mkdir(parents=True)
    for fold in (0, 1):
        split = {name: [(rng.normal(size=(80, 6)).astype(np.float32), k, 3 * k + fold) for k in range(5) for _ in range(n)]
                 for name, n in (("train", 10), ("test", 20))}
        with open(tmp_path / "fs" / "5way_10shot" / f"{fold}.pkl", "wb") as f:
            pickle.dump(split, f)
    cfg = tmp_path / "tiny_fs.yaml"
    cfg.write_text(TINY_FEWSHOT.format(root=tmp_path / "fs"))
    exp_root = tmp_path / "exp"
    mean, std, accs = fewshot_all.main(["--config", str(cfg), "--way", "5", "--shot", "10", "--folds", "0", "1",
                                        "--exp_name", "fs", "--experiment_root", str(exp_root), "--scratch_model",
                                        "--num_workers", "0", "--device", "cpu"])
    assert len(accs) == 2 and mean == pytest.approx(np.mean(accs)) and std == pytest.approx(np.std(accs))
    for fold, acc in zip((0, 1), accs):
        exp = exp_root / "tiny_fs" / f"fs_5w10s_fold{fold}"
        log = next(exp.glob("*.log")).read_text()
        assert "Training from scratch" in log
        assert load_checkpoint_file(str(exp / "ckpt-best.pth"))["best_metrics"]["acc"] == acc
        assert round(acc) == pytest.approx(acc, abs=1e-3)  # k / 100 test shapes


def test_svm_validation_during_pretraining_and_cli(tmp_path, shapenet55_root):
    from sklearn.svm import LinearSVC

    from conftest import write_tiny_pretrain_config
    from tools import svm as svm_tool

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
    model = Inter_MAE(_tiny_pretrain_model_cfg(cfg))
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


def _tiny_pretrain_model_cfg(cfg_path: Path):
    from utils.config import cfg_from_yaml_file

    return cfg_from_yaml_file(str(cfg_path)).model


def test_finetune_resume_reproduces_the_uninterrupted_run(tmp_path):
    write_modelnet(tmp_path / "mn", ids_per_split=(("train", 8), ("test", 6)), n_rows=130, cache_points=96)
    cfg = tmp_path / "tiny_ft.yaml"
    cfg.write_text(TINY_FINETUNE.format(root=tmp_path / "mn", epochs=3))
    exp_root = str(tmp_path / "exp")
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "full", "--experiment_root", exp_root)
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "split", "--experiment_root", exp_root, "--opts", "max_epoch=2")
    run_main("--config", str(cfg), "--scratch_model", "--exp_name", "split", "--experiment_root", exp_root, "--resume",
             "--opts", "max_epoch=3")
    full = load_checkpoint_file(f"{exp_root}/tiny_ft/full/ckpt-last.pth")
    split = load_checkpoint_file(f"{exp_root}/tiny_ft/split/ckpt-last.pth")
    assert full["epoch"] == split["epoch"] == 2 and full["metrics"] == split["metrics"]
    assert full["best_metrics"] == split["best_metrics"]
    for key, value in full["base_model"].items():
        assert torch.equal(value, split["base_model"][key]), key


def test_fewshot_generator_split_counts_read_by_the_loader(tmp_path):
    make_fewshot = pytest.importorskip("tools.make_fewshot", reason="tools/make_fewshot.py is not in the tree")
    rng = np.random.default_rng(3)
    n_cls = 12
    tr_lab = [np.array([c], np.int32) for c in range(n_cls) for _ in range(25)]
    te_lab = [np.array([c], np.int32) for c in range(n_cls) for _ in range(22)]
    tr_pts = [rng.normal(size=(32, 6)).astype(np.float32) + float(l[0]) for l in tr_lab]
    te_pts = [rng.normal(size=(32, 6)).astype(np.float32) + float(l[0]) for l in te_lab]
    make_fewshot.make_fewshot_splits(tr_pts, tr_lab, te_pts, te_lab, str(tmp_path), ways=(5, 10), shots=(10, 20),
                                     folds=2, seed=0)
    for way in (5, 10):
        for shot in (10, 20):
            for fold in (0, 1):
                with open(tmp_path / f"{way}way_{shot}shot" / f"{fold}.pkl", "rb") as f:
                    split = pickle.load(f)
                for name, per_class in (("train", shot), ("test", 20)):
                    items = split[name]
                    assert len(items) == way * per_class
                    labels = [it[1] for it in items]
                    assert all(labels.count(k) == per_class for k in range(way))
                    orig = {it[1]: it[2] for it in items}
                    assert len(set(orig.values())) == way  # distinct original classes
                    for pts, label, cls in items:  # a point cloud of the stated original class
                        assert pts.dtype == np.float32 and pts.shape == (32, 6) and orig[label] == cls
                        assert abs(float(pts.mean()) - cls) < 1.0
                ds = build_dataset_from_cfg(EasyDict(NAME="ModelNetFewShot", DATA_PATH=str(tmp_path), N_POINTS=32,
                                                     NUM_CATEGORY=40, USE_NORMALS=True, subset="train", way=way,
                                                     shot=shot, fold=fold))
                assert len(ds) == way * shot and ds[0][2][0].shape == (32, 6)
