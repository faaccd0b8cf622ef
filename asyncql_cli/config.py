"""Structured configs: the schema Hydra composes `conf/` into, and eager validation.

Every knob a user can type is a field here with a type and a default; the YAML files in
`conf/` carry the comments and the tuned per-env values. OmegaConf enforces types and
rejects unknown keys while composing; `validate` checks ranges and cross-field rules on
the whole composed config before any process starts, and raises `BadInput` with one
line naming the key, the value and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class BadInput(Exception):
    """A user error (config, env, checkpoint): reported as one line, exit code 2."""


@dataclass
class AtariConfig:
    """Atari preprocessing (asyncql_cli/atari.py); `env.atari: null` = not an Atari env."""

    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = 84
    frame_stack: int = 4
    episodic_life: bool = True
    clip_rewards: bool = True
    fire_reset: Any = "auto"  # "auto" | true | false
    sticky_action_prob: float = 0.25
    max_frames_per_episode: int = 108_000


@dataclass
class EnvConfig:
    id: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    solved_return: Optional[float] = None
    max_episode_steps: Optional[int] = None
    atari: Optional[AtariConfig] = None


@dataclass
class NetworkConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dueling: bool = False
    layer_norm: bool = False


@dataclass
class BufferConfig:
    name: str = "uniform"
    capacity: int = 100_000
    alpha: float = 0.6
    beta: float = 0.4
    beta_final: float = 1.0
    priority_eps: float = 1e-6


@dataclass
class ParallelismConfig:
    name: str = "local"
    num_actors: int = 2
    envs_per_actor: int = 8
    num_learners: int = 1
    learner_sharing: str = "independent"
    learner_device: str = "auto"
    torch_threads: int = 1
    max_actor_restarts: int = 3
    join_timeout_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0


@dataclass
class ActorConfig:
    write_batch: int = 64
    weight_sync_steps: int = 200
    max_update_debt: Optional[int] = 1000


@dataclass
class AlgoConfig:
    mode: str = "replay"
    t_max: int = 5
    lr: float = 1e-3
    gamma: float = 0.99
    n_step: int = 3
    batch_size: int = 128
    double: bool = True
    loss: str = "huber"
    huber_delta: float = 1.0
    target_update: int = 200
    target_tau: float = 1.0
    max_grad_norm: Optional[float] = 10.0
    adam_eps: float = 1e-8
    replay_ratio: float = 0.25
    lr_schedule: str = "constant"
    lr_final: float = 0.0
    publish_interval: int = 4
    nonfinite: str = "stop"
    prefetch: bool = True
    amp: str = "off"
    compile: bool = False


@dataclass
class ExplorationConfig:
    schedule: str = "apex"
    apex_base: float = 0.4
    apex_alpha: float = 7.0
    linear_start: float = 1.0
    linear_end: float = 0.05
    linear_steps: int = 20_000
    mnih_finals: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.5])
    mnih_probs: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.3])


@dataclass
class TrainConfig:
    total_env_steps: int = 100_000
    max_seconds: Optional[float] = None
    learning_starts: int = 1_000
    stop_at_return: Optional[float] = None
    log_interval_seconds: float = 1.0
    progress: str = "auto"


@dataclass
class EvalConfig:
    interval_seconds: float = 5.0
    episodes: int = 10
    confirm_episodes: int = 100
    confirm_margin: float = 2.0
    seed: int = 1_000_000
    video: bool = False
    video_episodes: int = 1
    video_interval_seconds: Optional[float] = None
    video_fps: Optional[float] = None
    max_episode_steps: Optional[int] = None


@dataclass
class CheckpointConfig:
    interval_seconds: float = 60.0
    save_replay: bool = False


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    resume: Optional[str] = None


def register_configs() -> None:
    """Make the schema available to `conf/config.yaml` as `base_config`."""
    ConfigStore.instance().store(name="base_config", node=Config)


CHOICES: dict[str, tuple[str, ...]] = {
    "network.name": ("mlp", "nature_cnn"),
    "buffer.name": ("uniform", "prioritized", "none"),
    "algo.mode": ("replay", "actor_learner"),
    "parallelism.learner_sharing": ("independent", "shared"),
    "parallelism.name": ("local", "serial"),
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
    "parallelism.heartbeat_timeout_seconds", "buffer.priority_eps",
)
NON_NEGATIVE = (
    "algo.lr_final", "parallelism.max_actor_restarts", "train.learning_starts", "buffer.alpha", "seed",
    "eval.seed", "exploration.apex_alpha", "eval.confirm_episodes", "eval.confirm_margin",
)
UNIT_INTERVAL = (
    "algo.gamma", "buffer.beta", "buffer.beta_final", "exploration.apex_base",
    "exploration.linear_start", "exploration.linear_end",
)
OPTIONAL_POSITIVE = (
    "train.max_seconds", "algo.max_grad_norm", "actor.max_update_debt",
    "env.max_episode_steps", "eval.max_episode_steps", "eval.video_interval_seconds", "eval.video_fps",
)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _fail(key: str, value: Any, expected: str) -> None:
    raise BadInput(f"config {key}={value!r}: expected {expected}")


def validate(cfg: DictConfig) -> None:
    """Check the whole composed config eagerly; raise BadInput on the first problem."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise BadInput(f"config {missing[0]} is required but not set (e.g. {missing[0]}=...)")
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
    if _get(cfg, "env.atari") is not None:
        _validate_atari(cfg)
    if cfg.buffer.name != "none":
        _validate_replay(cfg)
    _validate_device(cfg)


def _validate_modes(cfg: DictConfig) -> None:
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


def _validate_atari(cfg: DictConfig) -> None:
    a = cfg.env.atari
    for key in ("frame_skip", "screen_size", "frame_stack", "max_frames_per_episode"):
        if not a[key] > 0:
            _fail(f"env.atari.{key}", a[key], "a value > 0")
    if not a.noop_max >= 0:
        _fail("env.atari.noop_max", a.noop_max, "a value >= 0")
    if not 0.0 <= a.sticky_action_prob <= 1.0:
        _fail("env.atari.sticky_action_prob", a.sticky_action_prob, "a value in [0, 1]")
    if not (isinstance(a.fire_reset, bool) or a.fire_reset == "auto"):
        _fail("env.atari.fire_reset", a.fire_reset, "auto, true or false")


def _validate_replay(cfg: DictConfig) -> None:
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
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _validate_device(cfg: DictConfig) -> None:
    device = cfg.parallelism.learner_device
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        _fail("parallelism.learner_device", device, "auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _fail("parallelism.learner_device", device, "auto or cpu: no CUDA GPU is available")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            _fail("parallelism.learner_device", device,
                  f"a GPU index below {torch.cuda.device_count()}")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation in the parent; children get plain data only."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
