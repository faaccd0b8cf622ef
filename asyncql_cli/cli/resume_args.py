"""`asyncql train resume=DIR`: continue a run in its own directory.

The command line is rebuilt from the run's recorded overrides (`DIR/.hydra/overrides.yaml`)
so the same config is composed again, followed by whatever the user adds now (for example
a larger `train.total_env_steps`), with `hydra.run.dir=DIR` so Hydra writes into the same
run directory instead of making a new one.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from asyncql_cli import rundir
from asyncql_cli.errors import BadInput

DROPPED = ("hydra.run.dir=", "resume=")


def resume_argv(argv: list[str]) -> list[str]:
    """Return argv unchanged unless it holds `resume=DIR`; then the argv that resumes DIR."""
    given = [arg for arg in argv if arg.startswith("resume=")]
    if not given:
        return argv
    if any(arg in ("-m", "--multirun") for arg in argv):
        raise BadInput("resume=DIR continues one run; it cannot be combined with -m/--multirun")
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not run_dir.is_dir():
        raise BadInput(f"resume={run_dir}: no such run directory")
    if not overrides_file.is_file():
        raise BadInput(f"resume={run_dir}: no .hydra/overrides.yaml; is it a directory made by asyncql train?")
    if not (run_dir / rundir.CHECKPOINTS / rundir.LAST).is_file():
        raise BadInput(f"resume={run_dir}: no checkpoints/last.pt to continue from")
    added = [arg for arg in argv if not arg.startswith(DROPPED)]
    replaced = {_key(arg) for arg in added}
    recorded = [str(o) for o in OmegaConf.load(overrides_file)
                if not str(o).startswith(DROPPED) and _key(str(o)) not in replaced]
    return [*recorded, *added, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")
