"""Every key of the schema, and one-line refusals of keys that are not in it (typos).

A key the schema does not have is refused before anything starts, whether it was typed with or
without Hydra's `+` (which would otherwise append it and let the run ignore it), with the
nearest key offered: `unknown config key algo.lerning_rate (did you mean algo.lr?)`. Names from
other tools (Stable-Baselines3's `learning_rate`, `buffer_size`, ...) are matched as well. Open
dictionaries (`env.kwargs`: whatever the env accepts) stay open.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Optional, Union

from asyncql_cli.config.schema import Config

# keys of other tools users bring along, and ours for them
ALIASES = {
    "learning_rate": "algo.lr", "buffer_size": "buffer.capacity", "target_update_interval": "algo.target_update",
    "tau": "algo.target_tau", "learning_starts": "train.learning_starts",
    "total_timesteps": "train.total_env_steps", "num_envs": "parallelism.envs_per_actor",
    "n_steps": "algo.n_step", "exploration_final_eps": "exploration.linear_end",
    "exploration_initial_eps": "exploration.linear_start", "train_freq": "algo.replay_ratio",
    "net_arch": "network.hidden", "num_workers": "parallelism.num_actors", "discount": "algo.gamma",
    "clip_grad_norm": "algo.max_grad_norm", "grad_clip": "algo.max_grad_norm",
}
CLOSE_ENOUGH = 0.6  # difflib ratio from which a name is offered as the one meant


def _leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every key of the dataclass `cls` -> its type; nested dataclasses are walked."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        kind = _dataclass_in(hints[f.name])
        keys[name] = hints[f.name]
        if kind is not None:
            keys.update(_leaf_types(kind, name + "."))
    return keys


def _dataclass_in(hint: Any) -> Optional[type]:
    """The dataclass a type hint holds (also inside Optional[...]), if any."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if typing.get_origin(hint) is Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


SCHEMA_KEYS = _leaf_types(Config)
OPEN_KEYS = tuple(key for key, hint in SCHEMA_KEYS.items()
                  if typing.get_origin(hint) is dict or hint is dict)  # env.kwargs


def is_known(key: str) -> bool:
    return key in SCHEMA_KEYS or any(key.startswith(f"{open_key}.") for open_key in OPEN_KEYS)


def suggestion(key: str) -> Optional[str]:
    """The schema key most likely meant by `key`, if one is close enough."""
    leaf = key.rsplit(".", 1)[-1]
    section = key.rsplit(".", 1)[0] if "." in key else ""
    scored: list[tuple[float, str]] = []
    for known in SCHEMA_KEYS:
        known_leaf = known.rsplit(".", 1)[-1]
        score = difflib.SequenceMatcher(None, leaf, known_leaf).ratio()
        if known.startswith(f"{section}.") and section:
            score += 0.1  # the same section: more likely the one meant
        scored.append((score, known))
    for alias, known in ALIASES.items():
        scored.append((difflib.SequenceMatcher(None, leaf, alias).ratio() + 0.05, known))
    best_score, best = max(scored)
    return best if best_score >= CLOSE_ENOUGH else None


def unknown_key_message(key: str) -> str:
    hint = suggestion(key)
    return f"unknown config key {key}" + (f" (did you mean {hint}?)" if hint else "")


def unknown_keys(container: Any, prefix: str = "") -> list[str]:
    """Keys of a composed config (nested dicts) that the schema does not have."""
    found: list[str] = []
    for name, value in container.items():
        key = f"{prefix}{name}"
        if not is_known(key):
            found.append(key)
        elif isinstance(value, dict) and key not in OPEN_KEYS:
            found += unknown_keys(value, key + ".")
    return found
