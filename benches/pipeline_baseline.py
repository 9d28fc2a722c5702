#!/usr/bin/env python3
"""The baseline for ``loaderctl bench pipeline``: the same training transforms in Python.

One epoch over every image under ``--dir`` (ImageFolder layout), shuffled:

* **pil**: what a torchvision pipeline does per sample, with Pillow alone: open, convert to
  RGB (a full decode), RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3, torchvision's
  sampling) resized with BILINEAR to ``--size`` (``Image.resize(box=crop)``, which is crop +
  resize without the intermediate copy), random horizontal flip, uint8 HWC. Samples are
  processed by a ``multiprocessing.Pool`` of ``--workers`` processes and returned to the
  parent, which assembles NHWC uint8 batches of ``--batch-size``.
* **torch**: ``torch.utils.data.DataLoader`` over ``torchvision.datasets.ImageFolder`` with
  ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``PILToTensor`` and ``--workers``
  worker processes, when torch and torchvision are installed (skipped otherwise).

Prints images/s and MB/s of output (``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

# torchvision's IMG_EXTENSIONS.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def list_images(root: Path) -> List[Path]:
    """Every image below ``root``, sorted (ImageFolder's order)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def random_resized_crop(width: int, height: int, rng: random.Random) -> Tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: the crop box ``(left, top, right, bottom)``."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    # Fallback: the centre crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        w, h = int(round(height * max(RATIO))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def transform(job: Tuple[str, int, int]) -> bytes:
    """One training sample: decode, random resized crop, flip; HWC uint8 bytes."""
    path, size, seed = job
    rng = random.Random(seed)
    with Image.open(path) as img:
        img = img.convert("RGB")
        box = random_resized_crop(img.width, img.height, rng)
        out = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out.tobytes()


def run_pil(
    files: List[Path], batch_size: int, workers: int, size: int, seed: int
) -> Dict[str, Any]:
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    jobs = [(str(files[i]), size, seed * 1_000_003 + i) for i in order]
    sample = size * size * 3
    batches = 0
    started = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        pending: List[bytes] = []
        for data in pool.imap(transform, jobs, chunksize=8):
            pending.append(data)
            if len(pending) == batch_size:
                _assemble(pending, size)
                batches += 1
                pending = []
        if pending:
            _assemble(pending, size)
            batches += 1
    secs = time.perf_counter() - started
    return _result(len(jobs), batches, len(jobs) * sample, secs)


def _assemble(samples: List[bytes], size: int) -> np.ndarray:
    """The NHWC uint8 batch a training step would receive."""
    batch = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(samples):
        batch[i] = np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
    return batch


def run_torch(
    root: Path, batch_size: int, workers: int, size: int, seed: int
) -> Optional[Dict[str, Any]]:
    try:
        import torch
        from torchvision import datasets, transforms
    except ImportError as e:
        print(f"torch DataLoader baseline skipped: {e}", file=sys.stderr)
        return None
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=SCALE, ratio=RATIO),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=gen,
        persistent_workers=False,
    )
    samples = batches = 0
    started = time.perf_counter()
    for images, _ in loader:
        samples += images.shape[0]
        batches += 1
    secs = time.perf_counter() - started
    return _result(samples, batches, samples * size * size * 3, secs)


def _result(samples: int, batches: int, nbytes: int, secs: float) -> Dict[str, Any]:
    return {
        "samples": samples,
        "batches": batches,
        "secs": secs,
        "images_per_s": samples / secs,
        "mb_per_s": nbytes / secs / 1e6,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dir", required=True, type=Path, help="ImageFolder root (class folders of images)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip the torch DataLoader variant")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()

    files = list_images(args.dir)
    if not files:
        p.error(f"no images under {args.dir}")
    results: Dict[str, Any] = {
        "dir": str(args.dir),
        "files": len(files),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "size": args.size,
        "pil": run_pil(files, args.batch_size, args.workers, args.size, args.seed),
        "torch": (
            None
            if args.no_torch
            else run_torch(args.dir, args.batch_size, args.workers, args.size, args.seed)
        ),
    }
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    for name in ("pil", "torch"):
        r = results[name]
        if r is not None:
            print(
                f"{name:>5}: {r['samples']} images in {r['secs']:.2f}s: "
                f"{r['images_per_s']:.1f} img/s, {r['mb_per_s']:.1f} MB/s ({args.workers} workers)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
