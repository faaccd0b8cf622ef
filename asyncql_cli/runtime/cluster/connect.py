"""Reaching Ray: starting it on this machine (loopback only) or joining a cluster, safely.

An open Ray dashboard or job API runs anyone's code (CVE-2023-48022, "ShadowRay"). So:
- `address=local` starts Ray here with every process bound to 127.0.0.1: Ray rewrites 127.0.0.1 to
  this machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set before Ray is
  imported; the dashboard is off; Ray's token authentication is off (nothing but this machine can
  connect) unless the user set RAY_AUTH_MODE; usage statistics are off;
- `address=host:port` or `auto` joins a running cluster, with whatever RAY_AUTH_MODE=token and
  RAY_AUTH_TOKEN the user set (README, "Run on a cluster"); the address is tried with a plain TCP
  connection first, since `ray.init` on an address where nothing listens hangs for minutes.
Ray's files go to RAY_TMPDIR if set, else to a short temporary directory removed at the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asyncql_cli.errors import BadInput
from asyncql_cli.runtime.cluster.placement import Node

MIB = 1 << 20
CONNECT_SECONDS = 2.0  # the TCP check of a cluster's address
NODE_MEMORY_MB = 1024  # the `memory` resource a node Ray starts here advertises (a scheduling label only)
INSTALL_HINT = "pip install 'asyncql[ray]'"
LOOPBACK = ("127.0.0.1", "localhost")


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise BadInput(f"parallelism=ray needs Ray, which is not installed: {INSTALL_HINT}")


def reachable(address: str, timeout: float = CONNECT_SECONDS) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _auto_address() -> Optional[str]:
    """Where `address=auto` points: RAY_ADDRESS, else the cluster this machine's Ray started last."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    for root in (os.environ.get("RAY_TMPDIR"), tempfile.gettempdir()):
        current = Path(root or "/tmp") / "ray" / "ray_current_cluster"
        if current.is_file():
            return current.read_text().strip() or None
    return None


@dataclass
class Connection:
    """A connection to Ray: what to undo at the end."""

    started_here: bool
    temp_dir: Optional[str]  # made by us: removed at the end
    address: str

    def close(self) -> None:
        import ray

        ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _environment(loopback: bool) -> Optional[str]:
    """Set what Ray reads at import; returns a temp dir made here (None if RAY_TMPDIR was set)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps 127.0.0.1 as it is
    made = None
    if not os.environ.get("RAY_TMPDIR"):
        made = tempfile.mkdtemp(prefix="aq-ray-")  # short: Ray's socket paths must stay under 107 chars
        os.environ["RAY_TMPDIR"] = made
    (Path(os.environ["RAY_TMPDIR"]) / "ray").mkdir(parents=True, exist_ok=True)
    return made


def connect(address: str, object_store_mb: int) -> Connection:
    """Start Ray here (`local`) or join the cluster at `address` (`auto` or host:port)."""
    require_ray()
    if address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only: nothing else can connect
        # Ray starts its workers at nice 15; here they are the run's agents, actors and learner, which
        # other work on this machine would otherwise starve
        os.environ.setdefault("RAY_worker_niceness", "0")
        made = _environment(loopback=True)
        import ray

        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 object_store_memory=object_store_mb * MIB, _memory=NODE_MEMORY_MB * MIB,
                 _temp_dir=str(Path(os.environ["RAY_TMPDIR"]) / "ray"), logging_level="WARNING",
                 configure_logging=False)
        return Connection(True, made, "local")
    target = _auto_address() if address == "auto" else address
    if target is None:
        raise BadInput("parallelism.address=auto: no running Ray cluster found (RAY_ADDRESS is not set and this "
                       "machine started none); start one with `ray start --head` or give host:port")
    if not reachable(target):
        raise BadInput(f"parallelism.address={target}: nothing answers there (no Ray cluster's head at that "
                       "host and port, or a firewall in the way)")
    made = _environment(loopback=target.rsplit(":", 1)[0] in LOOPBACK)
    import ray

    try:
        ray.init(address=target, log_to_driver=False, logging_level="WARNING", configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        hint = "; a cluster with token authentication needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here too"
        raise BadInput(f"parallelism.address={target}: cannot join the Ray cluster there "
                       f"({' '.join(str(exc).split())[:160]}){hint}") from None
    return Connection(False, made, target)


def alive_nodes() -> list[Node]:
    import ray

    return [Node(str(n["NodeID"]), dict(n.get("Resources", {}))) for n in ray.nodes() if n.get("Alive")]


def this_node() -> Optional[str]:
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - not connected
        return None


def is_ray_error(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError)


def pinned(node_id: str, num_gpus: float = 0.0, resources: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Ray actor options that put it on `node_id` and nowhere else (an infeasible pin fails at once)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"num_cpus": 0, "num_gpus": num_gpus, "resources": resources or {}, "max_restarts": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}
