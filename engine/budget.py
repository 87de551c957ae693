"""The optimizer-step budget of a pre-training run, and the one-line warning for a budget too small.

A masked autoencoder learns per optimizer step, not per epoch: a folder of ``n`` shapes at batch
``b`` gives ``ceil(n / b)`` steps an epoch (``floor`` when the loader drops the last, short batch).
On real ModelNet10 (docs/real-data.md, "How many steps before own-folder pre-training pays") a
linear probe of the demo-size encoder first falls below an untrained encoder's and climbs back
past it only after about a thousand optimizer steps at batch 32, on 280, 1,000 and 3,991 shapes
alike: below it up to :data:`MEASURED_FUTILE_STEPS` steps, level with it between 750 and 1,120,
above it from 1,240, and fine-tuning from 1,280 to 1,364 steps beat fine-tuning from scratch. The
released recipe runs about 1,300 steps an epoch for 300 epochs. A run whose warm-up lasts as long as
the run itself never reaches its learning rate. The threshold is the config key ``min_pretrain_steps`` (0: no warning).
"""
from __future__ import annotations

from typing import Optional

# The largest step count measured (docs/real-data.md) at which pre-training on real shapes still gave
# a linear probe below an untrained encoder's (992 steps on 3,991 ModelNet10 shapes, 960 on 280), and
# the threshold of the warning: the step count by which every measured run (280, 1,000 and 3,991
# shapes) was above it (1,240 and 1,280 steps; 1,116 and 1,120 were level with it).
MEASURED_FUTILE_STEPS = 992
MIN_PRETRAIN_STEPS = 1200


def planned_steps(batches_per_epoch: int, n_epochs: int, accum: int = 1) -> int:
    """Optimizer steps of a run: ``batches_per_epoch * n_epochs`` batches, one step per ``accum``
    (``step_per_update``) of them."""
    return (max(int(batches_per_epoch), 0) * max(int(n_epochs), 0)) // max(int(accum), 1)


def short_pretraining_warning(batches_per_epoch: int, n_epochs: int, accum: int = 1, warmup_epochs: int = 0,
                              min_steps: int = MIN_PRETRAIN_STEPS) -> Optional[str]:
    """A one-line warning when a pre-training run is too short to learn, else None: fewer than
    ``min_steps`` optimizer steps planned, or a warm-up (``scheduler.kwargs.initial_epochs``) of at
    least as many epochs as the run (its learning rate never reaches the configured one)."""
    steps = planned_steps(batches_per_epoch, n_epochs, accum)
    problems = []
    if steps < min_steps:
        per_update = f" / step_per_update {accum}" if accum > 1 else ""
        problems.append(f"{steps} optimizer steps planned ({batches_per_epoch} batches an epoch x {n_epochs} epochs"
                        f"{per_update}), fewer than {min_steps}: encoders pre-trained on real shapes for up to "
                        f"{MEASURED_FUTILE_STEPS} steps were measured worse than untrained ones, on 280 shapes "
                        f"as on 3,991 (docs/real-data.md)")
    if n_epochs > 0 and warmup_epochs >= n_epochs:
        problems.append(f"the warm-up (scheduler.kwargs.initial_epochs = {warmup_epochs}) covers all {n_epochs} "
                        f"epochs, so the learning rate never reaches its configured value")
    if not problems:
        return None
    return ("; ".join(problems) + ": raise max_epoch (and scheduler.kwargs.epochs), lower "
            "scheduler.kwargs.initial_epochs, or fine-tune from a checkpoint pre-trained on a large corpus (--ckpts)")
