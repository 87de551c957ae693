"""Features of users' own point clouds (engine/features.py, tools/extract_features.py): every file
format, both outputs, against the features computed by hand from the pre-training model
(unit sphere -> FPS -> MAE_encoder.patch_tokens -> [max, mean]); clear errors naming the file."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from easydict import EasyDict

from engine.features import PointCloudFileError, load_point_encoder, read_points
from extensions.pointops import fps
from models.Inter_MAE import Inter_MAE
from tools import export_weights, extract_features
from writers import TINY_TC, unit_sphere

NPOINTS = 96
REPO = Path(__file__).resolve().parent.parent


def write_ascii_ply(path, xyz: np.ndarray) -> None:
    """An ASCII PLY with an extra vertex property before x (written here, not with datasets.io)."""
    lines = ["ply", "format ascii 1.0", f"element vertex {len(xyz)}", "property float intensity",
             "property float x", "property float y", "property float z", "end_header"]
    lines += [f"0.5 {x:.9g} {y:.9g} {z:.9g}" for x, y, z in xyz]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny Inter_MAE pre-training run folder (ckpt-last.pth + config.yaml) and the model."""
    root = tmp_path_factory.mktemp("features")
    cfg = EasyDict(NAME="Inter_MAE", group_size=8, num_group=16, loss="cdl2",
                   transformer_config=EasyDict(TINY_TC, decoder_embed_dim=16))
    torch.manual_seed(0)
    model = Inter_MAE(cfg)
    with torch.no_grad():  # BatchNorm statistics away from their initial values: eval mode matters
        model.train()
        for _ in range(3):
            model.MAE_encoder.patch_tokens(torch.randn(4, 128, 3) * 2 + 1)
    model.eval()
    exp = root / "experiments" / "tiny" / "run"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": json.loads(json.dumps(cfg)), "npoints": 1024}))
    torch.save({"base_model": model.state_dict(), "epoch": 0}, exp / "ckpt-last.pth")
    return exp / "ckpt-last.pth", model


@pytest.fixture(scope="module")
def clouds(tmp_path_factory):
    """One cloud per format (different sizes, off-centre, scaled; text with 9 digits, exact for
    float32); {relative name: xyz float32}."""
    folder = tmp_path_factory.mktemp("clouds")
    rng = np.random.default_rng(4)
    made = {}

    def cloud(n):
        return (rng.normal(size=(n, 3)) * [3.0, 1.0, 0.5] + [5.0, -2.0, 1.0]).astype(np.float32)

    xyz = cloud(150)
    write_ascii_ply(folder / "a.ply", xyz)
    made["a.ply"] = xyz
    xyz = cloud(200)
    np.save(folder / "b.npy", np.concatenate([xyz, rng.normal(size=(200, 3)).astype(np.float32)], 1))
    made["b.npy"] = xyz
    xyz = cloud(120)
    np.savetxt(folder / "c.txt", np.concatenate([xyz, np.ones((120, 3))], 1), fmt="%.9g", delimiter=",")
    made["c.txt"] = xyz
    (folder / "sub").mkdir()
    xyz = cloud(NPOINTS)  # exactly npoints: no sampling
    np.savetxt(folder / "sub" / "d.xyz", xyz, fmt="%.9g")
    made["sub/d.xyz"] = xyz
    (folder / "notes.md").write_text("not a cloud")  # ignored: not a point-cloud extension
    return folder, made


def by_hand(model, xyz: np.ndarray) -> torch.Tensor:
    pts = torch.from_numpy(unit_sphere(xyz.astype(np.float64)).astype(np.float32))[None]
    if pts.shape[1] > NPOINTS:
        pts = fps(pts, NPOINTS)
    with torch.no_grad():
        tokens = model.MAE_encoder.patch_tokens(pts)[0]
    return torch.cat([tokens.max(0).values, tokens.mean(0)])


def test_files_in_every_format_to_npy_and_h5(run, clouds, tmp_path):
    ckpt, model = run
    folder, made = clouds
    out = tmp_path / "f.npy"
    feats, names = extract_features.main(["--ckpts", str(ckpt), "--input", str(folder), "--out", str(out),
                                          "--npoints", str(NPOINTS), "--batch_size", "3", "--device", "cpu",
                                          "--no_progress"])
    assert names == ["a.ply", "b.npy", "c.txt", "sub/d.xyz"]
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (4, 2 * TINY_TC["trans_dim"])
    assert json.loads((tmp_path / "f.json").read_text())["names"] == names
    for row, name in zip(saved, names):
        assert np.allclose(row, by_hand(model, made[name]).numpy(), atol=1e-5), name

    extract_features.main(["--ckpts", str(ckpt), "--input", str(folder / "sub" / "d.xyz"), str(folder / "a.ply"),
                           "--out", str(tmp_path / "g.h5"), "--npoints", str(NPOINTS), "--device", "cpu", "--no_progress"])
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert [n.decode() for n in f["names"][:]] == [str(folder / "sub" / "d.xyz"), str(folder / "a.ply")]
        assert np.allclose(f["features"][:], saved[[3, 0]], atol=1e-6)


def test_python_api_and_safetensors_export(run, clouds, tmp_path):
    ckpt, model = run
    _, made = clouds
    batch = torch.from_numpy(np.stack([made["b.npy"][:150], made["a.ply"]]))
    encoder = load_point_encoder(str(ckpt), device="cpu", npoints=NPOINTS)
    feats = encoder.extract(batch)
    assert feats.shape == (2, encoder.dim)
    reference = torch.stack([by_hand(model, x) for x in batch.numpy()])
    assert torch.allclose(feats, reference, atol=1e-5)
    out = tmp_path / "enc.safetensors"
    export_weights.main(["--ckpts", str(ckpt), "--encoder_only", "--out", str(out)])
    again = load_point_encoder(str(out), device="cpu", npoints=NPOINTS)  # config from enc.json
    assert torch.allclose(again(batch), feats, atol=1e-6)


def test_clear_errors_name_the_file(run, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ckpt, _ = run
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((NPOINTS - 1, 3), np.float32))
    encoder = load_point_encoder(str(ckpt), device="cpu", npoints=NPOINTS)
    with pytest.raises(PointCloudFileError, match=f"^1 bad file of 1: too small: {NPOINTS - 1} points, fewer than "
                                                  f"npoints = {NPOINTS} \\(1 file\\): {re.escape(str(small))};"):
        extract_features.main(["--ckpts", str(ckpt), "--input", str(small), "--out", str(tmp_path / "x.npy"),
                               "--npoints", str(NPOINTS), "--device", "cpu", "--no_progress"])
    for name, content in (("broken.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n"),
                          ("broken.npy", b"\x93NUMPY garbage"), ("words.txt", b"a b c\nd e f\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(PointCloudFileError, match=name):
            read_points(str(tmp_path / name))
    with pytest.raises(PointCloudFileError, match="x.foo: unknown extension .foo"):
        (tmp_path / "x.foo").write_text("v 0 0 0\n")
        read_points(str(tmp_path / "x.foo"))
    assert not (tmp_path / "x.npy").exists()
    # the command: one line naming the file, no traceback, non-zero status
    result = subprocess.run([sys.executable, str(REPO / "tools" / "extract_features.py"), "--ckpts", str(ckpt), "--input",
                             str(small), "--out", str(tmp_path / "y.npy"), "--npoints", str(NPOINTS), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "small.npy" in result.stderr and "Traceback" not in result.stderr
    del encoder


def test_segmentation_style_checkpoint_uses_its_model_args(run, clouds, tmp_path):
    """A checkpoint with the encoder at the top level and ``model_args`` (segmentation's) and no config."""
    ckpt, model = run
    _, made = clouds
    state = {k[len("MAE_encoder."):]: v for k, v in model.state_dict().items() if k.startswith("MAE_encoder.")}
    state["label_conv.0.weight"] = torch.zeros(4, 16, 1)
    args = {"trans_dim": TINY_TC["trans_dim"], "depth": TINY_TC["depth"], "num_heads": TINY_TC["num_heads"],
            "num_group": 16, "group_size": 8, "drop_path_rate": 0.1, "return_layers": [0, 1], "normal": False}
    torch.save({"base_model": state, "model_args": args}, tmp_path / "best_model.pth")
    feats = load_point_encoder(str(tmp_path / "best_model.pth"), device="cpu", npoints=NPOINTS).extract([made["c.txt"]])
    assert torch.allclose(feats[0], by_hand(model, made["c.txt"]), atol=1e-5)


def test_every_format_of_the_folder_datasets_npz_and_meshes(run, tmp_path):
    """.npz (its 'points' array) and meshes (.off / .obj / .stl, written by trimesh) are read as
    folder datasets and predict read them: a mesh gives 2048 seeded samples on its surface; the
    features are those of the points by hand. Other files under a folder are left out."""
    trimesh = pytest.importorskip("trimesh")
    ckpt, model = run
    rng = np.random.default_rng(5)
    xyz = (rng.normal(size=(130, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, -3.0]).astype(np.float32)
    np.savez(tmp_path / "a.npz", colour=np.zeros((130, 3)), points=xyz)
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    box.apply_translation([3.0, -1.0, 2.0])
    for ext in ("off", "obj", "stl"):
        box.export(str(tmp_path / f"box.{ext}"))
    (tmp_path / "readme.md").write_text("not a shape")
    out = tmp_path / "out" / "f.npy"
    feats, names = extract_features.main(["--ckpts", str(ckpt), "--input", str(tmp_path), "--out", str(out),
                                          "--npoints", str(NPOINTS), "--device", "cpu", "--no_progress",
                                          "--batch_size", "1"])  # one cloud per call, as by hand
    assert names == ["a.npz", "box.obj", "box.off", "box.stl"]
    assert np.allclose(feats[0], by_hand(model, xyz).numpy(), atol=1e-5)
    for row, name in zip(feats[1:], names[1:]):
        pts = read_points(str(tmp_path / name))
        assert pts.shape == (2048, 3), name
        # on the surface of the box: one coordinate on a face plane, the others within the faces
        local = np.abs(pts - [3.0, -1.0, 2.0]) / [1.0, 0.5, 0.25]
        assert np.all(local <= 1 + 1e-5) and np.all(np.isclose(local, 1.0, atol=1e-5).any(axis=1)), name
        np.testing.assert_array_equal(pts, read_points(str(tmp_path / name)))  # seeded by the file
        # (the command centres in float32, by hand in float64: coordinates differ by ~2e-7, which the
        # encoder's BatchNorm layers with small running variances amplify to ~2e-5 in features of size ~1)
        assert np.allclose(row, by_hand(model, pts).numpy(), atol=1e-4), name
