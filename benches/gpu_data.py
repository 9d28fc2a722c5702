"""ImageNet-like files for the GPU benchmarks and the prepared GPU check, generated in code.

    python3 benches/gpu_data.py --out /tmp/gpuds --images 4096

An ImageFolder of ``--classes`` class folders. Like ImageNet's training set: sizes spread
around 400x350 (here 320..640 x 240..480), baseline JPEGs with 4:2:0 chroma at quality 75-95
for the most part, and a few of the other kinds a decoder meets there: 4:4:4 (2%),
progressive (3%), grayscale (1%) and PNG (2%, a file the GPU's JPEG decoder cannot take).
Smooth gradients plus noise make files of about 80 KB (ImageNet: about 110 KB). Deterministic for a
seed; prints the counts of each kind.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections import Counter
from multiprocessing import Pool
from typing import Tuple

import numpy as np
from PIL import Image


def kind_of(i: int) -> str:
    """The kind of image ``i`` (a fixed pattern, so every run has the same mix)."""
    if i % 50 == 7:
        return "png"
    if i % 100 in (13, 63, 88):
        return "progressive"
    if i % 50 == 21:
        return "444"
    if i % 100 == 42:
        return "gray"
    return "420"


def make(args: Tuple[str, int, int, int]) -> Tuple[str, int]:
    out, i, classes, seed = args
    rng = np.random.default_rng(seed * 1_000_003 + i)
    w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
    y, x = np.mgrid[:h, :w].astype(np.float32)
    planes = []
    for c in range(3):
        fx, fy = rng.uniform(12, 70, 2)
        phase = rng.uniform(0, 6.3)
        planes.append(128 + 60 * np.sin(x / fx + phase + c) + 45 * np.cos(y / fy - 2 * c))
    a = np.stack(planes, -1) + rng.normal(0, 16, (h, w, 3))
    img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    kind = kind_of(i)
    buf = io.BytesIO()
    quality = int(rng.integers(75, 96))
    if kind == "png":
        img.save(buf, "PNG", compress_level=1)
        ext = "png"
    else:
        ext = "jpg"
        opts = {"quality": quality, "subsampling": 2}
        if kind == "444":
            opts["subsampling"] = 0
        elif kind == "progressive":
            opts["progressive"] = True
        elif kind == "gray":
            img = img.convert("L")
            opts.pop("subsampling")
        img.save(buf, "JPEG", **opts)
    d = os.path.join(out, f"class_{i % classes:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"img_{i:06d}.{ext}"), "wb") as f:
        f.write(buf.getvalue())
    return kind, len(buf.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if os.path.isdir(a.out) and any(os.scandir(a.out)):
        print(f"gpu_data: {a.out} exists, kept")
        return 0
    os.makedirs(a.out, exist_ok=True)
    jobs = [(a.out, i, a.classes, a.seed) for i in range(a.images)]
    with Pool(os.cpu_count() or 1) as pool:
        made = pool.map(make, jobs, chunksize=16)
    kinds = Counter(k for k, _ in made)
    total = sum(n for _, n in made)
    print(
        f"gpu_data: {a.images} images in {a.classes} classes under {a.out}, "
        f"{total / a.images / 1e3:.0f} KB each on average; kinds {dict(sorted(kinds.items()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
