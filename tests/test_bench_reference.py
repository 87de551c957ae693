"""The released-model stand-in of the benchmarks (``bench/released_model.py``) computes what the
project's model computes, so ``bench/bench_train.py`` compares like with like: same parameter names,
same loss for the same weights, input and mask, and geometry stand-ins that agree with
``extensions.pointops`` / ``extensions.chamfer_dist``. Also the two arithmetics of the patch
embeddings (``models.layers.EMBED_COMPUTE_MODES``): ``exact`` is the straightforward computation,
``fast`` equals it to fp32 rounding."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import released_model as R  # noqa: E402
from engine import builder  # noqa: E402
from extensions.chamfer_dist import ChamferDistanceL2  # noqa: E402
from extensions.pointops import furthest_point_sample, knn_query  # noqa: E402
from models import layers  # noqa: E402
from models.layers import InterMAEPatchEmbed, PointMAEPatchEmbed  # noqa: E402
from utils.config import cfg_from_yaml_file  # noqa: E402


def released_config(drop_path_rate=None):
    cfg = copy.deepcopy(cfg_from_yaml_file(REPO / "cfgs" / "pretrain.yaml").model)
    cfg.pop("image_branch", None)
    if drop_path_rate is not None:
        cfg.transformer_config.drop_path_rate = drop_path_rate
    return cfg


@pytest.fixture(scope="module")
def pair():
    """The project's Inter_MAE (released sizes, point branch, no drop path so that training-mode
    forwards are deterministic) and the stand-in holding the same weights."""
    cfg = released_config(drop_path_rate=0.0)
    torch.manual_seed(0)
    ours = builder.model_builder(cfg)
    return ours, R.from_project_model(ours, cfg)


def test_parameter_names_and_shapes_are_the_projects():
    cfg = released_config()
    torch.manual_seed(0)
    ours = {k: v.shape for k, v in builder.model_builder(cfg).state_dict().items()}
    ref = {k: v.shape for k, v in R.Inter_MAE(cfg).state_dict().items()}
    assert ref == ours
    assert ref["MAE_encoder.encoder.first_conv.0.weight"] == (128, 3, 1)


def clouds(batch, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, n, 3, generator=g) * 2 - 1
    pts[:, 5] = 0.0  # a point at the origin: skipped by FPS after the first pick, in both
    return pts


def same_mask(batch, groups=64, ratio=0.6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, groups, generator=g).argsort(dim=1) < int(ratio * groups)


@pytest.mark.parametrize("train", [True, False])
def test_same_loss_and_gradients_for_the_same_weights_input_and_mask(pair, train):
    ours, ref = pair
    ours.train(train)
    ref.train(train)
    pts, mask = clouds(2), same_mask(2)
    for model in (ours, ref):
        model.zero_grad(set_to_none=True)
    loss_ours = ours(pts.clone(), mask=mask)["loss"]
    loss_ref, loss_fea = ref(pts.clone(), mask=mask)
    assert loss_fea == 0
    assert abs(loss_ours.item() - loss_ref.item()) <= 1e-5 * max(1.0, abs(loss_ref.item()))
    loss_ours.backward()
    loss_ref.backward()
    grads = dict(ref.named_parameters())
    for name, param in ours.named_parameters():
        other = grads[name].grad
        if param.grad is None:  # pro_head: no contrastive loss without images, in both
            assert other is None or not other.abs().sum() > 0, name
            continue
        scale = param.grad.abs().max().item()
        torch.testing.assert_close(other, param.grad, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=name)
    ours.train()
    ref.train()


def test_project_geometry_variant_gives_the_same_loss(pair):
    _, ref = pair
    swapped = R.with_project_geometry(copy.deepcopy(ref))
    pts, mask = clouds(2, seed=3), same_mask(2, seed=4)
    with torch.no_grad():
        a = ref(pts.clone(), mask=mask)[0]
        b = swapped(pts.clone(), mask=mask)[0]
    assert abs(a.item() - b.item()) <= 1e-5 * max(1.0, abs(a.item()))


def test_fps_stand_in_picks_what_the_project_picks():
    pts = clouds(4, n=512, seed=5)
    pts[1, :40] = 0.01  # a cluster of skipped points near the origin
    assert torch.equal(R.furthest_point_sample(pts, 64), furthest_point_sample(pts, 64, backend="torch"))


def test_knn_stand_in_returns_the_same_neighbours():
    pts = clouds(3, n=512, seed=6)
    centers = pts[:, :40].contiguous()
    dist, idx = R.knn(pts, centers, 16)
    ours = knn_query(16, pts, centers)
    assert torch.equal(idx.sort(-1).values, ours.sort(-1).values)
    assert torch.all(dist[..., 1:] >= dist[..., :-1])  # nearest first, as KNN_CUDA returns them


def test_chamfer_stand_in_equals_the_projects_value_and_gradient():
    g = torch.Generator().manual_seed(7)
    pred = torch.rand(20, 32, 3, generator=g).requires_grad_()
    target = torch.rand(20, 32, 3, generator=g)
    ours = ChamferDistanceL2()(pred, target)
    (grad_ours,) = torch.autograd.grad(ours, pred)
    ref = R.chamfer_l2(pred, target)
    (grad_ref,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(ref, ours, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ref, grad_ours, rtol=1e-5, atol=1e-7)


def test_stand_in_refuses_what_it_does_not_implement(pair):
    _, ref = pair
    with pytest.raises(NotImplementedError):
        ref(clouds(1), imgs=torch.zeros(1, 1, 3, 8, 8))


# --------------------------------------------------------------------- patch-embedding arithmetic
def plain_embed(embed, groups):
    """The patch embeddings as plain autograd code: F.linear, BatchNorm, ReLU, the full renormalised
    attention map, amax pooling (the project's computation before the embeddings were tuned)."""
    def mlp(seq, x):
        conv1, bn, _, conv2 = seq
        h = F.linear(x, conv1.weight.squeeze(-1), conv1.bias)
        h = F.relu(bn(h.reshape(-1, h.shape[-1])).reshape(h.shape))
        return F.linear(h, conv2.weight.squeeze(-1), conv2.bias)

    B, G, K, _ = groups.shape
    x = mlp(embed.first_conv, groups.reshape(B * G, K, 3))
    if isinstance(embed, InterMAEPatchEmbed):
        t = embed.first_trans
        q, k = F.linear(x, t.q_conv.weight.squeeze(-1)), F.linear(x, t.k_conv.weight.squeeze(-1))
        att = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        att = att / (1e-9 + att.sum(dim=-1, keepdim=True))
        x = att.diagonal(dim1=1, dim2=2).unsqueeze(-1) * x
        x = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1)
        return mlp(embed.second_conv, x.reshape(B, G, 512))
    x = torch.cat([x.amax(dim=1, keepdim=True).expand(-1, K, -1), x], dim=-1)
    return mlp(embed.second_conv, x).amax(dim=1).reshape(B, G, -1)


def embed_copies(cls, *modes):
    torch.manual_seed(8)
    base = cls(48).train()
    for module in base.modules():  # non-trivial BatchNorm affine parameters and weights of released scale
        if isinstance(module, torch.nn.BatchNorm1d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    out = []
    for mode in modes:
        embed = copy.deepcopy(base)
        embed.compute = mode
        out.append(embed)
    return out


def run_embed(embed, groups, fn=None):
    out = (fn or (lambda e, g: e(g)))(embed, groups)
    out.pow(2).sum().backward()
    return out.detach(), {n: p.grad for n, p in embed.named_parameters()}, [b.clone() for b in embed.buffers()]


@pytest.mark.parametrize("cls", [InterMAEPatchEmbed, PointMAEPatchEmbed])
def test_exact_embedding_is_the_plain_computation(cls):
    exact, plain = embed_copies(cls, "exact", "exact")
    groups = torch.randn(2, 12, 16, 3) * 0.3
    out, grads, stats = run_embed(exact, groups)
    out_p, grads_p, stats_p = run_embed(plain, groups, plain_embed)
    torch.testing.assert_close(out, out_p, rtol=1e-6, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_p[name], rtol=1e-6, atol=1e-7 * grads_p[name].abs().max().item(), msg=name)
    for a, b in zip(stats, stats_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [InterMAEPatchEmbed, PointMAEPatchEmbed])
def test_fast_embedding_equals_exact_to_fp32_rounding(cls):
    exact, fast = embed_copies(cls, "exact", "fast")
    groups = torch.randn(3, 16, 32, 3) * 0.3
    out_e, grads_e, stats_e = run_embed(exact, groups)
    out_f, grads_f, stats_f = run_embed(fast, groups)
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-5 * out_e.abs().max().item())
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_f[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)
    for a, b in zip(stats_f, stats_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    exact.eval()
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(groups), exact(groups), rtol=1e-5, atol=1e-5 * out_e.abs().max().item())


def test_fast_embedding_gives_a_tied_maximum_gradient_to_one_point():
    (fast,) = embed_copies(InterMAEPatchEmbed, "fast")
    groups = torch.randn(1, 2, 8, 3) * 0.3
    groups[:, :, 5] = groups[:, :, 2]  # a duplicated point: tied maxima in every channel it wins
    out, grads, _ = run_embed(fast, groups)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())


def test_fast_embedding_under_bf16_autocast():
    exact, fast = embed_copies(InterMAEPatchEmbed, "exact", "fast")
    groups = torch.randn(2, 8, 16, 3) * 0.3
    reference = exact(groups).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(groups)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())


def test_embed_compute_switch(monkeypatch):
    """The arithmetic is a constructor argument (default fast); the environment variable is never
    read by the model (it only supplies a run's config default, utils/settings.py)."""
    monkeypatch.setenv(layers.EMBED_COMPUTE_ENV, "exact")
    assert layers.InterMAEPatchEmbed(32).compute == "fast" and layers.DEFAULT_EMBED_COMPUTE == "fast"
    assert layers.build_patch_embed("point_mae", 32, "exact").compute == "exact"
    with pytest.raises(ValueError, match="exact"):
        layers.InterMAEPatchEmbed(32, "quick")


def test_fast_model_gives_the_stand_in_loss(pair):
    ours, ref = pair
    fast = copy.deepcopy(ours).train()
    fast.MAE_encoder.encoder.compute = "fast"
    pts, mask = clouds(2, seed=9), same_mask(2, seed=10)
    with torch.no_grad():
        a = ref.train()(pts.clone(), mask=mask)[0]
        b = fast(pts.clone(), mask=mask)["loss"]
    assert abs(a.item() - b.item()) <= 1e-5 * max(1.0, abs(a.item()))


def test_bench_released_runs():
    from bench import bench_train

    torch.manual_seed(0)
    results = bench_train.bench_released(torch.device("cpu"), batch=2, steps=1, rounds=1, geometry=False, amp=False)
    assert len(results) == 3 and all(r["median"] > 0 and r["best"] >= r["median"] for r in results.values())
