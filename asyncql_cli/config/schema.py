"""The config schema: the structured configs Hydra composes `conf/` into.

Every knob a user can type is a field here with a type and a default; the YAML files in `conf/`
carry the one-line comments and the tuned per-env values. `config.loading.load_config` turns a
composed config into a `Config` instance, the typed object the wiring reads (and nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class AtariConfig:
    """Atari preprocessing (envs/atari.py); `env.atari: null` = not an Atari env."""

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
    # parallelism=ray only (conf/parallelism/ray.yaml says what each does)
    address: str = "local"
    actors_on_learner_node: Optional[int] = None
    learner_resources: dict[str, float] = field(default_factory=dict)
    weight_broadcast_seconds: float = 0.5
    max_node_restarts: int = 2
    ship_batch_rows: int = 256
    ship_requests_in_flight: int = 2
    outbox_rows: int = 4096
    object_store_mb: int = 200
    node_timeout_seconds: float = 30.0


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
    greedy_epsilon: float = 0.05
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
