"""The config schema and `load_config()`: every shipped option composes and validates into the
typed `Config`, every range and cross-field rule raises BadInput naming the key, Hydra/OmegaConf
reject unknown keys and wrong types while composing, and `load_config` refuses the unknown keys
Hydra's `+` lets through, offering the key meant. In-process: no subprocess, no training."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_config, config_groups, has_gpu
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from asyncql_cli.config.loading import load_config
from asyncql_cli.config.schema import Config, EnvConfig, NetworkConfig
from asyncql_cli.errors import BadInput

# Overrides an option needs to be complete (env=gym has no id of its own).
OPTION_NEEDS = {("env", "gym"): ["env.id=CartPole-v1"], ("env", "atari"): ["env.id=ALE/Pong-v5"],
                ("buffer", "none"): ["algo.mode=actor_learner"]}


def _all_options() -> list[tuple[str, str]]:
    return [(group, option) for group, options in config_groups().items() for option in options]


def test_groups_are_discovered() -> None:
    groups = config_groups()
    assert {"env", "network", "buffer", "parallelism"} <= set(groups)
    assert "CartPole-v1" in groups["env"] and "gym" in groups["env"]
    assert "local" in groups["parallelism"] and "serial" in groups["parallelism"]


def test_every_option_of_every_group_composes_and_validates() -> None:
    checked, failures = [], []
    for group, option in _all_options():
        overrides = [f"{group}={option}", *OPTION_NEEDS.get((group, option), [])]
        try:
            cfg = compose_config(overrides)
            assert isinstance(cfg, DictConfig)
            load_config(cfg)
        except Exception as exc:  # collect all, so one run names every broken option
            failures.append(f"{' '.join(overrides)}: {type(exc).__name__}: {exc}")
        checked.append(f"{group}={option}")
    assert not failures, "\n".join(failures)
    assert len(checked) >= 5


def test_default_config_validates() -> None:
    cfg = compose_config()
    config = load_config(cfg)
    assert cfg.env.id == "CartPole-v1"
    assert cfg.parallelism.name == "local"
    # the typed schema object, every section a dataclass, holding the composed values
    assert isinstance(config, Config) and isinstance(config.env, EnvConfig)
    assert isinstance(config.network, NetworkConfig) and config.network.hidden == list(cfg.network.hidden)
    assert config.env.id == "CartPole-v1" and config.algo.lr == cfg.algo.lr and config.env.atari is None


def _env_file_values(option: str) -> dict:
    """The dotted keys an env file sets outside `env:` (its tuned network/buffer/algo values)."""
    import yaml

    from asyncql_cli.cli.hydra_app import config_dir

    data = yaml.safe_load((Path(config_dir()) / "env" / f"{option}.yaml").read_text()) or {}
    flat: dict = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            flat[prefix] = value

    walk("", {k: v for k, v in data.items() if k not in ("env", "defaults")})
    return flat


@pytest.mark.parametrize("option", [o for o in config_groups()["env"] if o != "gym"])
def test_env_file_values_win_over_group_defaults(option: str) -> None:
    """An env file's tuned values (e.g. network.hidden) must survive the network/buffer group
    files composed with it; the command line still wins over both."""
    from omegaconf import OmegaConf

    expected = _env_file_values(option)
    assert expected, f"{option} sets no tuned values"
    cfg = compose_config([f"env={option}", "buffer=prioritized"])
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert compose_config([f"env={option}", "network.hidden=[7]"]).network.hidden == [7]


@pytest.mark.parametrize("option", config_groups()["parallelism"])
def test_parallelism_option_name_matches_file(option: str) -> None:
    assert compose_config([f"parallelism={option}"]).parallelism.name == option


def test_gym_env_without_id_fails_validation_naming_env_id() -> None:
    cfg = compose_config(["env=gym"])
    with pytest.raises(BadInput, match=r"env\.id"):
        load_config(cfg)


def test_gym_env_with_user_module_id_validates() -> None:
    cfg = compose_config(["env=gym", "env.id=my_pkg.envs:MyEnv-v0"])
    load_config(cfg)  # the module is imported only when the env is made
    assert cfg.env.id == "my_pkg.envs:MyEnv-v0"


# Each entry: overrides -> the key the BadInput message must name.
BAD_VALUES = [
    # sizes and counts
    (["buffer.capacity=0"], "buffer.capacity"),
    (["buffer.capacity=-5"], "buffer.capacity"),
    (["parallelism.num_actors=0"], "parallelism.num_actors"),
    (["parallelism.num_actors=-1"], "parallelism.num_actors"),
    (["parallelism.envs_per_actor=0"], "parallelism.envs_per_actor"),
    (["parallelism.num_learners=0"], "parallelism.num_learners"),
    (["parallelism.num_learners=2", "parallelism=serial"], "parallelism.name"),
    (["algo.mode=actor_learner"], "buffer.name"),
    (["buffer=none"], "buffer.name"),
    (["exploration.mnih_probs=[0.5,0.5]"], "exploration.mnih_finals"),
    (["parallelism.num_learners=2", "parallelism.learner_sharing=bogus"], "parallelism.learner_sharing"),
    (["parallelism.torch_threads=0"], "parallelism.torch_threads"),
    (["parallelism.max_actor_restarts=-1"], "parallelism.max_actor_restarts"),
    (["parallelism.join_timeout_seconds=0"], "parallelism.join_timeout_seconds"),
    (["actor.write_batch=0"], "actor.write_batch"),
    (["actor.weight_sync_steps=-1"], "actor.weight_sync_steps"),
    (["actor.max_update_debt=0"], "actor.max_update_debt"),
    (["algo.batch_size=0"], "algo.batch_size"),
    (["algo.n_step=0"], "algo.n_step"),
    (["algo.target_update=0"], "algo.target_update"),
    (["algo.publish_interval=0"], "algo.publish_interval"),
    (["network.hidden=[]"], "network.hidden"),
    (["network.hidden=[64,0]"], "network.hidden"),
    (["train.total_env_steps=0"], "train.total_env_steps"),
    (["train.learning_starts=-1"], "train.learning_starts"),
    (["train.max_seconds=0"], "train.max_seconds"),
    (["env.max_episode_steps=0"], "env.max_episode_steps"),
    (["eval.episodes=0"], "eval.episodes"),
    (["eval.max_episode_steps=-1"], "eval.max_episode_steps"),
    (["eval.seed=-1"], "eval.seed"),
    (["eval.interval_seconds=0"], "eval.interval_seconds"),
    (["checkpoint.interval_seconds=-1"], "checkpoint.interval_seconds"),
    (["exploration.linear_steps=0"], "exploration.linear_steps"),
    (["seed=-1"], "seed"),
    # rates
    (["algo.lr=0"], "algo.lr"),
    (["algo.lr=-0.001"], "algo.lr"),
    (["algo.lr=nan"], "algo.lr"),
    (["algo.replay_ratio=0"], "algo.replay_ratio"),
    (["algo.adam_eps=0"], "algo.adam_eps"),
    (["algo.huber_delta=0"], "algo.huber_delta"),
    (["algo.max_grad_norm=0"], "algo.max_grad_norm"),
    (["algo.target_tau=0"], "algo.target_tau"),
    (["algo.target_tau=1.5"], "algo.target_tau"),
    (["algo.gamma=1.5"], "algo.gamma"),
    (["algo.gamma=-0.1"], "algo.gamma"),
    (["algo.gamma=nan"], "algo.gamma"),
    (["buffer.alpha=-0.5"], "buffer.alpha"),
    (["buffer.alpha=nan"], "buffer.alpha"),
    (["buffer.beta=1.5"], "buffer.beta"),
    (["buffer.beta_final=-1"], "buffer.beta_final"),
    (["buffer.priority_eps=0"], "buffer.priority_eps"),
    (["exploration.apex_base=2"], "exploration.apex_base"),
    (["exploration.apex_alpha=-1"], "exploration.apex_alpha"),
    (["exploration.linear_end=1.5"], "exploration.linear_end"),
    (["train.log_interval_seconds=0"], "train.log_interval_seconds"),
    # unknown choice values
    (["algo.loss=foo"], "algo.loss"),
    (["algo.nonfinite=ignore"], "algo.nonfinite"),
    (["exploration.schedule=cosine"], "exploration.schedule"),
    (["network.name=transformer"], "network.name"),
    (["buffer.name=fancy"], "buffer.name"),
    (["parallelism.name=ray9"], "parallelism.name"),
    (["train.progress=loud"], "train.progress"),
    (["parallelism.learner_device=bogus"], "parallelism.learner_device"),
    (["parallelism.learner_device=cuda:"], "parallelism.learner_device"),
    (["parallelism.learner_device=cuda:x"], "parallelism.learner_device"),
    # cross-field rules
    (["algo.batch_size=1000", "buffer.capacity=600", "parallelism.num_actors=1"], "algo.batch_size"),
    # 2 actors x 300 rows: a batch of 601 could never be drawn
    (["algo.batch_size=601", "buffer.capacity=601", "parallelism.num_actors=2",
      "train.learning_starts=0"], "algo.batch_size"),
    (["buffer.capacity=1000", "parallelism.num_actors=4", "algo.batch_size=32"], "buffer.capacity"),
    # the learner would wait for more rows than the replay can ever hold
    (["buffer.capacity=600", "parallelism.num_actors=1", "train.learning_starts=1000"],
     "train.learning_starts"),
]


@pytest.mark.parametrize(
    ("overrides", "key"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES]
)
def test_validate_rejects_bad_value_naming_the_key(overrides: list[str], key: str) -> None:
    cfg = compose_config(overrides)
    with pytest.raises(BadInput) as info:
        load_config(cfg)
    message = str(info.value)
    assert f"config {key}=" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_learner_without_gpu_is_bad_input(device: str) -> None:
    if has_gpu():
        pytest.skip("a CUDA GPU is present")
    cfg = compose_config([f"parallelism.learner_device={device}"])
    with pytest.raises(BadInput, match=r"parallelism\.learner_device.*no CUDA GPU"):
        load_config(cfg)


def test_cuda_index_beyond_the_gpus_is_bad_input() -> None:
    if not has_gpu():
        pytest.skip("needs a CUDA GPU")
    cfg = compose_config(["parallelism.learner_device=cuda:99"])
    with pytest.raises(BadInput, match=r"parallelism\.learner_device"):
        load_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallelism.learner_device=cpu"],
        ["parallelism.learner_device=auto"],
        ["algo.gamma=0"],
        ["algo.gamma=1"],
        ["algo.loss=mse", "algo.nonfinite=skip", "exploration.schedule=linear"],
        ["buffer.capacity=512", "parallelism.num_actors=2", "actor.write_batch=64",
         "algo.batch_size=512", "train.learning_starts=512"],
        ["train.max_seconds=null", "algo.max_grad_norm=null", "actor.max_update_debt=null"],
    ],
    ids=lambda o: " ".join(o),
)
def test_validate_accepts_edge_values(overrides: list[str]) -> None:
    load_config(compose_config(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.nope=1"],
        ["nosuchgroup.key=1"],
        ["env.nope=1"],
        ["algo.lr=abc"],
        ["algo.batch_size=1.5"],
        ["buffer.capacity=lots"],
        ["algo.double=maybe"],
        ["network.hidden=abc"],
        ["env=NoSuch"],
    ],
    ids=lambda o: " ".join(o),
)
def test_composing_unknown_key_or_wrong_type_raises(overrides: list[str]) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose_config(overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+algo.lerning_rate=1", "unknown config key algo.lerning_rate (did you mean algo.lr?)"),
        ("+learning_rate=1", "unknown config key learning_rate (did you mean algo.lr?)"),  # SB3's name
        ("+buffer_size=1000", "unknown config key buffer_size (did you mean buffer.capacity?)"),
        ("+nosuchgroup.key=1", "unknown config key nosuchgroup"),
    ],
)
def test_unknown_key_appended_with_plus_is_refused_naming_the_key_meant(override: str, message: str) -> None:
    """`+key=value` appends a key the schema does not have (composing succeeds); a run would
    silently ignore it, so load_config refuses it in one line."""
    cfg = compose_config([override])
    with pytest.raises(BadInput) as info:
        load_config(cfg)
    assert str(info.value) == message


def test_env_kwargs_stay_open() -> None:
    """Whatever the env accepts may go into env.kwargs: no key there is unknown."""
    config = load_config(compose_config(["+env.kwargs.sutton_barto_reward=true"]))
    assert config.env.kwargs == {"sutton_barto_reward": True}
