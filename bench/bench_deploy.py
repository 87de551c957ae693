"""Prediction on CPU: onnxruntime against PyTorch, side by side in one run, files per second.

    python bench/bench_deploy.py [--files 64] [--batches 1 32] [--rounds 3] [--threads 1] [--small]

A classifier of the released fine-tuning sizes (cfgs/finetune_folder.yaml: width 384, depth 12,
64 patches of 32 points, 1024 points after FPS; 15 classes, weights as initialised: speed does not
depend on them) is saved as a checkpoint and exported with ``tools/export_onnx.py``'s code. Both
predictors then run ``Predictor.predict`` on the same files (2048-point ``.npy`` clouds: read,
normalise, FPS to 1024, model), at each batch size, in interleaved rounds (medians). ``model only``
times the model call on prepared clouds (the part the runtimes differ in; the median of 32 clouds
per round). Torch and onnxruntime
get the same number of threads (``--threads``). ``--small``: a width-32, depth-2 model (a smoke run).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench.common import device_label, timed  # noqa: E402

CLASSES = 15  # ScanObjectNN's count


def make_checkpoint(folder: Path, small: bool) -> str:
    from easydict import EasyDict

    from models import build_model_from_cfg
    from utils.checkpoint import write_checkpoint
    from utils.config import cfg_from_yaml_file
    from utils.schema import to_plain

    cfg = cfg_from_yaml_file("cfgs/finetune_folder.yaml")
    cfg.model.cls_dim = CLASSES
    cfg.dataset.test._base_.N_POINTS = 2048
    if small:
        cfg.model.update(trans_dim=32, encoder_dims=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    model = build_model_from_cfg(EasyDict(cfg.model)).eval()
    path = str(folder / "ckpt.pth")
    write_checkpoint(path, model=model, config=to_plain(cfg), class_names=[f"class_{i}" for i in range(CLASSES)])
    return path


def write_files(folder: Path, n: int, points: int = 2048) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = folder / f"cloud_{i:04d}.npy"
        np.save(path, rng.normal(size=(points, 3)).astype(np.float32))
        files.append(str(path))
    return files


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--small", action="store_true", help="a width-32, depth-2 model (a smoke run)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.export import export_onnx_file
    from engine.finetune import fps_to
    from engine.onnx_runtime import OnnxPredictor, _ort_version, require
    from engine.predict import Predictor

    require("onnxruntime", "bench/bench_deploy.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp, args.small)
        start = time.perf_counter()
        info = export_onnx_file(ckpt, str(tmp / "model.onnx"))
        export_s = time.perf_counter() - start
        files = write_files(tmp / "files", args.files)
        runners = {"PyTorch": Predictor.from_checkpoint(ckpt, device="cpu"),
                   f"onnxruntime {_ort_version()}": OnnxPredictor.from_onnx(info["path"], threads=torch.get_num_threads())}
        clouds = torch.from_numpy(np.stack([runners["PyTorch"].read(f) for f in files[:32]]))
        prepared = fps_to(clouds, 1024)
        rates = {(name, b): [] for name in runners for b in args.batches}
        model_ms = {(name, b): [] for name in runners for b in args.batches}
        for runner in runners.values():  # warm-up
            runner.predict(files[:2], batch_size=2)
        for _ in range(args.rounds):
            for b in args.batches:
                for name, runner in runners.items():
                    t = time.perf_counter()
                    results = runner.predict(files, batch_size=b)
                    rates[(name, b)].append(len(files) / (time.perf_counter() - t))
                    assert all(r.error is None for r in results)
                    batch = list(prepared[:b].numpy())
                    model_ms[(name, b)].append(timed(lambda r=runner, x=batch: r.logits(x), torch.device("cpu"),
                                                     repeats=max(1, 32 // b), warmup=0) / b)
    print(f"prediction of {args.files} files of 2048 points (read, normalise, FPS to 1024, model), "
          f"{'small model' if args.small else 'released fine-tuning sizes'}, {device_label(torch.device('cpu'))}; "
          f"onnxruntime threads = torch threads = {torch.get_num_threads()}; medians of {args.rounds} rounds; "
          f"ONNX export {export_s:.0f} s ({os.path.basename(info['path'])}, largest difference to PyTorch "
          f"{info['max_abs_diff']:.1e})")
    torch_name, ort_name = list(runners)
    print(f"| batch | {torch_name} files/s | {ort_name} files/s | ratio | model only, ms per cloud (torch / ort) |")
    print("|---|---|---|---|---|")
    summary = {}
    for b in args.batches:
        pt, ox = statistics.median(rates[(torch_name, b)]), statistics.median(rates[(ort_name, b)])
        mt, mo = statistics.median(model_ms[(torch_name, b)]), statistics.median(model_ms[(ort_name, b)])
        summary[b] = {"torch": pt, "onnxruntime": ox, "ratio": ox / pt, "model_ms": (mt, mo)}
        print(f"| {b} | {pt:.1f} | {ox:.1f} | {ox / pt:.2f}x | {mt:.1f} / {mo:.1f} |")
    return summary


if __name__ == "__main__":
    main()
