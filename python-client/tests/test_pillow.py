"""Val transforms against a Pillow reference (torchvision's Resize + CenterCrop on PIL images).

The daemon is not bit-exact with Pillow: it decodes with libjpeg-turbo (Pillow's own decoder
may differ by rounding) and, when the output is small enough, decodes at a reduced DCT scale
instead of resizing a full decode. Measured on the generated noisy 320x240 JPEGs (48 images):

| resize → crop | path                | PSNR min / mean | 1-px shift | flipped | other |
| ------------- | ------------------- | --------------- | ---------- | ------- | ----- |
| 256 → 224     | full decode         | 55.1 / 55.4 dB  | ≤ 31.9     | ≤ 25.5  | ≤ 16.0 |
| 64 → 56       | 1/2 DCT-scaled      | 44.8 / 48.5 dB  | ≤ 42.0     | ≤ 29.1  | ≤ 16.2 |

(PSNR in dB of the daemon's output against the reference, and of the reference against a
crop shifted by one pixel, flipped, or of another image.)
So 50 dB on the full-decode path fails a crop off by one pixel, and 40 dB on the DCT-scaled
path fails a wrong, flipped or garbled image while allowing the scaling's difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _support import Daemon, open_loader


def pillow_val(path: Path, resize: int, size: int) -> np.ndarray:
    """torchvision ``Resize(resize)`` + ``CenterCrop(size)`` on a PIL image, as uint8 HWC."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("resize, size, threshold", [(256, 224, 50.0), (64, 56, 40.0)])
def test_val_output_matches_pillow(
    daemon: Daemon, dataset: Path, resize: int, size: int, threshold: float
) -> None:
    scores = {}
    with open_loader(daemon, batch_size=16, train=False, resize=resize, size=size) as loader:
        for batch in loader.batches():
            assert batch.images.shape[1:] == (size, size, 3)
            for key, img in zip(batch.keys, batch.images):
                scores[key] = psnr(img, pillow_val(dataset / key, resize, size))
    assert len(scores) == 48
    worst = min(scores, key=scores.__getitem__)
    assert (
        scores[worst] >= threshold
    ), f"{worst}: {scores[worst]:.1f} dB (mean {np.mean(list(scores.values())):.1f})"
