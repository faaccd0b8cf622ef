"""`asyncql eval`: greedy evaluation of a run's checkpoint, a table and `eval.json`.

    asyncql eval run_dir=DIR [checkpoint=best|last|PATH] [eval.episodes=N] [eval.seed=S]
    asyncql eval DIR                      (positional shorthand for run_dir=DIR)
    asyncql eval DIR eval.video=true [eval.video_episodes=N]
        also writes DIR/videos/eval_<best|last>.mp4 (eval_<name>.mp4 beside a PATH checkpoint)
        and the clip as eval/video in DIR's TensorBoard events

The run's own composed config (`DIR/.hydra/config.yaml`) says which env and network to
build; the checkpoint must match it. Results use the same evaluator as training, so the
same checkpoint and seeds give the same numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from asyncql_cli import rundir
from asyncql_cli.algo.networks import build_network
from asyncql_cli.checkpoint import check_compatible, load_checkpoint, load_weights, write_json
from asyncql_cli.config.loading import load_saved_config
from asyncql_cli.config.schema import Config
from asyncql_cli.errors import BadInput
from asyncql_cli.evaluation.evaluate import evaluate
from asyncql_cli.evaluation.video import VideoError, add_video_to_tensorboard, record_video

DEFAULT_EPISODES = 100
KEYS = ("run_dir", "checkpoint", "eval.episodes", "eval.seed", "eval.video", "eval.video_episodes")


def parse_args(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for arg in argv:
        if "=" not in arg:
            if "run_dir" in options:
                raise BadInput(f"unexpected argument {arg!r}; use key=value ({', '.join(KEYS)})")
            options["run_dir"] = arg
            continue
        key, value = arg.split("=", 1)
        if key not in KEYS:
            raise BadInput(f"unknown eval option {key!r}; expected one of {', '.join(KEYS)}")
        options[key] = value
    if "run_dir" not in options:
        raise BadInput("asyncql eval needs run_dir=DIR (a directory made by asyncql train)")
    return options


def _int_option(options: dict[str, str], key: str, default: int, minimum: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{key}={raw!r}: expected an integer") from None
    if value < minimum:
        raise BadInput(f"{key}={value}: expected a value >= {minimum}")
    return value


def eval_video(net: Any, config: Config, run_dir: Path, path: Path, which: str, episodes: int, seed: int,
               step: int) -> Path:
    """eval.video=true: the mp4 and the clip as eval/video in the run's TensorBoard events.
    Training has ended, so a second SummaryWriter on the run dir is safe here."""
    from torch.utils.tensorboard import SummaryWriter  # only when a video is asked for

    name = f"eval_{which}.mp4" if which in ("best", "last") else f"eval_{path.stem}.mp4"
    out = run_dir / rundir.VIDEOS / name if which in ("best", "last") else path.parent / name
    writer = SummaryWriter(str(run_dir))
    try:
        result = record_video(net, config.env, episodes, seed, out, fps=config.eval.video_fps,
                              max_episode_steps=config.eval.max_episode_steps)
        add_video_to_tensorboard(writer, "eval/video", result.frames, result.fps, step)
    except VideoError as exc:
        raise BadInput(f"eval.video=true: {exc}") from None
    finally:
        writer.close()
    return out


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    if which in ("best", "last"):
        return run_dir / rundir.CHECKPOINTS / f"{which}.pt"
    return Path(which)


def run_eval(argv: list[str]) -> None:
    options = parse_args(argv)
    run_dir = Path(options["run_dir"])
    config_file = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise BadInput(f"run_dir {run_dir} does not exist")
    if not config_file.is_file():
        raise BadInput(f"run_dir {run_dir} has no .hydra/config.yaml; is it a directory made by asyncql train?")
    video = options.get("eval.video", "false").lower()
    if video not in ("true", "false", "1", "0", "yes", "no"):
        raise BadInput(f"eval.video={options['eval.video']!r}: expected true or false")
    config = load_saved_config(config_file)
    which = options.get("checkpoint", "best")
    path = resolve_checkpoint(run_dir, which)
    state = load_checkpoint(path)
    check_compatible(state, path, config.env.id, tuple(state["obs_shape"]), state["num_actions"], config.network)
    episodes = _int_option(options, "eval.episodes", DEFAULT_EPISODES, 1)
    seed = _int_option(options, "eval.seed", config.eval.seed, 0)
    video_episodes = _int_option(options, "eval.video_episodes", config.eval.video_episodes, 1)
    net = build_network(config.network, state["obs_shape"], state["num_actions"])
    load_weights(net, state["q_net"], path)
    net.eval()
    started = time.monotonic()
    result = evaluate(net, config.env, episodes, seed, config.eval.max_episode_steps)
    report = {
        **result.summary(), "checkpoint": str(path), "env_id": config.env.id, "seed": seed,
        "checkpoint_env_steps": state.get("env_steps"), "checkpoint_updates": state.get("updates"),
        "solved_return": config.env.solved_return, "wall_seconds": time.monotonic() - started,
    }
    out = run_dir / rundir.EVAL_REPORT if which in ("best", "last") else path.parent / rundir.EVAL_REPORT
    if video in ("true", "1", "yes"):
        report["video"] = str(eval_video(net, config, run_dir, path, which, video_episodes, seed,
                                         int(state.get("env_steps") or 0)))
    write_json(out, report)
    table = Table(title=f"asyncql eval: {config.env.id} ({path.name})", show_header=False)
    for key in ("mean_return", "std_return", "min_return", "max_return", "mean_length",
                "episodes", "seed", "checkpoint_env_steps", "solved_return"):
        value = report[key]
        table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
    table.add_row("written", str(out))
    if "video" in report:
        table.add_row("video", report["video"])
    Console().print(table)
