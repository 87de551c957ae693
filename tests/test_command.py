"""The command skeleton every run goes through (engine.command.run_command): the run directory is
locked while the job runs and released after it, config.yaml is written before the job, and an
input error raised by the job reaches the run's log file in the console's words."""
from __future__ import annotations

import pytest
import yaml

from engine.command import RunStart, run_command
from utils.cli import InputError
from utils.rundir import LOCK_NAME, open_run_dir
from utils.settings import RunSettings


def start(tmp_path, save_config=True):
    folder = tmp_path / "run"
    settings = RunSettings(job="pretrain", experiment_path=str(folder), tfboard_path=None, log_name="t",
                           config_path="")
    return folder, lambda logger: RunStart(settings, {"max_epoch": 3}, lambda: open_run_dir(str(folder), logger=logger),
                                           log_file=str(folder / "run.log"), save_config=save_config)


def test_the_job_runs_locked_after_the_config_is_saved_and_the_lock_is_released(tmp_path):
    folder, prepare = start(tmp_path)
    seen = {}

    def job(settings, config, stop, logger):
        seen["locked"] = (folder / LOCK_NAME).is_file()
        seen["config"] = yaml.safe_load((folder / "config.yaml").read_text())
        seen["stop"] = stop.requested
        return 7

    assert run_command("none", "t", prepare, job) == 7
    assert seen == {"locked": True, "config": {"max_epoch": 3}, "stop": False}
    assert not (folder / LOCK_NAME).exists()


def test_an_input_error_of_the_job_is_in_the_run_log_and_the_lock_is_released(tmp_path):
    folder, prepare = start(tmp_path, save_config=False)

    def job(settings, config, stop, logger):
        raise InputError("dataset.train: no shapes in /nowhere")

    with pytest.raises(InputError, match="no shapes"):
        run_command("none", "t", prepare, job)
    assert "error: dataset.train: no shapes in /nowhere [InputError]" in (folder / "run.log").read_text()
    assert not (folder / LOCK_NAME).exists() and not (folder / "config.yaml").exists()
