"""eval.video: mp4s that really show the episodes, the same clip in TensorBoard.

The known failure is silent: an mp4 of a few hundred bytes (262 is typical) or one whose
frames are blank (cleanrl#384, SB3#317). So the tests decode what was written and look at
the pixels and the frame rate, and read TensorBoard's event files back.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
import pytest
import torch
from conftest import bad_input_line, compose_config, run_cli
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from asyncql_cli.algo.networks import build_network
from asyncql_cli.config.schema import EnvConfig, NetworkConfig
from asyncql_cli.evaluation.evaluate import evaluate
from asyncql_cli.evaluation.video import (
    GifClip,
    VideoError,
    add_clip_to_tensorboard,
    add_video_to_tensorboard,
    gif_clip,
    record_video,
    thumbnail_frames,
)

MLP = NetworkConfig(name="mlp", hidden=[32, 32], dueling=False)
CARTPOLE = EnvConfig(id="CartPole-v1")
SEED = 1_000


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(MLP, (4,), 2).eval()


def _decode(path: Path) -> tuple[list[np.ndarray], float]:
    reader = imageio.get_reader(str(path), format="ffmpeg")
    try:
        return [np.asarray(f) for f in reader], float(reader.get_meta_data()["fps"])
    finally:
        reader.close()


# share of consecutive frame pairs that must differ: an untrained policy's pole falls in every
# frame; a trained one can balance a cart that holds still (sub-pixel moves) for long stretches
# of a 500-step episode (one run: 171 of 500 pairs moved), but a frozen or blank clip moves in none
MOVING_UNTRAINED, MOVING_TRAINED = 0.5, 0.1


def _assert_not_blank(frames: list[np.ndarray], moving_share: float = MOVING_UNTRAINED) -> None:
    assert all(float(f.std()) > 5.0 for f in frames), "a decoded frame is (nearly) one colour"
    moving = sum(float(np.abs(a.astype(int) - b.astype(int)).mean()) > 0.01 for a, b in zip(frames, frames[1:]))
    assert moving >= moving_share * (len(frames) - 1), "consecutive frames are identical: nothing moves"


def _video_images(run_dir: Path) -> list:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert "eval/video" in events.Tags()["images"], events.Tags()
    return events.Images("eval/video")


def _assert_gif(encoded: bytes, min_frames: int = 2) -> Image.Image:
    assert encoded[:6] == b"GIF89a", encoded[:16]
    gif = Image.open(io.BytesIO(encoded))
    assert gif.n_frames >= min_frames
    return gif


# ------------------------------------------------------------------------ record_video
def test_record_video_writes_a_nonblank_mp4_with_the_env_fps(tmp_path: Path) -> None:
    net = _net()
    out = tmp_path / "videos" / "clip.mp4"
    result = record_video(net, CARTPOLE, 3, SEED, out)

    # the same episodes as evaluate(): episode k is reset with seed + k, greedy actions
    assert result.returns == evaluate(net, CARTPOLE, 3, SEED).returns
    assert result.num_frames == sum(result.lengths) + 3  # a reset frame, then one per step
    assert result.path == out and out.is_file()
    assert out.stat().st_size > 2_000, f"{out.stat().st_size} bytes: an empty mp4 is ~262 bytes"
    assert not list(out.parent.glob(".video-*")), "temporary files left next to the video"

    frames, fps = _decode(out)
    assert fps == pytest.approx(50.0)  # CartPole's metadata render_fps
    assert result.video_fps == pytest.approx(50.0)
    assert len(frames) in (result.num_frames, result.num_frames + 1)  # + a held last frame
    assert frames[0].shape == (400, 600, 3)
    _assert_not_blank(frames)
    # the first frame is the rendered reset state of episode 0
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=SEED)
    expected = env.render()
    env.close()
    assert float(np.abs(frames[0].astype(int) - expected.astype(int)).mean()) < 3.0

    # the TensorBoard copy: uint8 (T, H, W, C), downscaled to fit 256 px
    assert result.frames.dtype == np.uint8 and result.frames.ndim == 4
    assert result.frames.shape[0] == result.num_frames and max(result.frames.shape[1:3]) <= 256
    assert result.fps == pytest.approx(50.0)


def test_record_video_fps_override_and_frame_cap(tmp_path: Path) -> None:
    out = tmp_path / "capped.mp4"
    result = record_video(_net(), CARTPOLE, 5, SEED, out, fps=25, max_frames=12)
    assert result.num_frames == 12  # cut mid-episode at the cap
    frames, fps = _decode(out)
    assert fps == pytest.approx(25.0)
    assert len(frames) in (12, 13)
    _assert_not_blank(frames)


class _NoPictures(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(4, np.float32), 0.0, True, False, {}

    def render(self):
        return None


@pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return")
def test_record_video_refuses_an_env_without_pictures(tmp_path: Path) -> None:
    gym.register("asyncql-test/NoPictures-v0", entry_point=_NoPictures)
    with pytest.raises(VideoError, match="rgb_array"):
        record_video(_net(), EnvConfig(id="asyncql-test/NoPictures-v0"), 1, SEED, tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------------- TensorBoard
def _moving_square(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.full((count, height, width, 3), 255, np.uint8)
    for t in range(count):
        frames[t, 10:26, 2 + 4 * t: 18 + 4 * t] = (200, 40, 40)
    return frames


def test_add_video_to_tensorboard_is_read_back_as_an_animation(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    add_video_to_tensorboard(writer, "eval/video", _moving_square(10), fps=10, step=5)
    writer.close()
    (image,) = _video_images(tmp_path)
    assert (image.step, image.width, image.height) == (5, 64, 48)
    assert len(image.encoded_image_string) > 200
    gif = _assert_gif(image.encoded_image_string, min_frames=10)
    assert gif.info["duration"] == 100  # ms per frame at 10 fps
    gif.seek(9)
    last = np.asarray(gif.convert("RGB"))
    assert last[18, 40].tolist() == [200, 40, 40] and last[18, 10].tolist() == [255, 255, 255]


def test_a_gif_clip_crosses_processes_and_is_written_as_add_video_writes_it(tmp_path: Path) -> None:
    """The evaluator encodes a GifClip and hands it to the run's one writer (main process): it
    pickles, and `add_clip_to_tensorboard` writes what `add_video_to_tensorboard` would."""
    frames = _moving_square(6)
    clip = pickle.loads(pickle.dumps(gif_clip(frames, fps=10)))
    assert isinstance(clip, GifClip) and (clip.height, clip.width, clip.channels) == (48, 64, 3)
    _assert_gif(clip.gif, min_frames=6)
    for name, write in (("clip", lambda w: add_clip_to_tensorboard(w, "eval/video", clip, 3)),
                        ("frames", lambda w: add_video_to_tensorboard(w, "eval/video", frames, 10, 3))):
        writer = SummaryWriter(str(tmp_path / name))
        write(writer)
        writer.close()
    (from_clip,), (from_frames,) = _video_images(tmp_path / "clip"), _video_images(tmp_path / "frames")
    assert (from_clip.step, from_clip.width, from_clip.height) == (3, 64, 48)
    assert from_clip.encoded_image_string == from_frames.encoded_image_string == clip.gif
    rgba = np.concatenate([frames, np.full((*frames.shape[:3], 1), 255, np.uint8)], axis=3)
    assert gif_clip(rgba, fps=10) == clip  # an alpha channel is dropped
    for bad in (frames[0], frames[:0], frames[..., :2]):
        with pytest.raises(ValueError, match="expected"):
            gif_clip(bad, fps=10)


def test_thumbnail_frames_caps_count_and_size_and_keeps_real_time() -> None:
    frames = list(_moving_square(10, 40, 60)) * 70  # 700 frames
    small, fps = thumbnail_frames(frames, 50.0, max_frames=300, max_side=32)
    assert small.shape == (234, 21, 32, 3)  # every 3rd frame; 60x40 -> 32x21
    assert fps == pytest.approx(50.0 / 3)


# --------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_train_and_eval_write_videos_and_tensorboard_clips(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train = run_cli(
        "train", "train.total_env_steps=2000", "parallelism.num_actors=1", "parallelism.envs_per_actor=4",
        "train.learning_starts=500", "eval.interval_seconds=1", "eval.video=true", "train.progress=plain",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=60,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (clip,) = (run_dir / "videos").glob("best_step_*.mp4")  # the end-of-run clip of best.pt
    frames, fps = _decode(clip)
    assert fps == pytest.approx(50.0) and len(frames) > 5
    _assert_not_blank(frames, MOVING_TRAINED)  # best.pt after 2,000 steps may already balance 500 steps
    (image,) = _video_images(run_dir)
    _assert_gif(image.encoded_image_string)

    result = run_cli("eval", f"run_dir={run_dir}", "eval.episodes=2", "eval.video=true", cwd=tmp_path,
                     env={"COLUMNS": "400"})  # wide enough that the table does not cut the path
    assert result.returncode == 0, result.stderr[-3000:]
    video = run_dir / "videos" / "eval_best.mp4"
    rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in result.stdout.splitlines()]
    assert ["video", str(video)] in rows, result.stdout
    assert json.loads((run_dir / "eval.json").read_text())["video"] == str(video)
    frames, fps = _decode(video)
    assert fps == pytest.approx(50.0)
    _assert_not_blank(frames, MOVING_TRAINED)
    images = _video_images(run_dir)
    assert len(images) == 2  # training's clip and eval's, both at the checkpoint's env steps

    bad = run_cli("eval", f"run_dir={run_dir}", "eval.video=maybe", cwd=tmp_path)
    assert bad.returncode == 2
    assert "eval.video" in bad_input_line(bad.stderr)


@pytest.mark.slow
def test_training_time_videos_at_an_interval(tmp_path: Path) -> None:
    from asyncql_cli.config.loading import load_config
    from asyncql_cli.runtime.run import train

    run_dir = tmp_path / "run"
    cfg = compose_config([
        "parallelism=serial", "parallelism.num_actors=1", "parallelism.envs_per_actor=4",
        "train.total_env_steps=256", "train.learning_starts=64", "train.progress=none",
        "eval.interval_seconds=100", "eval.episodes=2", "eval.video=true",
        "eval.video_interval_seconds=0.001", "network.hidden=[32,32]",
    ])
    assert train(load_config(cfg), run_dir) == 0
    during = sorted((run_dir / "videos").glob("step_*.mp4"))
    assert during, list((run_dir / "videos").iterdir())
    assert len(list((run_dir / "videos").glob("best_step_*.mp4"))) == 1
    frames, fps = _decode(during[0])
    assert fps == pytest.approx(50.0)
    _assert_not_blank(frames)
    assert len(_video_images(run_dir)) == len(during) + 1
