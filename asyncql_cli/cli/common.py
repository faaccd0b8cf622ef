"""What the command's modules share: the one-line error, override parsing, sweep constants.

A leaf of `cli/`: it imports no other module of it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from asyncql_cli.errors import EXIT_BAD_INPUT

log = logging.getLogger("asyncql")

INTERRUPT_MARKER = ".interrupted"  # in a sweep dir: jobs not yet started are skipped
FINISHED = ("budget", "solved", "max_seconds")  # exit reasons of a job that ended well
INTERRUPTED = ("interrupted", "skipped")


def fail(message: str) -> NoReturn:
    """The bad-input contract: one line on stderr, exit code 2."""
    sys.stderr.write(f"asyncql: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_BAD_INPUT)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text} ({' '.join(str(cause).split())})"
    return text or type(exc).__name__


def parse_overrides(texts: list[str]) -> list[Any]:
    """Hydra's parse of each override; ones it cannot parse are left out (Hydra reports them)."""
    parser = OverridesParser.create()
    parsed = []
    for text in texts:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except Exception:  # noqa: BLE001 - not ours to report: Hydra rejects it with a proper message
            continue
    return parsed


def is_optuna(hydra_cfg: Any) -> bool:
    target = OmegaConf.select(hydra_cfg, "sweeper._target_", default="") or ""
    return "optuna" in str(target).lower()


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
