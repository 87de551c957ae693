"""Building a model from a checkpoint's embedded config only after the config and the weights agree.

A checkpoint's ``config`` entry is input like any file: ``trans_dim: 16384`` or ``N_POINTS: 2e9``
in a 3 KB ``.pth`` would make the reader allocate until killed. :func:`build_checked` validates the
config with the checks of a config file (:func:`utils.validate.check_values`, including the limits
of :mod:`utils.limits`), builds the model on the ``meta`` device (no memory), refuses more
parameters than ``INTERMAE_MAX_MODEL_PARAMS`` and any key or shape that differs from the state
dict's, and only then builds it for real.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from easydict import EasyDict
from torch import nn

from utils.checkpoint import CheckpointError, load_state_dict_checked
from utils.cli import InputError
from utils.limits import check_count


def check_checkpoint_config(run_cfg: Mapping, source: str, model_cls: Optional[type] = None, job: str = "test") -> None:
    """The value checks of a config file on a checkpoint's (or a run's) config; a failure is one
    :class:`CheckpointError` line naming ``source``."""
    from utils.validate import check_values

    try:
        check_values(EasyDict(run_cfg), job, model_cls)
    except InputError as e:
        raise CheckpointError(f"{source}: {e}") from None


def build_checked(model_cfg: Mapping, state_dict: Mapping[str, Any], source: str,
                  build: Optional[Callable[[Any], nn.Module]] = None, strict: bool = True,
                  ignore_missing: Iterable[str] = ()) -> nn.Module:
    """``build(model_cfg)`` once the model it gives fits ``state_dict`` (keys and shapes, as
    :func:`utils.checkpoint.load_state_dict_checked` checks them) and has at most
    ``INTERMAE_MAX_MODEL_PARAMS`` parameters, both checked on the ``meta`` device before anything
    is allocated. The weights are not loaded. Refusals are one-line CheckpointError / LimitError."""
    if build is None:
        from models import build_model_from_cfg as build
    try:
        with torch.device("meta"):
            probe = build(EasyDict(model_cfg))
    except InputError as e:
        if source in str(e):
            raise
        # a config key the model refuses, in a config that came with the weights (no file of its own)
        raise CheckpointError(f"{source}: {e}") from None
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")  # torch's can span lines
        raise CheckpointError(f"{source}: its config does not describe a model this code builds: "
                              f"{type(e).__name__}: {first[:200]}") from None
    n_params = sum(p.numel() for p in probe.parameters())
    check_count(n_params, "model_params", f"{source}: the parameters of the model of its config "
                                          f"({type(probe).__name__})")
    with warnings.catch_warnings():  # loading into meta tensors is a (warned) no-op: only the check counts
        warnings.simplefilter("ignore", UserWarning)
        load_state_dict_checked(probe, state_dict, strict=strict, source=source, ignore_missing=ignore_missing)
    del probe
    return build(EasyDict(model_cfg))
