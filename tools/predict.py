"""Named predictions of a fine-tuned classifier for point-cloud and mesh files, as a CSV; per-point
part labels of a part-segmentation model of a folder, as a folder of .ply files.

    python tools/predict.py --ckpts experiments/finetune_folder/mine/ckpt-best.pth --input NEW_FILES_OR_DIR \
        --out predictions.csv [--topk K] [--vote N] [--batch_size B] [--device D] [--strict]
    python tools/predict.py --ckpts experiments/partseg_folder/mine/ckpt-best.pth --input NEW_FILES_OR_DIR \
        --out predictions/ [--category NAME] [--vis N] [--device D] [--strict]
    python tools/predict.py --ckpts MODEL_FOLDER_OR_HUB_ID_OR_MODEL.onnx --input NEW_FILES_OR_DIR --out predictions.csv

Classifier: one CSV row per file: path, predicted class name, probability, the top-k names and
probabilities, the true class (when the file sits in a class folder), and the error of a file
that was skipped. Files in class folders also give the accuracy, per-class accuracy and the
confusion matrix (in the log and as ``<out stem>_confusion.png``). The log is also written to
``<out stem>.log``. Files are prepared as ``main.py --test`` prepares its test set
(``engine/predict.py``; a point file with fewer than the run's ``N_POINTS`` points but at least
``npoints`` gives all its points).

Part segmentation (``engine/predict_seg.py``): ``--out`` is a folder; for each input file a
``.ply`` (same relative path, extension ``.ply``) with every point of the file, a colour per part
(``red green blue``) and the predicted ``label``; ``predictions.csv`` (one row per file: points,
points per part, mIoU and accuracy against the file's own labels when it has them, error);
``summary.json`` (per-part IoU, instance and class mIoU over the files with labels); with
``--vis N`` ``predictions.png`` (N files, their labels | the prediction); the log ``predict.log``.

Exit status: 0; 1 when a file was skipped (bad file: empty, unreadable, non-finite, fewer than
``npoints`` points, unknown extension, no category; listed in the CSV and the log); 2 on bad input
(checkpoint, flags; and with ``--strict`` any bad file: one line grouping them by reason, nothing
is written).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.cli import run_main  # noqa: E402
from utils.parser import add_common_args, new_parser  # noqa: E402
from utils.settings import progress_enabled  # noqa: E402


def build_parser():
    parser = new_parser("Named predictions of a fine-tuned classifier for point-cloud and mesh files, as a CSV; "
                        "per-point part labels of a folder segmentation model, as .ply files")
    parser.add_argument("--ckpts", required=True,
                        help="fine-tuned classifier or part-segmentation model: checkpoint (ckpt-best.pth of a run), "
                             ".safetensors export, model folder (tools/export_weights.py --hf), Hugging Face Hub model "
                             "id (ORG/NAME[@REVISION]), or a classifier's ONNX file (tools/export_onnx.py; runs on "
                             "onnxruntime)")
    parser.add_argument("--revision", default=None,
                        help="a Hub model id's branch, tag or commit (default: none, i.e. main or the id's @REVISION)")
    parser.add_argument("--input", required=True, nargs="+", metavar="FILE_OR_DIR",
                        help="files (.ply .xyz .txt .pts .csv .npy .npz .off .obj .stl) or folders holding them "
                             "(recursive; class subfolders give accuracy figures)")
    parser.add_argument("--out", default=None, help="the CSV to write (classifier; default predictions.csv), or the "
                                                    "folder to write (segmentation; default predictions/)")
    parser.add_argument("--category", default=None,
                        help="segmentation: the category of the files in no category folder (for a model trained "
                             "on category subfolders) (default: none: such files are skipped)")
    parser.add_argument("--vis", type=int, default=0, metavar="N",
                        help="segmentation: draw N files with labels (their labels | the prediction) to "
                             "<out>/predictions.png (default: 0, no picture)")
    parser.add_argument("--vis_up", choices=["z", "y"], default="z",
                        help="segmentation, --vis: the files' vertical axis (z: scans and CAD, y: ShapeNet) "
                             "(default: z)")
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
    if args.vis < 0:
        parser.error(f"--vis ({args.vis}) must be >= 0")
    import os

    from engine.onnx_runtime import OnnxPredictor, is_onnx_path, require
    from engine.predict import Predictor, report, write_csv
    from engine.predict_seg import SegPredictor
    from utils.checkpoint import load_checkpoint_file
    from utils.logger import get_root_logger, print_log
    from utils.misc import set_random_seed
    from utils.model_folder import resolve_model_path

    onnx_file = is_onnx_path(args.ckpts)  # a classifier's graph
    if onnx_file:
        if args.config is not None:
            parser.error("--config does not apply to an ONNX file (its metadata holds the run's config)")
        require("onnxruntime", f"running the ONNX file '{args.ckpts}'")  # before anything is written
    else:  # a Hub model id: its folder in huggingface_hub's cache
        args.ckpts = resolve_model_path(args.ckpts, revision=args.revision)
    segmentation = not onnx_file and is_segmentation(load_checkpoint_file(args.ckpts, trust=args.trust_checkpoint),
                                                     args.config)
    if segmentation:
        args.out = args.out or "predictions"
        if args.out.lower().endswith(".csv"):
            parser.error(f"--out '{args.out}': a part-segmentation model writes a folder (a .ply per file, "
                         f"predictions.csv, summary.json); give a folder")
        if os.path.isfile(args.out):
            parser.error(f"--out '{args.out}' is a file; give a folder")
        for flag, value in (("--topk", args.topk != 5), ("--vote", args.vote)):
            if value:
                parser.error(f"{flag} is for classifiers; {args.ckpts} is a part-segmentation model")
    else:
        args.out = args.out or "predictions.csv"
        if not args.out.lower().endswith(".csv"):
            parser.error(f"--out '{args.out}' must end in .csv")
        if args.category is not None or args.vis:
            parser.error(f"--category and --vis are for part-segmentation models; {args.ckpts} is a classifier")
    log_file = os.path.join(args.out, "predict.log") if segmentation else os.path.splitext(args.out)[0] + ".log"
    set_random_seed(args.seed)
    if segmentation:  # the folder (and its log) is made once the model loaded and, with --strict, the inputs passed
        logger = get_root_logger(name="predict")
        predictor = Predictor.from_checkpoint(args.ckpts, device=args.device, config=args.config,
                                              trust=args.trust_checkpoint, logger=logger)
        assert isinstance(predictor, SegPredictor)
        return predict_parts(predictor, args, log_file, logger)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    logger = get_root_logger(log_file=log_file, name="predict")
    if onnx_file:  # onnxruntime: no PyTorch model is built
        predictor = OnnxPredictor.from_onnx(args.ckpts, logger=logger)
    else:
        predictor = Predictor.from_checkpoint(args.ckpts, device=args.device, config=args.config,
                                              trust=args.trust_checkpoint, logger=logger)
    results = predictor.predict(args.input, topk=args.topk, vote=args.vote, batch_size=args.batch_size,
                                progress=progress_enabled(args.no_progress), strict=args.strict)
    write_csv(args.out, results, args.topk)
    print_log(f"[predict] {len(results)} rows written to {args.out}"
              + (f" ({args.vote} voting passes)" if args.vote else ""), logger=logger)
    report(results, predictor.class_names, out=args.out, logger=logger)
    return 1 if any(r.error for r in results) else 0


def is_segmentation(ckpt, config_path) -> bool:
    """Whether the checkpoint (or the --config given for it) is a part-segmentation model."""
    from utils.config import cfg_from_yaml_file

    config = cfg_from_yaml_file(config_path) if config_path else ckpt.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    return isinstance(model, dict) and model.get("NAME") == "PartSegTransformer"


def predict_parts(predictor, args, log_file: str, logger) -> int:
    """Segmentation: every input read (and, with --strict, refused together) before the folder is made."""
    import os

    from engine.partseg_folder import SegMeter
    from engine.predict_seg import report
    from utils.logger import attach_log_file

    if args.strict:  # read every input first: a refusal writes nothing
        predictor.check_inputs(args.input, args.category)
    os.makedirs(args.out, exist_ok=True)
    attach_log_file(logger, log_file)
    meter = SegMeter(predictor.parts)
    results = predictor.predict(args.input, category=args.category, out=args.out,
                                progress=progress_enabled(args.no_progress), meter=meter)
    report(results, predictor, meter, args.out, vis=args.vis, up=args.vis_up, logger=logger)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
