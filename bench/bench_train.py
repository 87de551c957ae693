"""Training-step throughput of the three jobs, side by side in one run, on the current device.

    python bench/bench_train.py [--device cuda] [--batch 32] [--steps 5] [--sections released pretrain finetune seg]
                                [--released_batch 32] [--rounds 3] [--isa native avx2] [--threads 1] [--compile]

Every figure times the jobs' own train steps (``engine/*.make_train_step``) through
``engine.train_one_epoch`` (augmentation, forward, loss, backward, clipping, AdamW):

* ``released``: the pre-training step (``cfgs/pretrain.yaml`` model sizes, point branch, batch 32 by
  default) of the project's ``Inter_MAE`` (patch embedding computed ``exact`` and ``fast``, see
  ``models.layers.EMBED_COMPUTE_MODES``) against the released model code (``bench/released_model.py``:
  the released ``models/Inter_MAE.py`` with plain-torch stand-ins for its CUDA ops, loaded with the
  same weights), interleaved in rounds in one process, fp32 (and the project's model in bf16 where
  the CPU runs it natively). Also the released code with the project's geometry ops (FPS, kNN,
  Chamfer) swapped in, which isolates the model code. With ``--isa avx2`` (CPU) the same comparison
  runs again in a subprocess restricted to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``): an emulation of an AVX2-only CPU on
  this one (same cores, caches and memory), not a measurement on one;
* ``pretrain``: the project's pre-training step in fp32, bf16 and fp16 where the device runs them
  fast; with the trainable image branch (ViT-S/16, 1 view of 224 x 224) in fp32 and bf16;
* ``finetune`` (``cfgs/finetune_modelnet.yaml``: 8192-point clouds, FPS 1200 -> 1024 points) with
  the share of the step spent in farthest point sampling;
* ``seg``: part segmentation (released sizes, 2048 points).

``--compile`` adds the project's model under ``torch.compile`` to the ``released`` comparison.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench import released_model  # noqa: E402
from bench.common import device_label, timed  # noqa: E402
from datasets.ShapeNetPartDataset import CATEGORIES, SEG_CLASSES  # noqa: E402
from engine import builder, finetune, partseg, pretrain  # noqa: E402
from engine.engine import EpochContext, grad_scaler, train_one_epoch  # noqa: E402
from utils.settings import resolve_amp  # noqa: E402
from models.PartSegTransformer import PartSegTransformer  # noqa: E402
from models.layers import DEFAULT_EMBED_COMPUTE  # noqa: E402
from utils.config import cfg_from_yaml_file  # noqa: E402
from utils.misc import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def precisions(device: torch.device) -> List[str]:
    """fp32, and bf16 / fp16 where :func:`utils.settings.resolve_amp` accepts them on ``device``."""
    out = ["off"]
    out += [mode for mode in ("bf16", "fp16") if resolve_amp(mode, device, logger="silent") is not None]
    return out


def samples_per_s(model, step, batch, device: torch.device, steps: int, amp: str, clip: float = 10.0) -> float:
    """Training samples/s of ``steps`` repetitions of ``batch`` through ``train_one_epoch``."""
    dtype = resolve_amp(amp, device, logger="silent")
    optimizer = torch.optim.AdamW(builder.add_weight_decay(model, 0.05), lr=1e-4)
    scaler = grad_scaler(device, dtype)
    ctx = EpochContext(optimizer, device, clip=clip, amp=dtype, scaler=scaler, progress=False, log_interval=steps)
    train_one_epoch(model, [batch], step, ctx)  # warm-up
    return train_one_epoch(model, [batch] * steps, step, ctx).stats["samples_per_s"]


# An AVX2-only CPU emulated on this one: torch's own kernels, oneDNN and MKL restricted to AVX2
# (must be set before torch is imported, hence a subprocess).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
RESULT_TAG = "RESULT_JSON "
OURS, RELEASED = "project Inter_MAE", "released model code (stand-in)"
RELEASED_GEOMETRY = "released model code, project FPS/kNN/Chamfer"


class Contender:
    """One model with its own AdamW, timed through ``train_one_epoch`` on one fixed batch."""

    def __init__(self, model, step, device: torch.device, amp: str, clip: float):
        self.model, self.step, self.device, self.clip = model, step, device, clip
        self.dtype = resolve_amp(amp, device, logger="silent")
        self.optimizer = torch.optim.AdamW(builder.add_weight_decay(model, 0.05), lr=1e-4)
        self.scaler = grad_scaler(device, self.dtype)

    def run(self, batch, steps: int) -> float:
        ctx = EpochContext(self.optimizer, self.device, clip=self.clip, amp=self.dtype, scaler=self.scaler,
                           progress=False, log_interval=steps)
        return train_one_epoch(self.model, [batch] * steps, self.step, ctx).stats["samples_per_s"]


def interleaved(contenders: Dict[str, Contender], batch, steps: int, rounds: int) -> Dict[str, Dict[str, object]]:
    """Each contender's samples/s in ``rounds`` rounds of ``steps`` steps, the contenders taking turns
    within each round (the order rotating), after one warm-up step each: median, best and all runs."""
    for contender in contenders.values():
        contender.run(batch, 1)
    names, runs = list(contenders), {name: [] for name in contenders}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(contenders[name].run(batch, steps))
    return {name: {"median": statistics.median(v), "best": max(v), "runs": v} for name, v in runs.items()}


def bench_released(device: torch.device, batch: int, steps: int, rounds: int, geometry: bool = True,
                   amp: bool = True, compile_model: bool = False) -> Dict[str, Dict[str, object]]:
    """Pre-training step of the project's model (patch embedding computed ``exact`` and ``fast``,
    see ``models.layers.EMBED_COMPUTE_MODES``) against the released model code, same weights."""
    config = cfg_from_yaml_file(REPO / "cfgs" / "pretrain.yaml")
    cfg = copy.deepcopy(config.model)
    cfg.pop("image_branch", None)
    clip = float(config.get("grad_norm_clip", 0) or 0)
    torch.manual_seed(0)
    ours = builder.model_builder(cfg).to(device)

    def project(compute: str, amp_mode: str = "off", compiled: bool = False) -> Contender:
        model = copy.deepcopy(ours)
        model.MAE_encoder.encoder.compute = compute
        return Contender(torch.compile(model) if compiled else model, pretrain.make_train_step(device, False), device,
                         amp_mode, clip)

    def released(project_geometry: bool) -> Contender:
        model = released_model.from_project_model(ours, cfg)
        if project_geometry:
            model = released_model.with_project_geometry(model)
        return Contender(model, released_model.make_train_step(device), device, "off", clip)

    contenders = {f"{OURS}, embed exact, fp32": project("exact"), f"{OURS}, embed fast, fp32": project("fast"),
                  f"{RELEASED}, fp32": released(False)}
    if geometry:
        contenders[f"{RELEASED_GEOMETRY}, fp32"] = released(True)
    if amp:
        default = DEFAULT_EMBED_COMPUTE
        for mode in precisions(device)[1:]:
            contenders[f"{OURS}, embed {default} (default), {mode}"] = project(default, mode)
    if compile_model:
        contenders[f"{OURS}, embed fast, fp32, torch.compile"] = project("fast", compiled=True)
    points = torch.rand(batch, int(config.npoints), 3, device=device)
    return interleaved(contenders, ("t", "m", points), steps, rounds)


def bench_released_isa(isa: str, argv: List[str]) -> Dict[str, object]:
    """:func:`bench_released` in a subprocess with the ``isa`` restriction; its figures, CPU capability and threads."""
    env = dict(os.environ, **(AVX2_ENV if isa == "avx2" else {}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sections", "released", "--isa", "native", "--json"] + argv
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {isa} run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def bench_pretrain(device: torch.device, batch: int, steps: int, image_branch: bool) -> Dict[str, float]:
    config = cfg_from_yaml_file(REPO / "cfgs" / "pretrain.yaml")
    points = torch.rand(batch, int(config.npoints), 3, device=device)
    results = {}
    variants = [(f"point branch, {amp}", amp, False) for amp in precisions(device)]
    if image_branch:
        variants += [(f"trainable ViT-S/16 branch, {amp}", amp, True) for amp in precisions(device) if amp != "fp16"]
    for name, amp, with_images in variants:
        cfg = copy.deepcopy(config.model)
        if not with_images:
            cfg.pop("image_branch", None)
        torch.manual_seed(0)
        model = builder.model_builder(cfg).to(device)
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


def print_released(title: str, results: Dict[str, Dict[str, object]]) -> None:
    base = results.get(f"{RELEASED}, fp32")
    print(f"\n{title}")
    print(f"  {'':<62} {'median':>8} {'best':>8}  ratio of medians (of bests)")
    for name, r in results.items():
        ratio = f"  {r['median'] / base['median']:5.2f}x ({r['best'] / base['best']:.2f}x)" if base else ""
        print(f"  {name:<62} {r['median']:8.2f} {r['best']:8.2f}{ratio}")
    print("  (samples/s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 8 on CPU (segmentation: half)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CUDA, 2 on CPU; "
                        "released: per round, default 10 on CUDA, 1 on CPU)")
    parser.add_argument("--sections", nargs="+", default=["released", "pretrain", "finetune", "seg"],
                        choices=["released", "pretrain", "finetune", "seg"])
    parser.add_argument("--no_image_branch", action="store_true", help="skip the image-branch variants")
    parser.add_argument("--released_batch", type=int, default=32, help="batch of the released comparison (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the released comparison")
    parser.add_argument("--isa", nargs="+", default=None, choices=["native", "avx2"],
                        help="CPU kernels of the released comparison: native, and/or AVX2 only (a subprocess "
                             "with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2); "
                             "default both on CPU")
    parser.add_argument("--no_geometry_variant", action="store_true",
                        help="skip the released code with the project's geometry ops")
    parser.add_argument("--no_amp", action="store_true", help="released comparison: fp32 only")
    parser.add_argument("--compile", action="store_true", help="add the project's model under torch.compile "
                        "(released comparison; compiling takes minutes on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # subprocess protocol
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 8)
    steps = args.steps or (10 if device.type == "cuda" else 2)
    if "released" in args.sections:
        rsteps = args.steps or (10 if device.type == "cuda" else 1)

        def measure(geometry: bool, amp: bool):
            return bench_released(device, args.released_batch, rsteps, args.rounds, geometry, amp, args.compile)

        if args.json:  # the subprocess side of --isa avx2: measure and hand the figures back
            print(RESULT_TAG + json.dumps({"results": measure(not args.no_geometry_variant, not args.no_amp),
                                           "capability": torch.backends.cpu.get_cpu_capability(),
                                           "label": device_label(device)}))
            return
        for isa in args.isa or (["native", "avx2"] if device.type == "cpu" else ["native"]):
            if isa == "native":
                results = measure(not args.no_geometry_variant, not args.no_amp)
                label, what = device_label(device), "native kernels"
            else:  # fp32 only: no CPU without native bf16 runs it fast (resolve_amp would refuse it there)
                sub = ["--device", str(device), "--released_batch", str(args.released_batch), "--rounds",
                       str(args.rounds), "--steps", str(rsteps), "--threads", str(torch.get_num_threads()), "--no_amp"]
                sub += (["--no_geometry_variant"] if args.no_geometry_variant else []) + (["--compile"] if args.compile else [])
                out = bench_released_isa(isa, sub)
                results, label = out["results"], out["label"]
                what = ("AVX2 kernels only (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS"
                        "=AVX2): an AVX2-only CPU emulated on this CPU, not measured on one")
                if out["capability"] != "AVX2":
                    what += f" -- WARNING: the restriction did not take (capability {out['capability']})"
            print_released(f"pre-training step vs the released model code (cfgs/pretrain.yaml sizes, point branch, "
                           f"batch {args.released_batch}, {args.rounds} interleaved rounds of {rsteps} step(s)); "
                           f"ratio to the released code in fp32\n  {label}\n  {what}", results)
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
