"""Named predictions of a fine-tuned classifier for point-cloud and mesh files, as a CSV.

    python tools/predict.py --ckpts experiments/finetune_folder/mine/ckpt-best.pth --input NEW_FILES_OR_DIR \
        --out predictions.csv [--topk K] [--vote N] [--batch_size B] [--device D] [--strict]
    python tools/predict.py --ckpts MODEL_FOLDER_OR_HUB_ID_OR_MODEL.onnx --input NEW_FILES_OR_DIR --out predictions.csv

One CSV row per file: path, predicted class name, probability, the top-k names and
probabilities, the true class (when the file sits in a class folder), and the error of a file
that was skipped. Files in class folders also give the accuracy, per-class accuracy and the
confusion matrix (in the log and as ``<out stem>_confusion.png``). The log is also written to
``<out stem>.log``. Files are prepared as ``main.py --test`` prepares its test set
(``engine/predict.py``; a point file with fewer than the run's ``N_POINTS`` points but at least
``npoints`` gives all its points). Exit status: 0; 1 when a file was skipped (bad file: empty,
unreadable, non-finite, fewer than ``npoints`` points, unknown extension; listed in the CSV and the
log); 2 on bad input (checkpoint, flags; and with ``--strict`` any bad file: one line grouping them
by reason, nothing is written).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.cli import run_main  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.settings import progress_enabled  # noqa: E402


def build_parser():
    parser = new_parser("Named predictions of a fine-tuned classifier for point-cloud and mesh files, as a CSV")
    parser.add_argument("--ckpts", required=True,
                        help="fine-tuned classifier: checkpoint (ckpt-best.pth of a run), .safetensors export, model "
                             "folder (tools/export_weights.py --hf), Hugging Face Hub model id (ORG/NAME[@REVISION]) "
                             "or ONNX file (tools/export_onnx.py; runs on onnxruntime)")
    parser.add_argument("--revision", default=None,
                        help="a Hub model id's branch, tag or commit (default: main, or the id's @REVISION)")
    parser.add_argument("--input", required=True, nargs="+", metavar="FILE_OR_DIR",
                        help="files (.ply .xyz .txt .pts .csv .npy .npz .off .obj .stl) or folders holding them "
                             "(recursive; class subfolders give accuracy figures)")
    parser.add_argument("--out", default="predictions.csv", help="the CSV to write")
    parser.add_argument("--topk", type=int, default=5, help="names and probabilities of the K most likely classes")
    parser.add_argument("--vote", type=int, default=0, metavar="N",
                        help="average the logits of N voting passes (random subsets with scale-and-translate, as "
                             "--test --vote); 0: one plain pass, as --test")
    parser.add_argument("--batch_size", type=int, default=32, help="files per model call")
    parser.add_argument("--config", default=None,
                        help="the run's config (default: the checkpoint's own, else config.yaml beside it)")
    parser.add_argument("--strict", action="store_true",
                        help="a bad file is an error (exit status 2, one line listing every bad file, no CSV) "
                             "instead of a skipped row (exit status 1)")
    add_common_args(parser, "device", "seed", "trust_checkpoint", "no_progress")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1 or args.vote < 0:
        parser.error(f"--topk ({args.topk}) and --batch_size ({args.batch_size}) must be >= 1, --vote ({args.vote}) >= 0")
    if not args.out.lower().endswith(".csv"):
        parser.error(f"--out '{args.out}' must end in .csv")
    import os

    from engine.onnx_runtime import OnnxPredictor, is_onnx_path
    from engine.predict import Predictor, report, write_csv
    from utils.logger import get_root_logger, print_log
    from utils.misc import set_random_seed

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    logger = get_root_logger(log_file=os.path.splitext(args.out)[0] + ".log", name="predict")
    set_random_seed(args.seed)
    if is_onnx_path(args.ckpts):  # onnxruntime: no PyTorch model is built
        if args.config is not None:
            parser.error("--config does not apply to an ONNX file (its metadata holds the run's config)")
        predictor = OnnxPredictor.from_onnx(args.ckpts, logger=logger)
    else:
        predictor = Predictor.from_pretrained(args.ckpts, revision=args.revision, device=args.device,
                                              config=args.config, trust=args.trust_checkpoint, logger=logger)
    results = predictor.predict(args.input, topk=args.topk, vote=args.vote, batch_size=args.batch_size,
                                progress=progress_enabled(args.no_progress), strict=args.strict)
    write_csv(args.out, results, args.topk)
    print_log(f"[predict] {len(results)} rows written to {args.out}"
              + (f" ({args.vote} voting passes)" if args.vote else ""), logger=logger)
    report(results, predictor.class_names, out=args.out, logger=logger)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
