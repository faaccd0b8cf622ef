"""Sweep job directory names: `<job number>_<env id>_<swept overrides>`.

`job_dirname` is the `${job_dirname:}` resolver of hydra.sweep.subdir; `swept_keys` is set at the
start of a sweep (and in each launcher worker) so names hold only what the sweep varies.
"""

from __future__ import annotations

import re
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from asyncql_cli.cli.common import parse_overrides

MAX_NAME = 160  # characters of a job dir name (file names stop at 255 bytes)

swept: Optional[frozenset[str]] = None  # what the running sweep varies (set at its start)


def swept_keys(config: DictConfig) -> frozenset[str]:
    """Keys a sweep varies: sweep overrides of the command line (`seed=0,1`) and the
    sweeper's `params` (Optuna's search space, the basic sweeper's params)."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    texts = [f"{k}={v}" for k, v in params.items()] if isinstance(params, DictConfig) else []
    # the command line comes last and wins: a fixed value there takes a key out of the search
    texts += [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    swept: set[str] = set()
    for override in parse_overrides(texts):
        if override.is_sweep_override():
            swept.add(override.key_or_group)
        else:
            swept.discard(override.key_or_group)
    return frozenset(swept)


def _short(value: str) -> str:
    """A float with many digits (Optuna's samples) shortened to 4 significant ones."""
    if re.fullmatch(r"-?\d*\.\d{5,}(e-?\d+)?", value):
        return format(float(value), ".4g")
    return value


def job_dirname(_root_: DictConfig) -> str:
    """The `${job_dirname:}` resolver of hydra.sweep.subdir: `<job number>_<env id>` then the
    job's values of the swept keys (all its overrides when the sweep is unknown), without
    hydra.job.config.override_dirname.exclude_keys, e.g. `3_CartPole-v1_algo.lr=0.0003,seed=1`.
    Safe as one file name: separators and shell-hostile characters become `_`, long names
    are cut (the job number keeps them unique)."""
    num = OmegaConf.select(_root_, "hydra.job.num", default=0)
    env_id = str(OmegaConf.select(_root_, "env.id", default="") or "")
    exclude = set(OmegaConf.select(_root_, "hydra.job.config.override_dirname.exclude_keys", default=[]) or [])
    texts = [str(o) for o in OmegaConf.select(_root_, "hydra.overrides.task", default=[]) or []]
    items = sorted(
        f"{o.get_key_element()}={_short(o.get_value_element_as_str())}" for o in parse_overrides(texts)
        if o.key_or_group not in exclude and (swept is None or o.key_or_group in swept)
    )
    name = "_".join(part for part in (env_id, ",".join(items)) if part)
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", name)
    return f"{num}_{name}"[:MAX_NAME] if name else str(num)
