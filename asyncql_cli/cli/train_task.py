"""`asyncql train`: the Hydra task of one run (or of one job of a sweep).

In a sweep (MULTIRUN) a failure never raises (Hydra 1.3 would abort the sweep): the job gets a
summary.json with its error and returns its exit code, or the objective for the Optuna sweeper
(`cli.sweep_job.job_result`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from asyncql_cli.cli import sweep_job
from asyncql_cli.cli.common import fail, one_line
from asyncql_cli.cli.hydra_app import (
    INFORMATIONAL,
    check_command_line,
    check_keys,
    config_dir,
    open_dictionaries,
    register_resolvers,
)
from asyncql_cli.cli.resume_args import resume_argv
from asyncql_cli.config.loading import load_config
from asyncql_cli.errors import EXIT_BAD_INPUT, EXIT_ERROR, BadInput
from asyncql_cli.runtime.forkserver import start_process_server, stop_process_server

log = logging.getLogger("asyncql")


def train_task(cfg: DictConfig) -> Any:
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        sweep_job.prepare_worker()  # a joblib worker's children must not be "loky"
    if multirun and sweep_job.sweep_interrupted(hydra_cfg):
        log.warning("the sweep was interrupted: skipping this job")
        sweep_job.record_failure(run_dir, cfg, "skipped", "the sweep was interrupted before this job")
        return sweep_job.job_result(hydra_cfg, run_dir, 130)
    log.info("composed config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        config = load_config(cfg)  # before torch is imported: config errors fail fast
        if config.parallelism.name != "serial":
            start_process_server()  # imports torch for the children while we import it below
        from asyncql_cli.runtime.run import train  # torch: while the forkserver imports it too

        code = train(config, run_dir)
    except BadInput as exc:
        # Exit here: a BadInput returned to Hydra would add its own "Error executing job" line.
        log.error("bad input: %s", exc)  # also in train.log
        if not multirun:
            fail(str(exc))
        sweep_job.record_failure(run_dir, cfg, "bad_input", str(exc))
        code = EXIT_BAD_INPUT
    except Exception as exc:
        log.exception("run failed")  # the cause lands in train.log
        if not multirun:
            raise
        sweep_job.record_failure(run_dir, cfg, "error", f"{type(exc).__name__}: {one_line(exc)}")
        code = EXIT_ERROR
    finally:
        stop_process_server()  # the run stops it after joining its children; not if it failed before
    if multirun:
        return sweep_job.job_result(hydra_cfg, run_dir, code)
    raise SystemExit(code)


def starts_children_early(argv: list[str]) -> bool:
    """A single run that will start child processes: its forkserver can start before Hydra
    composes the config (torch's imports off the path to the first update). Sweeps, serial runs
    and Hydra's informational flags start it later or never."""
    return not any(arg in INFORMATIONAL or arg in ("-m", "--multirun") or arg.startswith("parallelism=serial")
                   for arg in argv)


def run_train(argv: list[str]) -> None:
    try:
        argv = open_dictionaries(resume_argv(argv))
        check_keys(argv)
        check_command_line(argv)  # bad input exits here, before any process starts
        if starts_children_early(argv):
            start_process_server()  # stopped by the run, or below if the run never starts
        register_resolvers()
        task = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(train_task)
        sys.argv = ["asyncql train", *argv]
        task()
    finally:
        stop_process_server()
