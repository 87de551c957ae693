"""Command-line arguments: main.py's (released flags, plus --device, --data_root and --opts), the
flags several commands share, defined once (:func:`add_common_args`), and the help formatter every
command uses (:class:`HelpFormatter`: each flag's help ends with its default)."""
from __future__ import annotations

import argparse
import os

from utils.rundir import run_name_type
from utils.settings_table import FLAG_SETTINGS, flag_spec


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with the default of every flag that takes a value, unless its help already says
    what the default is (``default`` in the text) or there is none (None, switches)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        return text + " (default: %(default)s)"


def new_parser(description: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser with :class:`HelpFormatter` (every command's)."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kwargs)


# name -> (flags, add_argument keywords): the flags of the settings table (utils/settings_table.py),
# then those of the processes and of config overrides.
COMMON_ARGS = {flags[0][2:]: (flags, kwargs) for flags, kwargs in map(flag_spec, FLAG_SETTINGS)}
COMMON_ARGS.update({
    "launcher": (("--launcher",), dict(choices=["none", "pytorch"], default="none",
                                       help="job launcher: none, or pytorch under torchrun")),
    "local_rank": (("--local_rank", "--local-rank"), dict(type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                                                          help="process index on this machine; set by torchrun "
                                                               "(default: $LOCAL_RANK, else 0)")),
    "deterministic": (("--deterministic",), dict(action="store_true", help="deterministic kernels (slower)")),
    "partial_load": (("--partial_load",), dict(action="store_true", help="load checkpoints non-strictly: report "
                                                                            "missing and unexpected keys instead of failing")),
    "opts": (("--opts",), dict(nargs="*", default=[], metavar="KEY=VALUE",
                               help="override config entries (values are YAML), e.g. --opts total_bs=8 "
                                    "model.transformer_config.mask_ratio=0.7 dataset.train.others.DATA_PATH=/x; "
                                    "dataset.<split>.KEY is short for dataset.<split>.others.KEY; a key the "
                                    "section's schema allows is added; an unknown key is an error listing the "
                                    "valid ones (default: none)")),
})


def add_common_args(parser: argparse.ArgumentParser, *names: str, **defaults) -> argparse.ArgumentParser:
    """Add the :data:`COMMON_ARGS` ``names`` to ``parser``; ``defaults`` override their defaults."""
    for name in names:
        flags, kwargs = COMMON_ARGS[name]
        parser.add_argument(*flags, **{**kwargs, **({"default": defaults[name]} if name in defaults else {})})
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("Inter-MAE: pre-training (no job flag), fine-tuning (--finetune_model / --scratch_model) "
                        "and testing (--test)")
    parser.add_argument("--config", type=str, default=None,
                        help="yaml config file; required, except with --test, which then reads the config.yaml "
                             "saved in the run directory of --ckpts (or the .json beside a .safetensors export) "
                             "(default: none)")
    add_common_args(parser, "launcher", "local_rank", "num_workers", "seed", "deterministic")
    parser.add_argument("--sync_bn", action="store_true", help="synchronised BatchNorm across processes")
    parser.add_argument("--exp_name", type=run_name_type("--exp_name"), default="default",
                        help="experiment name (a folder name, not a path): outputs go to "
                             "<experiment_root>/<config stem>/<exp_name>")
    parser.add_argument("--loss", type=str, default="cd1", help="kept for released scripts; unused")
    parser.add_argument("--start_ckpts", type=str, default=None,
                        help="pre-training: start from these weights (fresh optimizer and schedule) (default: none)")
    parser.add_argument("--ckpts", type=str, default=None,
                        help="checkpoint: the pre-trained model to fine-tune (--finetune_model), the model to test "
                             "(--test), or a warm start in pre-training (same as --start_ckpts) (default: none)")
    add_common_args(parser, "partial_load", "trust_checkpoint")
    parser.add_argument("--val_freq", type=int, default=1, help="validate every this many epochs")
    parser.add_argument("--vote", action="store_true",
                        help="voting evaluation: with --test, voting.repeats runs of voting.times passes; when "
                             "fine-tuning, a voting validation once the accuracy passes the released thresholds")
    parser.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"],
                        help="continue the experiment from its ckpt-last.pth (with --opts: the changed keys are "
                             "listed, the schedule follows a new max_epoch, a new lr applies; the model's shape "
                             "cannot change). --resume auto: continue when the run has a ckpt-last.pth, else start "
                             "it (for requeued jobs and torchrun --max-restarts) (default: a new run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an experiment directory that already holds checkpoints")
    parser.add_argument("--test", action="store_true", help="evaluate the classifier --ckpts on dataset.test")
    parser.add_argument("--finetune_model", action="store_true", help="fine-tune the pre-trained model --ckpts")
    parser.add_argument("--scratch_model", action="store_true", help="train the classifier from an initialised model")
    parser.add_argument("--mode", choices=["easy", "median", "hard", None], default=None,
                        help="kept for released scripts: appended to the experiment name (default: none)")
    parser.add_argument("--way", type=int, default=-1, help="few-shot: classes per episode (5 or 10; -1: not few-shot)")
    parser.add_argument("--shot", type=int, default=-1, help="few-shot: training shapes per class (10 or 20; -1: not "
                                                              "few-shot)")
    parser.add_argument("--fold", type=int, default=-1, help="few-shot: fold index (the <fold>.pkl of "
                                                              "DATA_PATH/<way>way_<shot>shot/)")
    add_common_args(parser, "device", "amp", "fps_backend", "embed_compute", "bn_recalibration")
    parser.add_argument("--experiment_root", type=str, default="./experiments", help="where experiments go")
    add_common_args(parser, "data_root", "no_progress", "opts")
    return parser


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit status 2, the reason on stderr) for flags that do not go together."""
    fail = parser.error
    job_flags = [flag for flag, given in (("test", args.test), ("finetune_model", args.finetune_model),
                                          ("scratch_model", args.scratch_model)) if given]
    if len(job_flags) > 1:
        fail(f"--{' and --'.join(job_flags)} cannot be combined: give one job (--test evaluates --ckpts, "
             f"--finetune_model fine-tunes it, --scratch_model trains from scratch)")
    if args.test and args.resume:
        fail("--test and --resume cannot both be given: --resume continues training")
    if args.resume is True and args.start_ckpts is not None:  # --resume auto may start the run from them
        fail("--resume and --start_ckpts cannot both be given: --resume reloads the run's own ckpt-last.pth")
    if args.test and args.ckpts is None:
        fail("--test needs --ckpts (the checkpoint to evaluate)")
    if args.finetune_model and args.ckpts is None:
        fail("--finetune_model needs --ckpts (the pre-trained model)")
    if args.scratch_model and args.ckpts is not None:
        fail("--scratch_model trains from an initialised model: --ckpts would be ignored (use --finetune_model)")
    if args.vote and not job_flags:
        fail("--vote is for classifiers: give it with --test (or when fine-tuning), not in pre-training")
    if (args.way == -1) != (args.shot == -1):
        fail("--way and --shot go together (few-shot: e.g. --way 5 --shot 10 --fold 0)")
    if args.fold != -1 and args.way == -1:
        fail("--fold needs --way and --shot (few-shot)")
    if args.way != -1 and not job_flags:
        fail("--way / --shot / --fold are for few-shot fine-tuning or testing: add --finetune_model, "
             "--scratch_model or --test")
    if args.val_freq < 1:
        fail(f"--val_freq must be >= 1, got {args.val_freq}")
    if args.num_workers < 0:
        fail(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.config is None and not args.test:
        fail("--config is required (only --test can do without: it reads the run's saved config.yaml)")


def find_test_config(parser: argparse.ArgumentParser, ckpts: str) -> str:
    """The saved run config for ``--test --ckpts`` without ``--config``, or ``parser.error``."""
    from utils.config import RUN_CONFIG, run_config_of

    found = run_config_of(ckpts)
    if found is None:
        where = os.path.join(os.path.dirname(os.path.abspath(ckpts)), RUN_CONFIG)
        parser.error(f"--test without --config: no saved config for --ckpts {ckpts} (looked for {where}"
                     f"{' and the .json beside it' if ckpts.endswith('.safetensors') else ''}); give --config")
    return found


def get_args(argv=None) -> argparse.Namespace:
    """``main.py``'s flags, checked together (:func:`check_combinations`). Two are completed here:
    ``--config`` of ``--test`` without one (the run's saved config, ``config_from_run``), and
    ``--start_ckpts`` from a pre-training ``--ckpts`` (a warm start, ``ckpts_warm_start``). Every
    other derived setting is made once, by :func:`utils.settings.build_run_settings`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    args.config_from_run = False
    if args.config is None:
        args.config = find_test_config(parser, args.ckpts)
        args.config_from_run = True
    args.ckpts_warm_start = False
    if args.ckpts is not None and not (args.test or args.finetune_model or args.scratch_model):
        # Pre-training: --ckpts is a warm start, the same as --start_ckpts (weights only, fresh optimizer).
        if args.resume is True:  # --resume auto: a new run starts from --ckpts, a requeued one continues
            parser.error("--resume and --ckpts cannot both be given in pre-training (--ckpts is a warm start; "
                         "--resume reloads the run's ckpt-last.pth)")
        if args.start_ckpts is not None and args.start_ckpts != args.ckpts:
            parser.error("pre-training: give --ckpts or --start_ckpts (the same warm start), not both")
        args.start_ckpts = args.ckpts
        args.ckpts_warm_start = True
    if "LOCAL_RANK" in os.environ:
        args.local_rank = int(os.environ["LOCAL_RANK"])
    return args
