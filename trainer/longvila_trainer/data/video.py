"""Pixels for the vision tower: decode video with PyAV, sample frames uniformly, resize, normalize.

A video becomes N frames (`uniform_indices`): N evenly spaced frame indices from first to
last, rounded, so both ends are always kept (VILA samples the same way, np.linspace over
the decoded frames). A video shorter than N repeats frames rather than changing N: the
number of media placeholders in the text was fixed when the sample was tokenized.

Decoding is one sequential pass that keeps only the wanted frames, so memory stays at N
frames however long the video. `to_pixels` gives the tower's input [N, 3, S, S]:
bilinear resize (antialiased) to S×S, then (x/255 − mean)/std per channel; SigLIP's
mean and std are 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def uniform_indices(n_total: int, n_frames: int) -> list[int]:
    """`n_frames` indices spread evenly over [0, n_total − 1], both ends included."""
    if n_total < 1 or n_frames < 1:
        raise ValueError(f"need ≥ 1 frame in the video and ≥ 1 to sample, got {n_total}, {n_frames}")
    if n_frames == 1:
        return [0]
    return [round(i * (n_total - 1) / (n_frames - 1)) for i in range(n_frames)]


Source = str | Path | BinaryIO  # a file, or an open binary file (seekable: it is read twice)


def _open(source: Source) -> av.container.InputContainer:
    if not isinstance(source, str | Path):
        source.seek(0)
    container = av.open(str(source) if isinstance(source, str | Path) else source, mode="r")
    assert isinstance(container, av.container.InputContainer)
    return container


def count_frames(path: Source) -> int:
    """Frames in the first video stream: the container's count, else one decode pass."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def decode_video(path: Source, n_frames: int) -> np.ndarray:
    """`n_frames` uniformly sampled RGB frames of the video: uint8 [N, H, W, 3]."""
    wanted = uniform_indices(count_frames(path), n_frames)
    keep, last = set(wanted), wanted[-1]
    picked: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                picked[i] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
            if i >= last:
                break
    if not picked:
        raise ValueError(f"{getattr(path, 'name', path)}: no decodable video frames")
    # A container may over-report its frame count; fall back to the last decoded frame.
    have = sorted(picked)
    return np.stack([picked[i] if i in picked else picked[have[-1]] for i in wanted])


def load_image(path: Source) -> np.ndarray:
    """An image file as RGB uint8 [1, H, W, 3] (one frame)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[None]


def to_pixels(
    frames: np.ndarray,
    size: int,
    mean: tuple[float, float, float] = SIGLIP_MEAN,
    std: tuple[float, float, float] = SIGLIP_STD,
) -> torch.Tensor:
    """uint8 [N, H, W, 3] → normalized float32 [N, 3, size, size]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3], got {frames.shape}")
    x = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(0, 3, 1, 2).float()  # [N, 3, H, W]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s  # [N, 3, size, size]
