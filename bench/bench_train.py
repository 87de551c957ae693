"""Training-step throughput of the three jobs, side by side in one run, on the current device.

    python bench/bench_train.py [--device cuda] [--batch 32] [--steps 5] [--sections pretrain finetune seg]

Every figure times the jobs' own train steps (``engine/*.make_train_step``) through
``engine.train_one_epoch`` (augmentation, forward, loss, backward, clipping, AdamW):

* pre-training (``cfgs/pretrain.yaml``, point branch) in fp32, bf16 and fp16 where the device runs
  them fast, and fp32 with the released channels-first 1x1 convolutions in the patch embedding
  (the computation of the released model code, same parameters) for the ratio of our matmuls;
  with the trainable image branch (ViT-S/16, 1 view of 224 x 224) in fp32 and bf16;
* fine-tuning (``cfgs/finetune_modelnet.yaml``: 8192-point clouds, FPS 1200 -> 1024 points) with
  the share of the step spent in farthest point sampling;
* part segmentation (released sizes, 2048 points).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench.common import device_label, timed  # noqa: E402
from datasets.ShapeNetPartDataset import CATEGORIES, SEG_CLASSES  # noqa: E402
from engine import builder, finetune, partseg, pretrain  # noqa: E402
from engine.engine import grad_scaler, resolve_amp, train_one_epoch  # noqa: E402
from models.PartSegTransformer import PartSegTransformer  # noqa: E402
from utils.config import cfg_from_yaml_file  # noqa: E402
from utils.misc import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def precisions(device: torch.device) -> List[str]:
    """fp32, and bf16 / fp16 where :func:`engine.engine.resolve_amp` accepts them on ``device``."""
    out = ["off"]
    out += [mode for mode in ("bf16", "fp16") if resolve_amp(mode, device, logger="silent") is not None]
    return out


def samples_per_s(model, step, batch, device: torch.device, steps: int, amp: str, clip: float = 10.0) -> float:
    """Training samples/s of ``steps`` repetitions of ``batch`` through ``train_one_epoch``."""
    dtype = resolve_amp(amp, device, logger="silent")
    optimizer = torch.optim.AdamW(builder.add_weight_decay(model, 0.05), lr=1e-4)
    scaler = grad_scaler(device, dtype)
    run = dict(clip=clip, amp=dtype, scaler=scaler, progress=False, log_interval=steps)
    train_one_epoch(model, step, [batch], optimizer, device, 0, **run)  # warm-up
    return train_one_epoch(model, step, [batch] * steps, optimizer, device, 0, **run)["samples_per_s"]


def released_conv_embed(embed):
    """The Inter-MAE patch embedding computed as the released code does: channels-first Conv1d and
    BatchNorm1d on (BG, C, K), the TransPooling einsum; same parameters and running statistics."""

    def block(seq, x):
        conv1, bn, _, conv2 = seq
        x = F.conv1d(x, conv1.weight, conv1.bias)
        x = F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps))
        return F.conv1d(x, conv2.weight, conv2.bias)

    def forward(point_groups):
        B, G, K, _ = point_groups.shape
        x = block(embed.first_conv, point_groups.reshape(B * G, K, 3).transpose(1, 2))  # BG 256 K
        q = F.conv1d(x, embed.first_trans.q_conv.weight).transpose(1, 2)
        attention = torch.softmax(torch.bmm(q, F.conv1d(x, embed.first_trans.k_conv.weight)), dim=-1)
        attention = attention / (1e-9 + attention.sum(dim=-1, keepdim=True))
        x = torch.einsum("bnn,bnc->bnc", attention, x.transpose(1, 2))  # BG K 256
        x = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1).reshape(B, G, 512).transpose(1, 2)
        return block(embed.second_conv, x).transpose(1, 2)

    return forward


def bench_pretrain(device: torch.device, batch: int, steps: int, image_branch: bool) -> Dict[str, float]:
    config = cfg_from_yaml_file(REPO / "cfgs" / "pretrain.yaml")
    points = torch.rand(batch, int(config.npoints), 3, device=device)
    results = {}
    variants = [(f"point branch, {amp}", amp, False, False) for amp in precisions(device)]
    variants.append(("point branch, off, released conv1d embedding", "off", False, True))
    if image_branch:
        variants += [(f"trainable ViT-S/16 branch, {amp}", amp, True, False) for amp in precisions(device) if amp != "fp16"]
    for name, amp, with_images, conv in variants:
        cfg = copy.deepcopy(config.model)
        if not with_images:
            cfg.pop("image_branch", None)
        torch.manual_seed(0)
        model = builder.model_builder(cfg).to(device)
        if conv:
            model.MAE_encoder.encoder.forward = released_conv_embed(model.MAE_encoder.encoder)
        data = {"points": points, "imgs": torch.rand(batch, 1, 3, 224, 224, device=device)} if with_images else points
        results[name] = samples_per_s(model, pretrain.make_train_step(device, with_images), ("t", "m", data), device, steps, amp)
    return results


def bench_finetune(device: torch.device, batch: int, steps: int, repeats: int) -> Dict[str, float]:
    config = cfg_from_yaml_file(REPO / "cfgs" / "finetune_modelnet.yaml")
    npoints = int(config.npoints)
    points = torch.rand(batch, 8192, 3, device=device)
    labels = torch.randint(0, int(config.model.cls_dim), (batch,), device=device)
    results = {}
    for amp in precisions(device):
        torch.manual_seed(0)
        model = builder.model_builder(config.model).to(device)
        step = finetune.make_train_step(device, npoints, model.get_loss_acc)
        results[f"ModelNet40 8192 -> FPS 1200 -> 1024, {amp}"] = samples_per_s(model, step, ("t", "m", (points, labels)),
                                                                                device, steps, amp)
    fps_ms = timed(lambda: finetune.fps_then_subset(points, npoints), device, repeats)
    step_ms = batch / results["ModelNet40 8192 -> FPS 1200 -> 1024, off"] * 1e3
    results["FPS share of the fp32 step (%)"] = 100.0 * fps_ms / step_ms
    return results


def bench_segmentation(device: torch.device, batch: int, steps: int) -> Dict[str, float]:
    points = torch.rand(batch, 2048, 3, device=device)
    category = torch.randint(0, len(CATEGORIES), (batch,), device=device)
    target = torch.stack([torch.tensor(SEG_CLASSES[CATEGORIES[c]], device=device)[
        torch.randint(0, len(SEG_CLASSES[CATEGORIES[c]]), (2048,), device=device)] for c in category.tolist()])
    results = {}
    for amp in precisions(device):
        torch.manual_seed(0)
        model = PartSegTransformer().to(device)
        results[f"ShapeNetPart 2048 points, {amp}"] = samples_per_s(model, partseg.make_train_step(device),
                                                                    (points, category, target), device, steps, amp)
    return results


def print_table(title: str, results: Dict[str, float], base: Optional[str] = None) -> None:
    print(f"\n{title}")
    for name, value in results.items():
        ratio = f"  {value / results[base]:5.2f}x" if base in results and not name.endswith("(%)") else ""
        unit = "" if name.endswith("(%)") else " samples/s"
        print(f"  {name:<55} {value:10.2f}{unit}{ratio}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 8 on CPU (segmentation: half)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--sections", nargs="+", default=["pretrain", "finetune", "seg"],
                        choices=["pretrain", "finetune", "seg"])
    parser.add_argument("--no_image_branch", action="store_true", help="skip the image-branch variants")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    steps = args.steps or (10 if device.type == "cuda" else 2)
    print(f"training steps on {device_label(device)}; batch {batch}, {steps} timed steps after one warm-up")
    if "pretrain" in args.sections:
        print_table("pre-training (cfgs/pretrain.yaml); ratio to point branch, fp32",
                    bench_pretrain(device, batch, steps, not args.no_image_branch), "point branch, off")
    if "finetune" in args.sections:
        print_table("fine-tuning (cfgs/finetune_modelnet.yaml); ratio to fp32",
                    bench_finetune(device, batch, steps, max(steps, 3)), "ModelNet40 8192 -> FPS 1200 -> 1024, off")
    if "seg" in args.sections:
        print_table("part segmentation (released sizes); ratio to fp32",
                    bench_segmentation(device, max(batch // 2, 2), steps), "ShapeNetPart 2048 points, off")


if __name__ == "__main__":
    main()
