"""Image branch: view loading, NT-Xent, gradients, frozen/cached paths, projections, faithful mode."""
import math

import numpy as np
import pytest
import torch
from easydict import EasyDict
from PIL import Image

from datasets import build_dataset_from_cfg
from datasets.io import write_ply
from engine.pretrain import unpack_batch
from models import build_model_from_cfg
from models.image_encoder import ImageBranch, nt_xent
from tools.cache_image_features import cache_features
from writers import write_shapenet55

TINY_VIT = dict(model="vit_tiny_patch16_224", model_kwargs=dict(img_size=32, depth=1, embed_dim=48, num_heads=2))


def write_render_shape(root, synset="90000001", model="abc123", n_points=2100):
    """One shape in the ShapeNetRender layout; view v is opaque red with a transparent corner and
    a green pixel value v in the centre (so views can be told apart)."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(n_points, 3))
    (root / "ShapeNet" / synset).mkdir(parents=True, exist_ok=True)
    write_ply(str(root / "ShapeNet" / synset / f"{model}.ply"), (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32))
    folder = root / "ShapeNetRendering" / synset / model / "rendering"
    folder.mkdir(parents=True)
    for v in range(24):
        rgba = np.zeros((137, 137, 4), dtype=np.uint8)
        rgba[..., 0] = 255
        rgba[..., 3] = 255
        rgba[:10, :10, 3] = 0  # transparent corner (its RGB is black)
        rgba[60:77, 60:77, 1] = 10 * v
        Image.fromarray(rgba, "RGBA").save(folder / f"{v:02d}.png")
    (folder / "renderings.txt").write_text("".join(f"{v:02d}.png\n" for v in range(24)))


def render_dataset(root, **others):
    base = EasyDict(NAME="ShapeNetRender", DATA_PATH=str(root), N_POINTS=2048)
    return build_dataset_from_cfg(base, dict(subset="train", npoints=1024, **others))


def test_rendered_views_shapes_dtypes_and_rgba_on_white(tmp_path):
    write_render_shape(tmp_path)
    np.random.seed(0)
    _, _, data = render_dataset(tmp_path, n_imgs=2, IMG_SIZE=137)[0]
    imgs = data["imgs"]
    assert imgs.shape == (2, 3, 137, 137) and imgs.dtype == torch.float32
    assert data["points"].shape == (1024, 3)
    assert torch.equal(imgs[:, :, 0, 0], torch.ones(2, 3))  # alpha 0 -> white, whatever the RGB
    assert torch.allclose(imgs[:, :, 100, 100], torch.tensor([1.0, 0.0, 0.0]).expand(2, 3))
    greens = sorted(round(g * 255 / 10) for g in imgs[:, 1, 68, 68].tolist())
    assert len(set(greens)) == 2 and all(0 <= g < 24 for g in greens)  # two distinct views
    _, _, resized = render_dataset(tmp_path, n_imgs=1)[0]
    assert resized["imgs"].shape == (1, 3, 224, 224)
    assert 0.0 <= resized["imgs"].min() and resized["imgs"].max() <= 1.0
    # batches are tensors, so they move to the device like any tensor
    batch = torch.utils.data.default_collate([render_dataset(tmp_path, n_imgs=3, IMG_SIZE=32)[0]] * 2)
    points, views = unpack_batch(batch[2], torch.device("cpu"))
    assert points.shape == (2, 1024, 3) and views.shape == (2, 3, 3, 32, 32)


def test_nt_xent_matches_hand_computation():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    z = np.concatenate([a, b])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = {j: z[i] @ z[j] / 0.1 for j in range(6) if j != i}
        total += -logits[positive] + math.log(sum(math.exp(v) for v in logits.values()))
    expected = total / 6
    got = nt_xent(torch.tensor(a), torch.tensor(b), temperature=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def branch_model_cfg(**branch):
    return EasyDict(NAME="Inter_MAE", group_size=8, num_group=16, loss="cdl2", transformer_config=dict(
        mask_ratio=0.6, mask_type="rand", trans_dim=32, encoder_dims=32, depth=1, drop_path_rate=0.0, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2), image_branch=dict(TINY_VIT, **branch))


@pytest.mark.parametrize("trainable", [True, False])
def test_gradients_reach_inv_head_and_only_a_trainable_encoder(trainable):
    torch.manual_seed(0)
    model = build_model_from_cfg(branch_model_cfg(trainable=trainable)).train()
    out = model(torch.rand(4, 128, 3), torch.rand(4, 2, 3, 32, 32))
    assert set(out) == {"loss", "loss_rec", "loss_con_raw", "loss_con_weighted"}
    assert out["loss"].item() == pytest.approx(out["loss_rec"].item() + out["loss_con_weighted"].item(), rel=1e-6)
    # the weighted term is the raw NT-Xent times the default weight 1e-4; the raw NT-Xent of 2 * 4
    # anchors lies near log(2 * 4 - 1) for unrelated embeddings
    assert out["loss_con_weighted"].item() == pytest.approx(1e-4 * out["loss_con_raw"].item(), rel=1e-6)
    assert 0.5 * math.log(7) < out["loss_con_raw"].item() < 2 * math.log(7)
    out["loss"].backward()
    branch = model.image_branch
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.inv_head.parameters())
    assert all(p.grad is not None for p in model.pro_head.parameters())
    enc_grads = [p.grad for p in branch.encoder.parameters()]
    if trainable:
        assert all(g is not None for g in enc_grads) and branch.encoder.training
    else:
        assert all(g is None for g in enc_grads) and not branch.encoder.training
        assert not any(p.requires_grad for p in branch.encoder.parameters())


@pytest.mark.parametrize("views", [None, "empty"])
def test_a_batch_without_views_keeps_the_branch_in_the_graph_with_zero_gradients(views):
    """No views (None, or V = 0): the contrastive losses are 0 and every trainable parameter of
    the branch and pro_head gets a zero gradient (not None), so DDP reduces the same set on every
    process; the reconstruction loss is the whole loss."""
    torch.manual_seed(0)
    model = build_model_from_cfg(branch_model_cfg()).train()
    imgs = None if views is None else torch.rand(4, 0, 3, 32, 32)
    out = model(torch.rand(4, 128, 3), imgs)
    assert set(out) == {"loss", "loss_rec", "loss_con_raw", "loss_con_weighted"}
    assert out["loss_con_raw"].item() == 0.0 and out["loss_con_weighted"].item() == 0.0
    assert out["loss"].item() == out["loss_rec"].item()
    out["loss"].backward()
    idle = list(model.image_branch.parameters()) + list(model.pro_head.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in idle)
    assert any(p.grad.any() for p in model.MAE_encoder.parameters())
    with torch.no_grad():
        assert model(torch.rand(4, 128, 3))["loss_con_weighted"].grad_fn is None


def test_checkpoint_carries_the_image_branch():
    model = build_model_from_cfg(branch_model_cfg())
    keys = model.state_dict().keys()
    assert any(k.startswith("image_branch.encoder.") for k in keys)
    assert any(k.startswith("image_branch.inv_head.") for k in keys)


def test_cached_features_give_the_uncached_loss(tmp_path):
    write_render_shape(tmp_path, model="s1")
    write_render_shape(tmp_path, model="s2")
    torch.manual_seed(0)
    weights = tmp_path / "vit.pth"
    torch.save(ImageBranch(**TINY_VIT).encoder.state_dict(), weights)
    branch = ImageBranch(**TINY_VIT, pretrained=str(weights), trainable=False).eval()
    cache = cache_features(branch, render_dataset(tmp_path, n_imgs=0, IMG_SIZE=64), str(tmp_path / "feats.npy"),
                           torch.device("cpu"))
    rendered = render_dataset(tmp_path, n_imgs=3, IMG_SIZE=64)
    cached = render_dataset(tmp_path, n_imgs=3, IMG_SIZE=64, IMG_SOURCE="cached", FEATURE_CACHE=cache)
    np.random.seed(5)
    batch_r = torch.utils.data.default_collate([rendered[i] for i in range(2)])
    np.random.seed(5)
    batch_c = torch.utils.data.default_collate([cached[i] for i in range(2)])
    assert torch.equal(batch_r[2]["points"], batch_c[2]["points"])
    assert batch_c[2]["img_feats"].shape == (2, 3, branch.num_features)
    point_feats = torch.randn(2, 256)
    loss_r = branch.loss(point_feats, batch_r[2]["imgs"])
    loss_c = branch.loss(point_feats, batch_c[2]["img_feats"])
    assert loss_c.item() == pytest.approx(loss_r.item(), rel=1e-5, abs=1e-9)


def test_projected_views_show_the_shape(tmp_path):
    root = write_shapenet55(tmp_path / "sn", n_train=1, n_test=1)
    base = EasyDict(NAME="ShapeNet", DATA_PATH=str(root / "ShapeNet-55"), PC_PATH=str(root / "shapenet_pc"), N_POINTS=8192)
    ds = build_dataset_from_cfg(base, dict(subset="train", npoints=4096, n_imgs=2, IMG_SOURCE="projected", IMG_SIZE=96))
    _, _, data = ds[0]
    imgs = data["imgs"]
    assert imgs.shape == (2, 3, 96, 96)
    covered = (imgs < 0.99).any(dim=1)  # non-white pixels
    assert covered.float().mean() > 0.05 and not covered[:, 0, 0].any()
    with pytest.raises(FileNotFoundError, match="IMG_SOURCE"):
        build_dataset_from_cfg(base, dict(subset="train", npoints=1024, n_imgs=1, IMG_SOURCE="rendered"))


def test_projection_of_a_sphere_is_a_disc():
    from datasets.views import project_views

    rng = np.random.default_rng(2)
    pts = rng.normal(size=(20000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    img = project_views(pts.astype(np.float32), [0], 128)[0]
    covered = (img < 0.99).any(dim=0).numpy()
    rows, cols = np.nonzero(covered)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - width) <= 2
    assert covered.sum() / (height * width) == pytest.approx(math.pi / 4, abs=0.05)


def test_faithful_mode_uses_a_fresh_untrained_encoder_every_step():
    branch = ImageBranch(**TINY_VIT, fresh_encoder_every_step=True)
    assert list(branch.parameters()) == []
    imgs = torch.rand(2, 1, 3, 32, 32)
    torch.manual_seed(0)
    first = branch(imgs)
    second = branch(imgs)
    assert first.shape == (2, 256) and not torch.allclose(first, second)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ImageBranch(**TINY_VIT, pretrained=str(tmp_path / "nope.pth"))
