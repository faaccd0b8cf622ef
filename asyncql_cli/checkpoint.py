"""Checkpoints and replay snapshots: tensors and plain data only, written atomically, loaded
weights-only.

A checkpoint is a dict with `format`, `env_id`, `obs_shape`, `num_actions`, `network`, `config`
(the run's config as plain data), `q_net` and, for last.pt, `target_net`, `optimizer`, `updates`,
`env_steps` (best.pt adds `eval_return`). It is written to a temporary file in the same
directory, fsynced, then renamed over the old one, so a kill mid-write never replaces a good
file with a broken one. Loading always uses `torch.load(weights_only=True)`: a file holding
pickled objects or code is refused and nothing in it runs. Any file that is not a readable
asyncql checkpoint (empty, truncated, random bytes, text, a zip, a foreign pickle, another
env's or network's checkpoint) is one `BadInput` line naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from asyncql_cli.config.schema import NetworkConfig
from asyncql_cli.errors import BadInput

FORMAT = "asyncql-checkpoint-v1"
REPLAY_FORMAT = "asyncql-replay-v1"
REASON_CHARS = 160  # of a loader's own message, quoted in the one-line refusal


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


def write_bytes(path: Path, data: bytes) -> None:
    """A file that came from another machine (parallelism=ray), written atomically."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_json(path: Path, data: dict[str, Any]) -> None:
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda handle: handle.write(payload))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:REASON_CHARS]


def _load(path: Path, what: str) -> Any:
    """torch.load, weights-only; every failure is one line naming the file."""
    if not path.is_file():
        raise BadInput(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes are, the user gets one line
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise BadInput(f"{what} {path} was refused: it holds more than tensors and plain data "
                           f"(weights-only load: {_first_line(exc)})") from None
        raise BadInput(f"{what} {path} is not a readable torch file ({type(exc).__name__}: "
                       f"{_first_line(exc)})") from None


REQUIRED = {"env_id": str, "obs_shape": list, "num_actions": int, "network": dict, "q_net": dict}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line BadInput naming the file."""
    path = Path(path)
    state = _load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"checkpoint {path} is not an asyncql checkpoint (no '{FORMAT}' marker)")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise BadInput(f"checkpoint {path} is damaged: its {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(value, torch.Tensor) for value in state["q_net"].values()):
        raise BadInput(f"checkpoint {path} is damaged: its q_net holds something other than tensors")
    return state


def network_of(state: dict[str, Any]) -> NetworkConfig:
    """The network a checkpoint was trained with."""
    saved = state["network"]
    return NetworkConfig(name=saved.get("name", "mlp"), hidden=list(saved.get("hidden", [])),
                         dueling=bool(saved.get("dueling", False)), layer_norm=bool(saved.get("layer_norm", False)))


def check_compatible(state: dict[str, Any], path: Path, env_id: str, obs_shape: tuple[int, ...],
                     num_actions: int, network: NetworkConfig) -> None:
    """Refuse a checkpoint trained on another env or network shape, naming the mismatch."""
    saved = network_of(state)
    checks = [
        ("env id", state.get("env_id"), env_id),
        ("observation shape", tuple(state.get("obs_shape", ())), tuple(obs_shape)),
        ("number of actions", state.get("num_actions"), num_actions),
        ("network.name", saved.name, network.name),
        ("network.hidden", saved.hidden, list(network.hidden)),
        ("network.dueling", saved.dueling, network.dueling),
        ("network.layer_norm", saved.layer_norm, network.layer_norm),
    ]
    for what, found, expected in checks:
        if found != expected:
            raise BadInput(f"checkpoint {path} has {what} {found!r}, but this run needs {expected!r}")


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """`model.load_state_dict(weights)`, a mismatch being one line naming the file."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise BadInput(f"checkpoint {path} does not fit this network ({_first_line(exc)})") from None


def save_replay(storage: Any, path: Path, learned: Optional[dict[str, torch.Tensor]] = None) -> int:
    """Main process, after every writer has stopped: each segment's held rows, oldest first, as
    plain tensors, with each row's priority: the learner's latest |delta| where `learned` (the
    prioritized sampler's state) still maps the slot to the row, else the writer's initial one.
    Returns the number of rows saved."""
    slots, lengths, logicals = [], [], []
    size = storage.segment_size
    for segment in range(storage.num_segments):
        cursor = storage.cursor(segment)
        held = min(cursor, size)
        logical = torch.arange(cursor - held, cursor)
        slots.append(segment * size + logical % size)
        logicals.append(logical)
        lengths.append(held)
    index, logical = torch.cat(slots), torch.cat(logicals)
    priority = storage.priority.index_select(0, index)
    if learned is not None:
        current = learned["slot_logical"].index_select(0, index) == logical
        priority = torch.where(current, learned["raw_priority"].index_select(0, index), priority)
    payload = {"format": REPLAY_FORMAT, "segment_lengths": lengths, "priority": priority,
               **{name: getattr(storage, name).index_select(0, index) for name in storage.columns}}
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle))
    return int(index.numel())


def load_replay_into(storage: Any, path: Path) -> int:
    """Main process, before any writer starts: refill the storage from `save_replay`'s file.
    Saved segment j goes to segment j mod (number of segments now). Returns rows restored."""
    state = _load(Path(path), "replay file")
    if not isinstance(state, dict) or state.get("format") != REPLAY_FORMAT:
        raise BadInput(f"replay file {path} is not an asyncql replay")
    missing = [name for name in storage.columns if not isinstance(state.get(name), torch.Tensor)]
    if missing:
        raise BadInput(f"replay file {path} holds another kind of replay (no {', '.join(missing)}); "
                       "it cannot refill this run's buffer")
    names = [*storage.columns, *(["priority"] if isinstance(state.get("priority"), torch.Tensor) else [])]
    begin = 0
    for j, length in enumerate(state["segment_lengths"]):
        if length:
            storage.write(j % storage.num_segments, {name: state[name][begin:begin + length] for name in names})
        begin += length
    return begin
