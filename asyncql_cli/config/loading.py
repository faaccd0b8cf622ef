"""A composed config -> the typed `Config` every component is built from (the one config path).

`load_config` refuses unknown keys (`config.keys`), unset required values and out-of-range
values with one line each, resolves every interpolation here in the parent (`${hydra:...}` does
not resolve in spawned children, hydra#2772), and returns the schema object, which pickles to
children as plain dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asyncql_cli.config.keys import OPEN_KEYS, SCHEMA_KEYS, is_known, unknown_key_message, unknown_keys
from asyncql_cli.config.schema import Config
from asyncql_cli.config.validation import validate
from asyncql_cli.errors import BadInput


def load_config(cfg: DictConfig) -> Config:
    unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=False))
    if unknown:
        raise BadInput(unknown_key_message(unknown[0]))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise BadInput(f"config {missing[0]} is required but not set (e.g. {missing[0]}=...)")
    structured = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    config = OmegaConf.to_object(structured)
    assert isinstance(config, Config)
    validate(config)
    return config


def load_saved_config(path: Any) -> Config:
    """A run's recorded config (`<run dir>/.hydra/config.yaml`) as the typed schema object, for
    reading a finished run: keys this version does not know are left out, and nothing is checked
    against this machine (a run trained on a GPU is evaluated on a laptop)."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line
        raise BadInput(f"{path} is not a readable config ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(saved, dict):
        raise BadInput(f"{path} is not a readable config (not a mapping)")
    known = {key: value for key, value in saved.items() if key in SCHEMA_KEYS}
    for section, values in known.items():
        if isinstance(values, dict) and section not in OPEN_KEYS:
            known[section] = {k: v for k, v in values.items() if is_known(f"{section}.{k}")}
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), known))
    except Exception as exc:  # noqa: BLE001 - wrong types or missing values: one line
        raise BadInput(f"{path} does not hold an asyncql config ({' '.join(str(exc).split())[:160]})") from None
    assert isinstance(config, Config)
    return config


def as_dict(config: Config) -> dict[str, Any]:
    """Plain nested data (checkpoints record it; TensorBoard's hparams flatten it)."""
    return dataclasses.asdict(config)
