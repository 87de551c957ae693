"""Export a checkpoint's weights to ``.safetensors``, with the run's config as JSON beside it.

    python tools/export_weights.py --ckpts experiments/pretrain/NAME/ckpt-last.pth                 # -> ckpt-last.safetensors + ckpt-last.json
    python tools/export_weights.py --ckpts experiments/pretrain/NAME/ckpt-last.pth --encoder_only --out encoder.safetensors
    python tools/export_weights.py --ckpts experiments/finetune_folder/mine/ckpt-best.pth --hf shared/mine [--push_to_hub ORG/mine]

The whole model (``base_model``: same names as in the checkpoint, so ``--test``, ``--start_ckpts``,
``main_vis.py`` and ``tools/svm.py`` load it) or, with ``--encoder_only``, only the point encoder
(named as in a classifier: ``encoder.*``, ``pos_embed.*``, ``blocks.*``, ``norm.*``; fine-tuning,
segmentation, t-SNE and ``tools/extract_features.py`` load it). Optimizer, schedule and RNG states
are left out. The config is the run's ``config.yaml`` beside the checkpoint, or ``--config``; it is
written as ``<out stem>.json`` and read back by every loader (``utils.checkpoint.load_checkpoint_file``).

``--hf DIR`` writes a model folder in the Hugging Face convention instead (``engine/export.py``):
``config.json`` (the run's config, class names, preprocessing, metrics), ``model.safetensors``
and a ``README.md`` model card; every ``--ckpts`` and ``Predictor.from_pretrained`` read it, and
``--push_to_hub ORG/NAME`` uploads it (docs/deploy.md).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

from utils.parser import add_common_args, new_parser  # noqa: E402


def build_parser():
    parser = new_parser("Export checkpoint weights to .safetensors (+ the config as .json)")
    parser.add_argument("--ckpts", required=True, help="checkpoint (.pth) to export")
    parser.add_argument("--out", default=None,
                        help="output .safetensors (default: beside the checkpoint, same stem; '-encoder' added with "
                             "--encoder_only)")
    parser.add_argument("--config", default=None, help="the run's config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--encoder_only", action="store_true", help="export only the point encoder")
    parser.add_argument("--no_config", action="store_true", help="write no .json (when no config is at hand)")
    parser.add_argument("--hf", default=None, metavar="DIR",
                        help="write a shareable model folder instead (the Hugging Face convention): config.json (config, "
                             "class names, preprocessing), model.safetensors and a README.md model card (default: none)")
    parser.add_argument("--overwrite", action="store_true", help="--hf: replace the files of a non-empty folder")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID",
                        help="--hf: then upload the folder to this Hugging Face Hub repository (created private when "
                             "missing; needs `hf auth login` or HF_TOKEN); never needed for local use (default: none)")
    parser.add_argument("--public", action="store_true", help="--push_to_hub: create the repository public")
    add_common_args(parser, "trust_checkpoint")
    return parser


def default_out(ckpt_path: str, encoder_only: bool) -> str:
    stem = os.path.splitext(ckpt_path)[0]
    return stem + ("-encoder" if encoder_only else "") + ".safetensors"


def main(argv=None) -> list:
    args = build_parser().parse_args(argv)
    from engine.features import find_config
    from models.backbone import checkpoint_kind, encoder_state_dict
    from utils.checkpoint import checkpoint_class_names, load_checkpoint_file, save_safetensors, state_dict_of
    from utils.config import to_plain
    from utils.logger import print_log

    if args.hf is not None or args.push_to_hub is not None:
        return export_folder(args, sys.argv[1:] if argv is None else list(argv))
    out = args.out or default_out(args.ckpts, args.encoder_only)
    if not out.endswith(".safetensors"):
        raise SystemExit(f"export_weights.py: --out '{out}' must end in .safetensors")
    if os.path.abspath(out) == os.path.abspath(args.ckpts):
        raise SystemExit(f"export_weights.py: --out '{out}' is the checkpoint itself")
    ckpt = load_checkpoint_file(args.ckpts, trust=args.trust_checkpoint)
    state = state_dict_of(ckpt, args.ckpts)
    kind = checkpoint_kind(state)
    weights = encoder_state_dict(state, args.ckpts) if args.encoder_only else state
    config = None
    if not args.no_config:
        config, source = find_config(args.ckpts, ckpt, args.config)
        config = to_plain(config)
        print_log(f"[export] config from {source}")
    metadata = {"format": "pt", "source": os.path.basename(args.ckpts), "kind": "encoder" if args.encoder_only else kind,
                "epoch": str(ckpt.get("epoch", -1))}
    names = checkpoint_class_names(ckpt, args.ckpts)
    if names:  # predictions from the export carry the class names too
        metadata["class_names"] = json.dumps(names)
    written = save_safetensors(weights, out, config=config, metadata=metadata)
    n = sum(v.numel() for v in weights.values())
    print_log(f"[export] {kind} checkpoint {args.ckpts}: {'encoder' if args.encoder_only else 'whole model'}, "
              f"{len(weights)} tensors ({n:,} numbers) -> {', '.join(written)}")
    return written


def export_folder(args, argv: list) -> list:
    """``--hf DIR`` (and ``--push_to_hub``): the model folder of ``engine.export.export_model_folder``;
    ``argv`` (this command's flags) goes into the model card."""
    import shlex

    from engine.export import export_model_folder, push_to_hub
    from utils.model_folder import ModelFolderError, resolve_model_path

    if args.hf is None:
        raise ModelFolderError("--push_to_hub uploads the folder of --hf DIR; give --hf too")
    if args.out is not None or args.no_config:
        raise ModelFolderError("--hf writes the folder's own file names and always its config.json; "
                               "leave out --out and --no_config")
    written = export_model_folder(resolve_model_path(args.ckpts), args.hf, config=args.config,
                                  encoder_only=args.encoder_only, overwrite=args.overwrite,
                                  trust=args.trust_checkpoint,
                                  export_command=shlex.join(["python", "tools/export_weights.py", *argv]),
                                  name=args.push_to_hub)
    if args.push_to_hub:
        push_to_hub(args.hf, args.push_to_hub, private=not args.public)
    return written


if __name__ == "__main__":
    from utils.checkpoint import CheckpointError, UntrustedCheckpointError
    from utils.cli import InputError, exit_on_input_error
    from utils.config import ConfigError

    try:
        main()
    except UntrustedCheckpointError as e:  # a refused unpickling: one line, exit status 2, as in every command
        exit_on_input_error(e, "export_weights.py")
    except CheckpointError as e:
        raise SystemExit(f"export_weights.py: {e}") from None
    except ConfigError as e:
        raise SystemExit(f"export_weights.py: {e} (or --no_config to export the weights alone)") from None
    except InputError as e:  # a model folder or Hub model id that cannot be used
        exit_on_input_error(e, "export_weights.py")
