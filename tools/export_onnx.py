"""Export a classifier (or an encoder's features) as an ONNX graph that runs on onnxruntime, without PyTorch.

    python tools/export_onnx.py --ckpts experiments/finetune_folder/mine/ckpt-best.pth --out mine.onnx
    python tools/export_onnx.py --ckpts experiments/pretrain/base/ckpt-last.pth --features --out base-features.onnx
    python tools/export_onnx.py --ckpts shared/mine --out mine.onnx --verify DIR_OF_TEST_FILES

``--ckpts``: a checkpoint, a ``.safetensors`` export, a model folder (``tools/export_weights.py
--hf``) or a Hugging Face Hub model id. The graph takes prepared clouds ``points`` (batch,
points, 3), both dynamic, and gives ``logits`` (batch, classes) or, with ``--features``,
``features`` (batch, 2C): ``max_mean_pool`` of the encoder's patch tokens, what
``tools/extract_features.py`` writes. The farthest point sampling to the patch centres, the kNN
grouping and the transformer run inside the graph; reading, normalising and FPS to ``npoints``
stay outside, in the same PyTorch code as today (``tools/predict.py --ckpts model.onnx``,
``tools/extract_features.py --ckpts model.onnx``). The class names, preprocessing and run config
ride in the file's ``inter_mae`` metadata. The export is checked on onnxruntime against PyTorch
before the file is written. Needs the ``[deploy]`` extra: ``pip install -e '.[deploy]'``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.cli import run_main  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402


def build_parser():
    parser = new_parser("Export a classifier (or an encoder's features) as an ONNX graph for onnxruntime")
    parser.add_argument("--ckpts", required=True,
                        help="fine-tuned classifier (or, with --features, any checkpoint): .pth, .safetensors, model "
                             "folder or Hugging Face Hub model id (ORG/NAME[@REVISION])")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--features", action="store_true",
                        help="export the point encoder's features graph (as tools/extract_features.py) instead of "
                             "the classifier's logits")
    parser.add_argument("--npoints", type=int, default=None,
                        help="--features: points per cloud of the check against PyTorch (default 1024; the graph "
                             "takes any count)")
    parser.add_argument("--verify", nargs="+", default=(), metavar="FILE_OR_DIR",
                        help="also compare the written graph with PyTorch on these files (e.g. the run's test folder): "
                             "the largest absolute difference and whether every predicted class is the same "
                             "(default: none)")
    parser.add_argument("--config", default=None, help="the run's config (default: none, i.e. the checkpoint's own)")
    add_common_args(parser, "trust_checkpoint")
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".onnx"):
        parser.error(f"--out '{args.out}' must end in .onnx")
    if args.npoints is not None and args.npoints < 1:
        parser.error(f"--npoints ({args.npoints}) must be >= 1")
    from engine.export import export_onnx_file
    from engine.onnx_runtime import require
    from utils.model_folder import resolve_model_path

    for module in ("onnx", "onnxscript", "onnxruntime"):  # before anything is read
        require(module, "tools/export_onnx.py")
    ckpts = resolve_model_path(args.ckpts)
    return export_onnx_file(ckpts, args.out, features=args.features, config=args.config, npoints=args.npoints,
                            trust=args.trust_checkpoint, verify=args.verify)


if __name__ == "__main__":
    run_main(main)
