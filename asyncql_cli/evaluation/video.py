"""`eval.video`: mp4 clips of greedy episodes, and the same clip in TensorBoard.

`record_video` plays episodes with the evaluation's own loop (`episodes.play_greedy`: episode k
on its own env reset with seed `seed + k`, greedy actions), rendering with `rgb_array`, and
writes the frames with gymnasium's own `save_video` (moviepy + ffmpeg from imageio-ffmpeg).
It refuses blank frames and checks that a file came out, because the usual failure is
silent: an mp4 of a few hundred bytes with no frames or blank frames (cleanrl#384, SB3#317).

`GifClip` is the TensorBoard side: an animated GIF encoded here (Pillow), which the run's one
writer (main process) adds as an image summary, the format `SummaryWriter.add_video` produces.
torch's own encoder imports `moviepy.editor`, which moviepy 2 removed; it then prints a warning
and writes an empty image, so it is not used.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch import nn

from asyncql_cli.config.schema import EnvConfig
from asyncql_cli.evaluation.episodes import play_greedy

DEFAULT_FPS = 30  # for envs whose metadata has no render_fps
MAX_FRAMES = 1_000  # frames kept for the mp4 (all in memory while encoding, as in gymnasium)
TB_MAX_FRAMES = 300  # frames in the TensorBoard clip (subsampled evenly, fps scaled to match)
TB_MAX_SIDE = 256  # pixels: the TensorBoard clip is downscaled to fit in this square
BLANK_STD = 1.0  # a clip whose pixels vary less than this (0-255 scale) is blank


class VideoError(RuntimeError):
    """The env cannot be recorded (no rgb_array rendering) or the clip came out empty."""


@dataclass
class VideoResult:
    path: Path  # the mp4
    frames: np.ndarray  # uint8 (T, H, W, C), subsampled and downscaled for TensorBoard
    fps: float  # frame rate of `frames` (the mp4's fps divided by the subsampling stride)
    video_fps: float  # frame rate of the mp4
    num_frames: int  # frames written to the mp4
    returns: list[float]
    lengths: list[int]


def record_video(q_net: nn.Module, env: EnvConfig, episodes: int, seed: int, out_path: str | Path,
                 fps: Optional[float] = None, max_frames: int = MAX_FRAMES,
                 max_episode_steps: Optional[int] = None) -> VideoResult:
    """Play `episodes` greedy episodes (episode k: seed + k) and write them as one mp4.

    Recording stops after `max_frames` frames (the episode in progress is cut there). Atari envs
    are the evaluation's: whole games, raw rewards."""
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: expected >= 1")
    out_path = Path(out_path)
    frames: list[np.ndarray] = []
    rates: list[float] = []
    # offscreen rgb_array rendering needs no display; without this pygame probes for one and
    # prints an error line on headless machines (XDG_RUNTIME_DIR ...)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

    def grab(_episode: int, made: Any) -> bool:
        if len(frames) >= max_frames:
            return False
        if not rates:
            rates.append(float((made.metadata or {}).get("render_fps") or DEFAULT_FPS))
        frames.append(_frame(made, env.id))
        return len(frames) < max_frames

    returns, lengths = play_greedy(q_net, env, range(seed, seed + episodes), max_episode_steps,
                                   render_mode="rgb_array", lockstep=1, on_step=grab)
    played = [k for k, length in enumerate(lengths) if length > 0]
    if not frames or (float(np.std(frames[0])) < BLANK_STD and float(np.std(frames[-1])) < BLANK_STD):
        raise VideoError(f"env.id={env.id!r} renders blank frames; nothing to record")
    fps = fps if fps is not None else rates[0]
    _write_mp4(frames, out_path, fps)
    tb_frames, tb_fps = thumbnail_frames(frames, fps)
    return VideoResult(out_path, tb_frames, tb_fps, fps, len(frames), [returns[k] for k in played],
                       [lengths[k] for k in played])


def _frame(env: Any, env_id: str) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise VideoError(
            f"env.id={env_id!r} does not render RGB frames with render_mode='rgb_array' "
            f"(got {type(frame).__name__}); eval.video needs it"
        )
    frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    # libx264 with yuv420p needs even dimensions: drop a last odd row / column
    height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
    return np.ascontiguousarray(frame[:height, :width])


def _write_mp4(frames: list[np.ndarray], out_path: Path, fps: float) -> None:
    """gymnasium's save_video into a temporary name next to out_path, then an atomic rename
    (save_video names its files itself; a reader never sees a half-written mp4)."""
    from gymnasium.utils.save_video import save_video  # imports moviepy: only when recording

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".video-") as tmp:
        # moviepy 2 writes int(sum of n float 1/fps durations * fps) frames, often n - 1: the
        # last frame (the episode's end) would be lost; a repeat of it keeps every frame
        save_video(frames + frames[-1:], tmp, episode_trigger=lambda _: True, name_prefix="clip",
                   fps=fps, save_logger=None)
        written = Path(tmp) / "clip-episode-0.mp4"
        if not written.is_file() or written.stat().st_size == 0:
            raise VideoError(f"moviepy wrote no video for {out_path}")
        os.replace(written, out_path)


def thumbnail_frames(frames: Sequence[np.ndarray], fps: float, max_frames: int = TB_MAX_FRAMES,
                     max_side: int = TB_MAX_SIDE) -> tuple[np.ndarray, float]:
    """Subsample uint8 (H, W, C) frames to at most `max_frames` (keeping real-time speed)
    and downscale them to fit `max_side`; returns them as (T, H, W, C) and their fps."""
    from PIL import Image

    stride = max(1, math.ceil(len(frames) / max_frames))
    kept = list(frames[::stride])
    height, width = kept[0].shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        kept = [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in kept]
    return np.ascontiguousarray(np.stack(kept), dtype=np.uint8), fps / stride


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """An endlessly looping animated GIF of uint8 (T, H, W, 3) frames."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = max(20, round(1000 / fps))  # ms per frame; browsers slow down anything below 20
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=duration, loop=0)
    return buffer.getvalue()


@dataclass(frozen=True)
class GifClip:
    """An animated GIF and its size: what a process without the run's writer hands to it."""

    gif: bytes
    height: int
    width: int
    channels: int


def gif_clip(frames: np.ndarray, fps: float) -> GifClip:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[3] not in (3, 4):
        raise ValueError(f"frames of shape {frames.shape}: expected (T, H, W, 3) with T >= 1")
    frames = np.ascontiguousarray(frames[..., :3], dtype=np.uint8)
    _, height, width, channels = frames.shape
    return GifClip(encode_gif(frames, fps), height, width, channels)


def add_clip_to_tensorboard(writer: Any, tag: str, clip: GifClip, step: int) -> None:
    """Write `clip` to `writer` (a SummaryWriter) as `add_video` would: an image summary holding
    an animated GIF, shown in TensorBoard's Images tab."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=clip.height, width=clip.width, colorspace=clip.channels,
                          encoded_image_string=clip.gif)
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def add_video_to_tensorboard(writer: Any, tag: str, frames: np.ndarray, fps: float, step: int) -> None:
    """uint8 (T, H, W, C) frames as an animated GIF in `writer`."""
    add_clip_to_tensorboard(writer, tag, gif_clip(frames, fps), step)
