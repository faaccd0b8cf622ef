"""The `asyncql` console script: verbs routed to Hydra (train) or to small parsers.

    asyncql train [OVERRIDES...]   Hydra app over conf/ (sweeps with -m, --cfg job, --help)
    asyncql eval run_dir=DIR ...   greedy evaluation of a saved checkpoint
    asyncql bench ...              throughput benchmarks

Bad input anywhere (config composition, validation, env, checkpoint) is printed as one line
`asyncql: error: ...` with exit code 2 and no traceback.
"""

from __future__ import annotations

import multiprocessing
import platform
import sys
import threading
from typing import Any, Optional

from asyncql_cli.cli.common import fail
from asyncql_cli.errors import EXIT_BAD_INPUT, BadInput

VERBS = ("train", "eval", "bench")
USAGE = (
    "usage: asyncql {train,eval,bench} ...\n"
    "  asyncql train [OVERRIDES...]           train (Hydra overrides, -m to sweep, --help)\n"
    "  asyncql eval run_dir=DIR [checkpoint=best|last|PATH] [eval.episodes=N] [eval.seed=S]\n"
    "  asyncql bench [--seconds S] [--json PATH]  throughput benchmarks"
)
SUPPORTED_SYSTEMS = ("Linux",)


def check_system(verb: str) -> None:
    """Training and bench need Linux (shared memory through file descriptors, prctl, /proc);
    `asyncql eval` runs anywhere torch and gymnasium do."""
    system = platform.system()
    if verb != "eval" and system not in SUPPORTED_SYSTEMS:
        raise BadInput(f"asyncql {verb} runs on Linux only (this is {system}); "
                       "`asyncql eval` runs here, or train in a Linux container or WSL2")


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else EXIT_BAD_INPUT)
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        fail(f"unknown command {verb!r}; expected one of {', '.join(VERBS)}")
    try:
        check_system(verb)
        if verb == "train":
            from asyncql_cli.cli.train_task import run_train  # each verb imports only what it needs

            run_train(rest)
        elif verb == "eval":
            from asyncql_cli.cli.eval_cmd import run_eval

            run_eval(rest)
        else:
            from asyncql_cli.cli.bench import run_bench

            run_bench(rest)
    except BadInput as exc:
        fail(str(exc))


def entry() -> None:
    """The `asyncql` command: `main`, then an exit that skips tearing down the interpreter.

    Every run has joined its children, closed its files and written its results by the time
    `main` returns; what a normal exit would add is the teardown of torch's modules, a measurable
    share of a short run's wall-clock (benchmarks/RESULTS.md). The exit hooks still run in their
    usual order. Only when nothing else is left running: a thread or a child process (joblib's
    workers after a sweep) gets Python's normal shutdown, and so does an exception other than
    SystemExit (traceback, exit 1)."""
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
    if threading.active_count() > 1 or multiprocessing.active_children():
        raise SystemExit(code)
    from asyncql_cli.compat import exit_without_teardown  # imports torch: kept off `asyncql train`'s start

    exit_without_teardown(code)


if __name__ == "__main__":
    entry()
