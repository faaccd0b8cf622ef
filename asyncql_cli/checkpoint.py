"""Checkpoints: tensors and plain data only, written atomically, loaded weights-only.

A checkpoint is a dict with `format`, `env_id`, `obs_shape`, `num_actions`, `network`,
`config` (the resolved run config), `q_net`, `target_net`, `optimizer`, `updates`,
`env_steps` (and `eval_return` for best.pt). It is written to a temporary file in the same
directory, fsynced, then renamed over the old one, so a kill mid-write never replaces a
good file with a broken one. Loading always uses `torch.load(weights_only=True)`: a file
holding pickled objects or code is refused and nothing in it runs.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from asyncql_cli.config import BadInput

FORMAT = "asyncql-checkpoint-v1"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda handle: torch.save({"format": FORMAT, **state}, handle))


def write_json(path: Path, data: dict[str, Any]) -> None:
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda handle: handle.write(payload))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line BadInput naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise BadInput(
            f"checkpoint {path} was refused: it holds more than tensors and plain data "
            f"(weights-only load: {reason[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BadInput(f"checkpoint {path} is not a readable torch file ({str(exc)[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"checkpoint {path} is not an asyncql checkpoint (no '{FORMAT}' marker)")
    return state


def check_compatible(state: dict[str, Any], path: Path, env_id: str, obs_shape: tuple[int, ...],
                     num_actions: int, network: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another env or network shape, naming the mismatch."""
    checks = [
        ("env id", state.get("env_id"), env_id),
        ("observation shape", tuple(state.get("obs_shape", ())), tuple(obs_shape)),
        ("number of actions", state.get("num_actions"), num_actions),
        ("network.hidden", list(state.get("network", {}).get("hidden", [])), list(network["hidden"])),
        ("network.dueling", state.get("network", {}).get("dueling"), network["dueling"]),
        ("network.layer_norm", bool(state.get("network", {}).get("layer_norm", False)),
         bool(network.get("layer_norm", False))),
    ]
    for what, found, expected in checks:
        if found != expected:
            raise BadInput(f"checkpoint {path} has {what} {found!r}, but this run needs {expected!r}")


REPLAY_FORMAT = "asyncql-replay-v1"


def save_replay(storage: Any, path: Path) -> int:
    """Main process, after every writer has stopped: each segment's held rows, oldest first,
    as plain tensors. Returns the number of rows saved."""
    slots, lengths = [], []
    size = storage.segment_size
    for segment in range(storage.num_segments):
        cursor = int(storage.cursors[segment])
        held = min(cursor, size)
        logical = torch.arange(cursor - held, cursor)
        slots.append(segment * size + logical % size)
        lengths.append(held)
    index = torch.cat(slots)
    payload = {"format": REPLAY_FORMAT, "segment_lengths": lengths,
               **{name: getattr(storage, name).index_select(0, index) for name in storage.columns}}
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle))
    return int(index.numel())


def load_replay_into(storage: Any, path: Path) -> int:
    """Main process, before any actor starts: refill the storage from `save_replay`'s file.
    Saved segment j goes to segment j mod (number of segments now). Returns rows restored."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != REPLAY_FORMAT:
        raise BadInput(f"replay file {path} is not an asyncql replay")
    missing = [name for name in storage.columns if name not in state]
    if missing:
        raise BadInput(f"replay file {path} holds another kind of replay (no {', '.join(missing)}); "
                       "it cannot refill this run's buffer")
    begin = 0
    for j, length in enumerate(state["segment_lengths"]):
        rows = {name: state[name][begin:begin + length] for name in storage.columns}
        if length:
            storage.write(j % storage.num_segments, rows)
        begin += length
    return begin
