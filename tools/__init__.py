"""Runners (released names): ``pretrain_run_net``, ``finetune_run_net``, ``test_run_net``."""
from .runner_pretrain import run_net as pretrain_run_net  # noqa: F401
from .runner_finetune import run_net as finetune_run_net, test_net as test_run_net  # noqa: F401
