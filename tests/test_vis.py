"""main_vis.py, tools/tsne.py, tools/plot_curves.py: files, point counts, pictures, event parsing."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.io import read_ply
from models import build_model_from_cfg
from utils.checkpoint import atomic_save
from utils.config import ConfigError, cfg_from_yaml_file
from writers import write_tiny_pretrain_config

pytestmark = pytest.mark.filterwarnings("error::matplotlib.MatplotlibDeprecationWarning")

G, K, NPOINTS = 16, 16, 256  # the tiny pre-training config of writers.py


@pytest.fixture(scope="module")
def pretrain_setup(tmp_path_factory, shapenet55_root):
    """Tiny pre-training config and a checkpoint of a freshly built Inter-MAE."""
    tmp = tmp_path_factory.mktemp("vis")
    cfg_path = write_tiny_pretrain_config(tmp / "tiny_vis.yaml", shapenet55_root)
    torch.manual_seed(0)
    model = build_model_from_cfg(cfg_from_yaml_file(cfg_path).model)
    ckpt = tmp / "pretrain.pth"
    atomic_save({"base_model": model.state_dict(), "epoch": 0, "metrics": {}}, str(ckpt))
    return tmp, cfg_path, ckpt, model


def image_array(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def contains_rows(sub: np.ndarray, full: np.ndarray, tol: float = 1e-5) -> bool:
    """Every row of ``sub`` is (within tol) a row of ``full`` (brute force)."""
    d = np.abs(sub[:, None, :] - full[None, :, :]).max(-1)
    return bool((d.min(axis=1) < tol).all())


def test_main_vis_writes_clouds_with_expected_counts_and_a_picture(pretrain_setup, capfd):
    import main_vis

    tmp, cfg_path, ckpt, _ = pretrain_setup
    ratio = 0.75
    summary = main_vis.main(["--test", "--ckpts", str(ckpt), "--config", str(cfg_path), "--exp_name", "run",
                             "--experiment_root", str(tmp / "exp"), "--num_samples", "2", "--mask_ratio", str(ratio),
                             "--num_workers", "0", "--device", "cpu", "--seed", "3"])
    out_dir = tmp / "exp" / "tiny_vis" / "run" / "vis"
    assert [Path(f).parent for f in summary["folders"]] == [out_dir, out_dir]
    n_masked = int(ratio * G)
    expected = {"input": NPOINTS, "visible": (G - n_masked) * K, "reconstruction": G * K, "centers": G}
    for folder in summary["folders"]:
        clouds = {}
        for name, count in expected.items():
            ply = read_ply(os.path.join(folder, name + ".ply"))
            txt = np.loadtxt(os.path.join(folder, name + ".txt"), delimiter=";")
            assert ply.shape == txt.shape == (count, 3), name
            np.testing.assert_allclose(ply, txt, atol=2e-6)
            clouds[name] = ply
        mask = np.loadtxt(os.path.join(folder, "mask.txt"))
        assert mask.shape == (G,) and mask.sum() == n_masked
        # Visible patches and centres are input points; the reconstruction starts with the visible patches.
        assert contains_rows(clouds["visible"], clouds["input"])
        assert contains_rows(clouds["centers"], clouds["input"])
        np.testing.assert_array_equal(clouds["reconstruction"][: expected["visible"]], clouds["visible"])
        # Visible patch i is the patch of the i-th unmasked centre, which is one of its points.
        vis_centres = clouds["centers"][mask == 0]
        patches = clouds["visible"].reshape(-1, K, 3)
        for patch, centre in zip(patches, vis_centres):
            assert contains_rows(centre[None], patch)

        img = image_array(os.path.join(folder, "plot.png"))
        assert img.std() > 5.0
        thirds = np.array_split(img, 3, axis=1)
        assert all((t < 200).any(axis=-1).sum() > 50 for t in thirds), "a panel is empty"
    overview = image_array(summary["overview"])
    assert overview.shape[0] > 1.5 * image_array(os.path.join(summary["folders"][0], "plot.png")).shape[0]  # 2 rows
    assert overview.std() > 5.0
    assert "Reconstruction picture:" in capfd.readouterr().err


def test_main_vis_bad_checkpoint_path_is_a_clear_error(pretrain_setup, capfd):
    import main_vis

    tmp, cfg_path, _, _ = pretrain_setup
    missing = tmp / "no_such_dir" / "missing.pth"
    with pytest.raises(SystemExit) as exc:
        main_vis.main(["--ckpts", str(missing), "--config", str(cfg_path), "--exp_name", "bad",
                       "--out_dir", str(tmp / "bad_vis"), "--num_workers", "0", "--device", "cpu"])
    assert exc.value.code == 1
    err = capfd.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_mask_ratio_override_is_checked(pretrain_setup):
    from main_vis import set_mask_ratio

    config = cfg_from_yaml_file(pretrain_setup[1])
    set_mask_ratio(config, 0.5)
    assert config.model.transformer_config.mask_ratio == 0.5
    set_mask_ratio(config, 0.999)  # masks int(0.999 * 16) = 15 of 16: one patch stays visible
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="mask_ratio"):
            set_mask_ratio(config, bad)


# ------------------------------------------------------------------------------------- t-SNE
CLASSES = ["airplane", "bathtub", "bed"]
FT_CONFIG = """
optimizer: {{type: AdamW, kwargs: {{lr: 0.001, weight_decay: 0.05}}}}
dataset: {{test: {{_base_: cfgs/dataset_configs/ModelNet40.yaml, others: {{subset: test, DATA_PATH: {root}, N_POINTS: 256}}}}}}
model: {{NAME: PointTransformer, trans_dim: 32, depth: 2, drop_path_rate: 0.1, cls_dim: 40, num_heads: 2,
  group_size: 16, num_group: 16, encoder_dims: 32}}
npoints: 256
total_bs: 4
max_epoch: 1
"""


def write_modelnet_cache(root: Path, per_class: int = 4, seed: int = 0):
    """Released ModelNet40 test cache (pickle [list of (256, 6) float32, list of (1,) int32]) + lists."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES + [f"other{i}" for i in range(37)]) + "\n")
    points, labels, ids = [], [], []
    for i in range(per_class * len(CLASSES)):
        c = i % len(CLASSES)
        p = rng.normal(size=(NPOINTS, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        p *= np.array([1.0, 0.3 + 0.4 * c, 1.0 - 0.25 * c])
        points.append(np.concatenate([p, p], axis=1).astype(np.float32))
        labels.append(np.array([c], dtype=np.int32))
        ids.append(f"{CLASSES[c]}_{i:04d}")
    (root / "modelnet40_test.txt").write_text("\n".join(ids) + "\n")
    with open(root / f"modelnet40_test_{NPOINTS}pts_fps.dat", "wb") as f:
        pickle.dump([points, labels], f)
    return np.array([int(lbl[0]) for lbl in labels])


def normalised_cache_points(root: Path) -> np.ndarray:
    """xyz of the cache's shapes, centred and scaled into the unit sphere (ModelNet's pc_normalize)."""
    with open(root / f"modelnet40_test_{NPOINTS}pts_fps.dat", "rb") as f:
        pts = np.stack(pickle.load(f)[0])[:, :, :3].astype(np.float64)
    centred = pts - pts.mean(axis=1, keepdims=True)
    return (centred / np.linalg.norm(centred, axis=2).max(axis=1)[:, None, None]).astype(np.float32)


def test_tsne_of_pretrained_encoder_writes_png_and_features(pretrain_setup):
    from tools import tsne

    tmp, _, ckpt, pretrain_model = pretrain_setup
    labels = write_modelnet_cache(tmp / "modelnet")
    cfg = tmp / "ft.yaml"
    cfg.write_text(FT_CONFIG.format(root=tmp / "modelnet"))
    out = tmp / "tsne" / "tsne.png"
    res = tsne.main(["--config", str(cfg), "--ckpts", str(ckpt), "--out", str(out), "--max_samples", "100",
                     "--perplexity", "30", "--max_iter", "250", "--device", "cpu"])
    assert res["kind"] == "pretrain" and res["feature"] == "patch" and res["n"] == len(labels)
    assert res["perplexity"] < len(labels)
    assert image_array(out).std() > 5.0
    saved = np.load(tmp / "tsne" / "tsne.npz")
    np.testing.assert_array_equal(saved["labels"], labels)
    assert saved["embedding"].shape == (len(labels), 2) and np.isfinite(saved["embedding"]).all()

    # The features are those of the pre-training model's own encoder (all patches visible):
    # max ++ mean of its normalised patch outputs (models.backbone.max_mean_pool's order).
    pts = normalised_cache_points(tmp / "modelnet")
    pretrain_model.eval()
    with torch.no_grad():
        nb, center = pretrain_model.group_divider(torch.from_numpy(pts))
        x, _ = pretrain_model.MAE_encoder(nb, center, noaug=True)
    ref = torch.cat([x.amax(1), x.mean(1)], dim=-1).numpy()
    np.testing.assert_allclose(saved["features"], ref, rtol=1e-4, atol=1e-5)


def test_tsne_of_finetuned_classifier_uses_forward_features(pretrain_setup):
    from tools import tsne

    tmp = pretrain_setup[0]
    labels = write_modelnet_cache(tmp / "modelnet_ft", per_class=2)
    cfg = tmp / "ft_cls.yaml"
    cfg.write_text(FT_CONFIG.format(root=tmp / "modelnet_ft"))
    torch.manual_seed(1)
    classifier = build_model_from_cfg(cfg_from_yaml_file(cfg).model).eval()
    ckpt = tmp / "finetuned.pth"
    atomic_save({"base_model": classifier.state_dict(), "epoch": 3}, str(ckpt))
    res = tsne.main(["--config", str(cfg), "--ckpts", str(ckpt), "--out", str(tmp / "tsne_cls.png"),
                     "--max_iter", "250", "--device", "cpu"])
    assert res["kind"] == "finetune" and res["feature"] == "cls"
    saved = np.load(tmp / "tsne_cls.npz")
    pts = normalised_cache_points(tmp / "modelnet_ft")
    with torch.no_grad():
        ref = classifier.forward_features(torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(saved["features"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(saved["labels"], labels)


def test_knn_accuracy_matches_brute_force():
    from tools.tsne import knn_accuracy

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 5))
    labels = rng.integers(0, 3, size=30)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    correct = 0
    for i in range(30):
        sims = [(unit[i] @ unit[j], j) for j in range(30) if j != i]
        nearest = [j for _, j in sorted(sims, reverse=True)[:5]]
        votes = [labels[j] for j in nearest]
        counts = {c: votes.count(c) for c in set(votes)}
        top = max(counts.values())
        pred = next(v for v in votes if counts[v] == top)
        correct += pred == labels[i]
    assert knn_accuracy(feats, labels, k=5) == pytest.approx(100.0 * correct / 30)


def test_tsne_bad_checkpoint_path(tmp_path):
    from tools import tsne

    cfg = tmp_path / "ft.yaml"
    cfg.write_text(FT_CONFIG.format(root=tmp_path))
    with pytest.raises(SystemExit) as exc:
        tsne.main(["--config", str(cfg), "--ckpts", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "t.png")])
    assert str(tmp_path / "nope.pth") in str(exc.value.code) and "does not exist" in str(exc.value.code)


# ------------------------------------------------------------------------------ event files
def test_event_files_are_parsed_and_plotted(tmp_path):
    from tensorboardX import SummaryWriter

    from tools import plot_curves

    logdir = tmp_path / "experiments" / "cfg" / "TFBoard" / "run"
    train = SummaryWriter(str(logdir / "train"))
    test = SummaryWriter(str(logdir / "test"))
    losses = [1.0 / (i + 1) for i in range(40)]
    for i, v in enumerate(losses):
        train.add_scalar("Loss/Batch/loss", v, i)
        train.add_scalar("Loss/Batch/LR", 1e-3 * (i + 1) / 40, i)
    for epoch, acc in enumerate([10.0, 35.5, 61.25]):
        test.add_scalar("Metric/ACC", acc, epoch)
    train.close()
    test.close()
    resumed = SummaryWriter(str(logdir / "test"), filename_suffix=".resumed")
    resumed.add_scalar("Metric/ACC", 70.0, 2)  # epoch 2 written again after a resume
    resumed.close()

    scalars = plot_curves.load_run(str(logdir), check_data_crc=True)
    steps, values = scalars["train/Loss/Batch/loss"]
    np.testing.assert_array_equal(steps, np.arange(40))
    np.testing.assert_array_equal(values, np.float32(losses))
    np.testing.assert_array_equal(scalars["train/Loss/Batch/LR"][1], np.float32([1e-3 * (i + 1) / 40 for i in range(40)]))
    np.testing.assert_array_equal(scalars["test/Metric/ACC"][0], [0, 1, 2])
    np.testing.assert_array_equal(scalars["test/Metric/ACC"][1], [10.0, 35.5, 70.0])

    # The experiment folder is mapped to its TFBoard folder; the picture has three panels of content.
    out = plot_curves.main([str(tmp_path / "experiments" / "cfg" / "run"), "--out", str(tmp_path / "curves.png")])
    assert image_array(out).std() > 5.0

    # A truncated last record (writer killed) is dropped; a corrupt header is an error.
    (event_file,) = plot_curves.find_event_files(str(logdir / "train"))
    cut = tmp_path / "cut" / "events.out.tfevents.1"
    cut.parent.mkdir()
    data = Path(event_file).read_bytes()
    cut.write_bytes(data[:-5])
    assert len(plot_curves.load_run(str(cut.parent))["Loss/Batch/LR"][0]) == 39
    bad = bytearray(data)
    bad[8] ^= 0xFF  # first record's length checksum
    cut.write_bytes(bytes(bad))
    with pytest.raises(plot_curves.EventFileError, match="length checksum"):
        plot_curves.load_run(str(cut.parent))


def test_metrics_file_is_plotted_per_epoch(tmp_path):
    from engine.engine import append_metrics_line
    from tools import plot_curves

    for epoch, (loss, acc) in enumerate([(2.0, None), (1.5, 40.0), (1.25, 55.0)]):
        line = {"epoch": epoch, "train_loss": loss, "lr": 1e-3 / (epoch + 1), "epoch_time_s": 3.0, "wall_time": 1e9}
        append_metrics_line(str(tmp_path), {**line, **({} if acc is None else {"acc": acc})})
    scalars = plot_curves.load_metrics_file(str(tmp_path / "metrics.jsonl"))
    assert set(scalars) == {"metrics/train_loss", "metrics/lr", "metrics/epoch_time_s", "metrics/acc"}
    np.testing.assert_array_equal(scalars["metrics/train_loss"][0], [0, 1, 2])
    np.testing.assert_array_equal(scalars["metrics/train_loss"][1], [2.0, 1.5, 1.25])
    np.testing.assert_array_equal(scalars["metrics/acc"][0], [1, 2])
    assert [plot_curves.panel_of(t)[0] for t in ("metrics/train_loss", "metrics/lr", "metrics/acc")] == \
        ["Losses", "Learning rate", "Accuracy / metrics"]
    out = plot_curves.main([str(tmp_path / "metrics.jsonl"), "--out", str(tmp_path / "curves.png")])
    assert image_array(out).std() > 5.0


def test_masked_crc_reference_value():
    from tools.plot_curves import masked_crc32c

    crc = 0xE3069283  # CRC-32C of b"123456789" (the standard check value)
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected
