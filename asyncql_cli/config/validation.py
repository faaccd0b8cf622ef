"""Eager validation of the whole config, before any process starts.

Types and unknown keys are the schema's and `config.keys`'s; this module checks ranges and
cross-field rules, and raises `BadInput` with one line naming the key, the value and what was
expected.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from asyncql_cli.config.schema import Config
from asyncql_cli.errors import BadInput

CHOICES: dict[str, tuple[str, ...]] = {
    "network.name": ("mlp", "nature_cnn"),
    "buffer.name": ("uniform", "prioritized", "none"),
    "algo.mode": ("replay", "actor_learner"),
    "parallelism.learner_sharing": ("independent", "shared"),
    "parallelism.name": ("local", "serial", "ray"),
    "algo.loss": ("huber", "mse"),
    "algo.nonfinite": ("stop", "skip"),
    "algo.amp": ("off", "bf16", "fp16"),
    "algo.lr_schedule": ("constant", "linear"),
    "exploration.schedule": ("apex", "linear", "mnih2016"),
    "train.progress": ("auto", "rich", "plain", "none"),
}

POSITIVE = (
    "buffer.capacity", "parallelism.num_actors", "parallelism.envs_per_actor",
    "parallelism.num_learners", "algo.t_max", "parallelism.torch_threads", "actor.write_batch",
    "actor.weight_sync_steps", "algo.lr", "algo.n_step", "algo.batch_size",
    "algo.huber_delta", "algo.target_update", "algo.adam_eps", "algo.replay_ratio",
    "algo.publish_interval", "exploration.linear_steps", "train.total_env_steps",
    "train.log_interval_seconds", "eval.interval_seconds", "eval.episodes", "eval.video_episodes",
    "checkpoint.interval_seconds", "parallelism.join_timeout_seconds",
    "parallelism.heartbeat_timeout_seconds", "buffer.priority_eps", "parallelism.weight_broadcast_seconds",
    "parallelism.ship_batch_rows", "parallelism.ship_requests_in_flight", "parallelism.outbox_rows",
    "parallelism.object_store_mb", "parallelism.node_timeout_seconds",
)
NON_NEGATIVE = (
    "algo.lr_final", "parallelism.max_actor_restarts", "train.learning_starts", "buffer.alpha", "seed",
    "eval.seed", "exploration.apex_alpha", "eval.confirm_episodes", "eval.confirm_margin",
    "parallelism.max_node_restarts",
)
UNIT_INTERVAL = (
    "algo.gamma", "buffer.beta", "buffer.beta_final", "exploration.apex_base",
    "exploration.linear_start", "exploration.linear_end", "train.greedy_epsilon",
)
OPTIONAL_POSITIVE = (
    "train.max_seconds", "algo.max_grad_norm", "actor.max_update_debt",
    "env.max_episode_steps", "eval.max_episode_steps", "eval.video_interval_seconds", "eval.video_fps",
)


def _get(config: Config, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), config)


def _fail(key: str, value: Any, expected: str) -> None:
    raise BadInput(f"config {key}={value!r}: expected {expected}")


def validate(cfg: Config) -> None:
    """Check the whole config eagerly; raise BadInput on the first problem."""
    for key, options in CHOICES.items():
        if _get(cfg, key) not in options:
            _fail(key, _get(cfg, key), "one of " + ", ".join(options))
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            _fail(key, _get(cfg, key), "a value > 0")
    for key in NON_NEGATIVE:
        if not _get(cfg, key) >= 0:  # `not >=` also rejects nan
            _fail(key, _get(cfg, key), "a value >= 0")
    for key in UNIT_INTERVAL:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            _fail(key, _get(cfg, key), "a value in [0, 1]")
    for key in OPTIONAL_POSITIVE:
        value = _get(cfg, key)
        if value is not None and not value > 0:
            _fail(key, value, "null or a value > 0")
    if not 0.0 < cfg.algo.target_tau <= 1.0:
        _fail("algo.target_tau", cfg.algo.target_tau, "a value in (0, 1] (1 = hard copy)")
    if not cfg.network.hidden or any(h <= 0 for h in cfg.network.hidden):
        _fail("network.hidden", list(cfg.network.hidden), "a non-empty list of sizes > 0")
    _validate_modes(cfg)
    if cfg.parallelism.name == "ray":
        _validate_ray(cfg)
    if cfg.env.atari is not None:
        _validate_atari(cfg)
    if cfg.buffer.name != "none":
        _validate_replay(cfg)
    _validate_device(cfg)


def _validate_modes(cfg: Config) -> None:
    actor_learner = cfg.algo.mode == "actor_learner"
    if actor_learner != (cfg.buffer.name == "none"):
        _fail("buffer.name", cfg.buffer.name,
              "none with algo.mode=actor_learner (it learns without replay), and a replay otherwise")
    if cfg.parallelism.name == "serial" and (cfg.parallelism.num_learners != 1 or actor_learner):
        _fail("parallelism.name", "serial", "one learner in replay mode (use parallelism=local)")
    shared = actor_learner or (cfg.parallelism.num_learners > 1 and cfg.parallelism.learner_sharing == "shared")
    if shared and cfg.parallelism.learner_device.startswith("cuda"):
        _fail("parallelism.learner_device", cfg.parallelism.learner_device,
              "auto or cpu: Hogwild (shared) updates run on CPU shared memory")
    if cfg.algo.amp == "fp16" and (shared or not _learner_on_cuda(cfg.parallelism.learner_device)):
        _fail("algo.amp", "fp16", "off or bf16 for a CPU learner (fp16 autocast needs a CUDA learner)")
    e = cfg.exploration
    if (len(e.mnih_finals) != len(e.mnih_probs) or not e.mnih_finals
            or any(not 0.0 <= x <= 1.0 for x in e.mnih_finals) or any(not p > 0 for p in e.mnih_probs)):
        _fail("exploration.mnih_finals", list(e.mnih_finals),
              "epsilons in [0, 1], one positive exploration.mnih_probs entry each")


def _validate_ray(cfg: Config) -> None:
    p = cfg.parallelism
    if importlib.util.find_spec("ray") is None:
        raise BadInput("parallelism=ray needs Ray, which is not installed: pip install 'asyncql[ray]'")
    if cfg.algo.mode != "replay":
        _fail("algo.mode", cfg.algo.mode, "replay with parallelism=ray: actor-learners update one network in "
              "shared memory from every actor process, and shared memory cannot span machines (use "
              "parallelism=local)")
    if p.actors_on_learner_node is not None and not 0 <= p.actors_on_learner_node <= p.num_actors:
        _fail("parallelism.actors_on_learner_node", p.actors_on_learner_node,
              f"null or a count from 0 to parallelism.num_actors={p.num_actors}")
    if any(not value > 0 for value in p.learner_resources.values()):
        _fail("parallelism.learner_resources", dict(p.learner_resources), "resource amounts > 0, e.g. {GPU: 1}")
    if p.address not in ("local", "auto") and not _host_port(p.address):
        _fail("parallelism.address", p.address, "local, auto or host:port")
    if p.outbox_rows < 4 * cfg.actor.write_batch:
        _fail("parallelism.outbox_rows", p.outbox_rows, f"at least 4 x actor.write_batch = {4 * cfg.actor.write_batch}")


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _validate_atari(cfg: Config) -> None:
    a = cfg.env.atari
    for key in ("frame_skip", "screen_size", "frame_stack", "max_frames_per_episode"):
        if not getattr(a, key) > 0:
            _fail(f"env.atari.{key}", getattr(a, key), "a value > 0")
    if not a.noop_max >= 0:
        _fail("env.atari.noop_max", a.noop_max, "a value >= 0")
    if not 0.0 <= a.sticky_action_prob <= 1.0:
        _fail("env.atari.sticky_action_prob", a.sticky_action_prob, "a value in [0, 1]")
    if not (isinstance(a.fire_reset, bool) or a.fire_reset == "auto"):
        _fail("env.atari.fire_reset", a.fire_reset, "auto, true or false")


def _validate_replay(cfg: Config) -> None:
    slots_per_actor = cfg.buffer.capacity // cfg.parallelism.num_actors
    usable = slots_per_actor * cfg.parallelism.num_actors  # the replay never holds more rows
    split = "" if usable == cfg.buffer.capacity else f" ({usable} rows once split over the actors)"
    if cfg.algo.batch_size > usable:
        _fail("algo.batch_size", cfg.algo.batch_size,
              f"at most buffer.capacity={cfg.buffer.capacity}{split}")
    if slots_per_actor < 4 * cfg.actor.write_batch:
        _fail("buffer.capacity", cfg.buffer.capacity,
              f"at least 4 x actor.write_batch x num_actors = "
              f"{4 * cfg.actor.write_batch * cfg.parallelism.num_actors}")
    if cfg.train.learning_starts > usable:  # the learner would never start, the actors would stall
        _fail("train.learning_starts", cfg.train.learning_starts,
              f"at most buffer.capacity={cfg.buffer.capacity}{split}")


def _learner_on_cuda(device: str) -> bool:
    if device == "auto":
        import torch  # here, not at the top: configs are checked before torch is imported

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _validate_device(cfg: Config) -> None:
    device = cfg.parallelism.learner_device
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        _fail("parallelism.learner_device", device, "auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch  # as in _learner_on_cuda

        if not torch.cuda.is_available():
            _fail("parallelism.learner_device", device, "auto or cpu: no CUDA GPU is available")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            _fail("parallelism.learner_device", device,
                  f"a GPU index below {torch.cuda.device_count()}")

