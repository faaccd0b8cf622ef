"""The `asyncql` console script: verbs routed to Hydra (train) or to small parsers.

    asyncql train [OVERRIDES...]   Hydra app over conf/ (sweeps with -m, --cfg job, --help)
    asyncql eval run_dir=DIR ...   greedy evaluation of a saved checkpoint
    asyncql bench ...              throughput benchmarks

Bad input anywhere (config composition, validation, env, checkpoint) is printed as one line
`asyncql: error: ...` with exit code 2 and no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Optional

from asyncql_cli.config import BadInput
from asyncql_cli.process_server import start_process_server, stop_process_server

EXIT_BAD_INPUT = 2
VERBS = ("train", "eval", "bench")
USAGE = (
    "usage: asyncql {train,eval,bench} ...\n"
    "  asyncql train [OVERRIDES...]           train (Hydra overrides, -m to sweep, --help)\n"
    "  asyncql eval run_dir=DIR [checkpoint=best|last|PATH] [eval.episodes=N] [eval.seed=S]\n"
    "  asyncql bench [--seconds S] [--json PATH]  throughput benchmarks"
)


def config_dir() -> str:
    """`conf/` beside the package in a source tree or editable install, else the copy
    installed inside the package by `pip install .`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError("asyncql: cannot find its conf/ directory")  # a broken install


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"asyncql: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_BAD_INPUT)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text} ({' '.join(str(cause).split())})"
    return text or type(exc).__name__


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("pid"):
        # cached: a sweep's jobs in joblib workers resolve the same hydra.sweep.dir
        OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True)
    if not OmegaConf.has_resolver("sanitize"):
        OmegaConf.register_new_resolver(
            "sanitize", lambda value: str(value).replace("/", "_").replace(":", "_")
        )
    if not OmegaConf.has_resolver("job_dirname"):  # hydra.sweep.subdir
        from asyncql_cli.sweep import job_dirname

        OmegaConf.register_new_resolver("job_dirname", job_dirname)


def _patch_hydra_error_reporting() -> None:
    """Hydra prints composition errors over several lines and exits 1; asyncql's contract
    is one line and exit 2 for every user error, so wrap its reporting function."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    original: Callable[[Any], Any] = hydra_utils.run_and_report

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except BadInput as exc:
            fail(str(exc))
        except (HydraException, OmegaConfBaseException) as exc:
            fail(f"config: {_one_line(exc)}")
        except OSError as exc:
            if _task_started:  # raised by the run itself: not a run-dir problem
                return original(_raiser(exc))
            # Before the task runs, Hydra only touches the filesystem to create the run
            # (or sweep) dir and write .hydra/ and the log file there.
            where = f": {exc.filename}" if exc.filename else ""
            fail(f"cannot create or write the run directory ({exc.strerror or exc}{where}); "
                 "pass a writable hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)")
        except Exception as exc:  # anything else: Hydra's own report (traceback), exit 1
            return original(_raiser(exc))

    hydra_utils.run_and_report = run_and_report


def _raiser(error: BaseException) -> Callable[[], Any]:
    def reraise() -> Any:
        raise error

    return reraise


_task_started = False  # set once Hydra has made the run dir and calls the task


def _train_task(cfg: Any) -> Any:
    """One run. In a sweep (MULTIRUN) a failure never raises (Hydra 1.3 would abort the
    sweep): the job gets a summary.json with its error and returns its exit code, or the
    objective for the Optuna sweeper (asyncql_cli.sweep.job_result)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from asyncql_cli import sweep
    from asyncql_cli.config import validate

    global _task_started
    _task_started = True
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    log = logging.getLogger("asyncql")
    if multirun:
        sweep.prepare_worker()  # a joblib worker's children must be spawned, not "loky"
    if multirun and sweep.sweep_interrupted(hydra_cfg):
        log.warning("the sweep was interrupted: skipping this job")
        sweep.record_failure(run_dir, cfg, "skipped", "the sweep was interrupted before this job")
        return sweep.job_result(hydra_cfg, run_dir, 130)
    log.info("composed config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        validate(cfg)  # before importing torch and the supervisor: config errors fail fast
        if cfg.parallelism.name != "serial":
            start_process_server()  # imports torch for the children while we import it here
        from asyncql_cli.supervisor import train

        code = train(cfg, run_dir)
    except BadInput as exc:
        # Exit here: a BadInput returned to Hydra would add its own "Error executing job" line.
        log.error("bad input: %s", exc)  # also in train.log
        if not multirun:
            fail(str(exc))
        sweep.record_failure(run_dir, cfg, "bad_input", str(exc))
        code = EXIT_BAD_INPUT
    except Exception as exc:
        logging.getLogger("asyncql").exception("run failed")  # the cause lands in train.log
        if not multirun:
            raise
        sweep.record_failure(run_dir, cfg, "error", f"{type(exc).__name__}: {_one_line(exc)}")
        code = 1
    finally:
        stop_process_server()  # the run stops it after joining its children; not if it failed before
    if multirun:
        return sweep.job_result(hydra_cfg, run_dir, code)
    raise SystemExit(code)


def starts_children_early(argv: list[str]) -> bool:
    """A single run that will start actor processes: its forkserver can start before Hydra
    even composes the config (a second of torch imports off the path to the first update).
    Sweeps, serial runs and Hydra's informational flags start it later or never."""
    informational = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve",
                     "-m", "--multirun", "--shell-completion", "-sc"}
    return not any(arg in informational or arg.startswith("parallelism=serial") for arg in argv)


def run_train(argv: list[str]) -> None:
    if starts_children_early(argv):
        start_process_server()  # stopped by the run, or below if the config never composes
    try:
        _run_hydra(argv)
    finally:
        stop_process_server()


def _run_hydra(argv: list[str]) -> None:
    import hydra

    from asyncql_cli.config import register_configs

    register_configs()
    _register_resolvers()
    _patch_hydra_error_reporting()
    task = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(_train_task)
    from asyncql_cli.resume import resume_argv

    sys.argv = ["asyncql train", *resume_argv(argv)]
    task()


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else EXIT_BAD_INPUT)
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        fail(f"unknown command {verb!r}; expected one of {', '.join(VERBS)}")
    try:
        if verb == "train":
            run_train(rest)
        elif verb == "eval":
            from asyncql_cli.evaluate_cli import run_eval

            run_eval(rest)
        else:
            from asyncql_cli.bench import run_bench

            run_bench(rest)
    except BadInput as exc:
        fail(str(exc))


def entry() -> None:
    """The `asyncql` command: `main`, then an exit that skips tearing down the interpreter.

    Every run has joined its children, closed its files and written its results by the time
    `main` returns (or exits); what a normal exit would add is the teardown of torch's
    modules, a measurable share of a short run's wall-clock. The exit hooks still run, in
    their usual order (logging; multiprocessing, which removes the forkserver's socket
    directory). Only when nothing else is left running: a thread or a child process (joblib's
    workers after a sweep) gets Python's normal shutdown. An exception other than SystemExit
    also takes Python's normal path (traceback, exit 1)."""
    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)  # what Python does with SystemExit("message")
        code = 1
    import atexit
    import multiprocessing
    import threading

    if threading.active_count() > 1 or multiprocessing.active_children():
        raise SystemExit(code)  # e.g. joblib's workers after a sweep: they need the normal shutdown
    atexit._run_exitfuncs()  # every exit hook, in the order a normal exit runs them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
