"""All benchmarks in one run (``make bench``: ``python bench/run.py``): FPS backends, geometry ops, the
pre-training step against the released model code, the three jobs' training steps in every
precision the device runs fast, the data side, the loading of your own files and prediction on onnxruntime against PyTorch, each printed as a table of side-by-side ratios
measured in this run.

    python bench/run.py [--device cuda] [--quick]

The comparison with the released model code (``bench/released_model.py``) always uses the released
sizes (batch 32; on a CPU 3 interleaved rounds of one step, with native kernels and again with AVX2
kernels only). Otherwise, on a GPU the released sizes are used (batch 32); on a CPU the batches are
smaller (FPS batch 8, training batch 8, 2 timed steps), so the whole run takes a few minutes
(longer on a busy machine). ``--quick`` shrinks everything (a smoke run).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from bench import bench_data, bench_deploy, bench_folder, bench_fps, bench_ops, bench_train  # noqa: E402
from utils.misc import resolve_device  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    args = parser.parse_args(argv)
    device = ["--device", str(resolve_device(args.device))]
    quick = args.quick
    print("== farthest point sampling backends ==")
    bench_fps.main(device + (["--batch", "2", "--repeats", "1"] if quick else []))
    print("\n== geometry ops ==")
    bench_ops.main(device + (["--batch", "4", "--repeats", "1", "--sizes", "1024"] if quick else ["--sizes", "1024", "2048"]))
    print("\n== training steps ==")
    bench_train.main(device + (["--batch", "2", "--steps", "1", "--no_image_branch", "--released_batch", "2",
                                "--rounds", "1", "--isa", "native"] if quick else []))
    print("\n== data ==")
    bench_data.main(device + (["--cache_shapes_numpy", "1", "--cache_shapes", "2", "--views", "8"] if quick else []))
    print("\n== your own files (PointCloudFolder) ==")
    bench_folder.main(["--files", "4"] if quick else [])
    print("\n== prediction on CPU: onnxruntime against PyTorch ==")
    try:
        bench_deploy.main(["--small", "--files", "4", "--rounds", "1"] if quick else [])
    except ImportError as e:  # the [deploy] extra is missing: say what to install, run the rest
        print(f"skipped: {e}")


if __name__ == "__main__":
    main()
