"""Pre-trained point features of your own point clouds, one row per file.

    python tools/extract_features.py --ckpts experiments/pretrain/NAME/ckpt-last.pth --input my_clouds/ --out feats.npy
    python tools/extract_features.py --ckpts P.safetensors --input a.ply b.npy c.txt --out feats.h5 --npoints 2048
    python tools/extract_features.py --ckpts MODEL_FOLDER_OR_HUB_ID_OR_FEATURES.onnx --input my_clouds/ --out feats.npy

Each cloud is normalised into the unit sphere, reduced to ``--npoints`` by farthest point sampling
and encoded by the frozen pre-trained encoder; its feature is ``max_mean_pool`` of the patch tokens
(2 x the encoder width; 768 for the released models), as for the linear SVM. ``--input``: files
of every format the folder datasets and ``tools/predict.py`` read (``datasets/io.py``: ``.ply``,
``.xyz`` / ``.txt`` / ``.pts`` / ``.csv``, ``.npy`` / ``.npz``: every point; meshes ``.off`` /
``.obj`` / ``.stl``: ``max(2048, --npoints)`` seeded surface samples) or folders (searched
recursively, sorted; other files and names starting with ``.`` skipped). Bad files stop the command
with one line grouping them by reason, after every file was read; nothing is written then. ``--out``: ``.npy`` (float32 (n, D)) plus ``<stem>.json`` with the
file names in row order, or ``.h5`` with datasets ``features`` and ``names``. The encoder sizes come
from the run's ``config.yaml`` beside the checkpoint (or the JSON beside a ``.safetensors`` export,
or ``--config``). The code is in ``engine/features.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.cli import run_main  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.settings import progress_enabled  # noqa: E402


def build_parser():
    parser = new_parser("Frozen pre-trained features (max+mean pooled encoder tokens) of point-cloud files")
    parser.add_argument("--ckpts", required=True,
                        help="checkpoint: pre-training, fine-tuned, a .safetensors export, a model folder "
                             "(tools/export_weights.py --hf), a Hugging Face Hub model id (ORG/NAME[@REVISION]), or "
                             "an ONNX features graph (tools/export_onnx.py --features; runs on onnxruntime)")
    parser.add_argument("--revision", default=None,
                        help="a Hub model id's branch, tag or commit (default: none, i.e. main or the id's @REVISION)")
    parser.add_argument("--input", required=True, nargs="+", metavar="DIR_OR_FILE",
                        help="point-cloud or mesh files (.ply .xyz .txt .pts .csv .npy .npz .off .obj .stl) or folders "
                             "holding them (recursive)")
    parser.add_argument("--out", required=True, help="features.npy (+ features.json with the names) or features.h5")
    parser.add_argument("--config", default=None,
                        help="the run's config (default: config.yaml beside the checkpoint, or the .json beside a "
                             ".safetensors file)")
    parser.add_argument("--npoints", type=int, default=1024, help="points per cloud after FPS")
    parser.add_argument("--batch_size", type=int, default=32, help="clouds per encoder call")
    add_common_args(parser, "device", "trust_checkpoint", "no_progress")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.features import extract_files, load_point_encoder, write_features
    from engine.onnx_runtime import is_onnx_path, load_onnx_features
    from utils.model_folder import resolve_model_path
    from utils.logger import print_log

    if args.npoints < 1 or args.batch_size < 1:
        parser.error(f"--npoints ({args.npoints}) and --batch_size ({args.batch_size}) must be >= 1")
    if not args.out.lower().endswith((".npy", ".h5", ".hdf5")):
        parser.error(f"--out '{args.out}' must end in .npy or .h5")
    if is_onnx_path(args.ckpts):  # onnxruntime: no PyTorch model is built
        if args.config is not None:
            parser.error("--config does not apply to an ONNX file (its metadata holds the run's config)")
        extractor = load_onnx_features(args.ckpts, npoints=args.npoints)
    else:
        extractor = load_point_encoder(resolve_model_path(args.ckpts, revision=args.revision), config=args.config,
                                       device=args.device, npoints=args.npoints, trust=args.trust_checkpoint)
    features, names = extract_files(extractor, args.input, batch_size=args.batch_size, progress=progress_enabled(args.no_progress))
    info = {"checkpoint": str(args.ckpts), "npoints": args.npoints, "feature": "max_mean_pool(patch_tokens)",
            "dim": int(features.shape[1])}
    written = write_features(args.out, features, names, info)
    print_log(f"[features] {features.shape[0]} clouds -> {features.shape[1]}-dim features: {', '.join(written)}")
    return features, names


if __name__ == "__main__":
    run_main(main)
