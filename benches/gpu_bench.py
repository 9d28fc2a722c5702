"""The measurements of benches/gpu.sh, and the device="cuda" smoke of benches/gpu-check.sh.

    python3 benches/gpu_bench.py smoke --dataset /ds            # a loaderd daemon on $LOADERD_SOCKET
    python3 benches/gpu_bench.py pipelines --dataset /ds --files DIR [--batch-size 256]

``pipelines`` measures, on the same files (DIR is the folder the daemon mounts at --dataset),
images/s of training batches delivered as normalized float NCHW channels_last tensors on the
GPU (random resized crop to --size, random flip; every pipeline does the same normalization on
the GPU):

  loaderd_gpu     the daemon decodes on the GPU (nvJPEG + fused kernel) into a device ring;
                  Loader(..., device="cuda"), zero-copy
  loaderd_cpu     the daemon decodes on its CPUs into a host ring; .torch("cuda") copies
  torchvision_gpu torchvision.io.decode_jpeg(list of batch-size files, device="cuda"), then
                  per image resized_crop + flip on the GPU (PNGs decoded on the CPU); the file
                  bytes are read into memory first, as the daemon's cache holds them
  dataloader_pil  torch DataLoader over ImageFolder with PIL (RandomResizedCrop + flip in
                  workers = CPU cores), pinned, copied to the GPU

Each runs --epochs epochs and is timed over the last (the first warms up workers, cuDNN,
caches). It prints one line per pipeline and a last line ``RESULT {json}``; a pipeline that
fails prints why, is ``{"failed": reason}`` in the result, and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalizer(torch: Any, device: Any) -> Callable[[Any, bool], Any]:
    """uint8 images (NHWC when ``nhwc``, else NCHW) → normalized float NCHW channels_last."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def norm(x: Any, nhwc: bool) -> Any:
        if nhwc:
            x = x.permute(0, 3, 1, 2)
        x = x.float().sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last)

    return norm


def timed_epochs(
    torch: Any, epochs: int, one_epoch: Callable[[int], Iterator[Tuple[Any, Any]]], nhwc: bool
) -> Tuple[float, int, Any]:
    """Runs ``epochs`` epochs; returns (seconds, images) of the last and its last batch."""
    norm = normalizer(torch, torch.device("cuda"))
    secs, images, last = 0.0, 0, None
    for e in range(epochs):
        torch.cuda.synchronize()
        start, images = time.perf_counter(), 0
        for x, y in one_epoch(e):
            last = norm(x, nhwc)
            images += x.shape[0]
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
    return secs, images, last


def open_loader(a: argparse.Namespace, device: Optional[str], name: str) -> Any:
    from loaderd import Loader

    kw: Dict[str, Any] = dict(
        size=a.size, layout="NHWC", seed=a.seed, name=name, socket=a.socket, depth=a.depth
    )
    if device is not None:
        try:
            return Loader(a.dataset, a.batch_size, device=device, **kw)
        except TypeError as e:
            raise RuntimeError(f"this loaderd client has no CUDA path (device=): {e}") from e
    return Loader(a.dataset, a.batch_size, **kw)


def loaderd_gpu(torch: Any, a: argparse.Namespace) -> Tuple[float, int, Dict[str, Any]]:
    loader = open_loader(a, "cuda", "gpu_bench loaderd_gpu")
    try:

        def epoch(e: int) -> Iterator[Tuple[Any, Any]]:
            loader.set_epoch(e)
            for x, y in loader:
                if getattr(loader, "memory", "cuda") != "cuda" or not x.is_cuda:
                    raise RuntimeError(
                        f"the daemon served the device='cuda' loader from {loader.memory} "
                        f"memory: {getattr(loader, 'gpu_reason', '?')}"
                    )
                yield x, y

        secs, n, _ = timed_epochs(torch, a.epochs, epoch, nhwc=True)
        return secs, n, {"memory": getattr(loader, "memory", None)}
    finally:
        loader.close()


def loaderd_cpu(torch: Any, a: argparse.Namespace) -> Tuple[float, int, Dict[str, Any]]:
    loader = open_loader(a, None, "gpu_bench loaderd_cpu")
    try:

        def epoch(e: int) -> Iterator[Tuple[Any, Any]]:
            loader.set_epoch(e)
            return loader.torch("cuda")

        secs, n, _ = timed_epochs(torch, a.epochs, epoch, nhwc=True)
        return secs, n, {}
    finally:
        loader.close()


def dataset_files(root: str) -> List[Tuple[str, int]]:
    """(path, label) of an ImageFolder, sorted like torchvision's."""
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    out = []
    for label, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            out.append((os.path.join(root, c, f), label))
    return out


def gpu_decodable(data: bytes) -> bool:
    """Whether ``data`` is a baseline (or extended sequential) JPEG of 3 components: what
    torchvision's GPU decode takes without trouble. Reads the markers up to the frame header."""
    if data[:2] != b"\xff\xd8":
        return False
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False
        marker = data[at + 1]
        if marker in (0xC0, 0xC1):
            return at + 9 < len(data) and data[at + 9] == 3
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return False  # progressive, lossless, arithmetic
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False


def torchvision_gpu(torch: Any, a: argparse.Namespace) -> Tuple[float, int, Dict[str, Any]]:
    import torchvision
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2.functional import resized_crop

    files = dataset_files(a.files)
    datas = []
    for path, _ in files:
        with open(path, "rb") as f:
            datas.append(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8))
    # As a careful user would: the GPU decodes baseline colour JPEGs, the CPU the rest.
    on_gpu = [gpu_decodable(bytes(d.numpy())) for d in datas]
    labels = torch.tensor([l for _, l in files])
    fallbacks = {"cpu_decoded": 0}

    def to_gpu(i: int) -> Any:
        fallbacks["cpu_decoded"] += 1
        return decode_image(datas[i], mode=ImageReadMode.RGB).cuda(non_blocking=True)

    def decode(idx: List[int]) -> List[Any]:
        jpegs = [i for i in idx if on_gpu[i]]
        out: Dict[int, Any] = {}
        try:
            got = decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB, device="cuda")
            out.update(zip(jpegs, got))
        except RuntimeError:
            # One image the GPU refuses fails the list: decode those one by one.
            for i in jpegs:
                try:
                    out[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device="cuda")
                except RuntimeError:
                    out[i] = to_gpu(i)
        return [out[i] if i in out else to_gpu(i) for i in idx]

    gen = torch.Generator().manual_seed(a.seed)

    def epoch(e: int) -> Iterator[Tuple[Any, Any]]:
        order = torch.randperm(len(files), generator=gen).tolist()
        for s in range(0, len(order), a.batch_size):
            idx = order[s : s + a.batch_size]
            crops = []
            for img in decode(idx):
                top, left, h, w = RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
                c = resized_crop(img, top, left, h, w, [a.size, a.size], antialias=True)
                if torch.rand(1, generator=gen).item() < 0.5:
                    c = c.flip(-1)
                crops.append(c)
            yield torch.stack(crops), labels[idx].cuda(non_blocking=True)

    secs, n, _ = timed_epochs(torch, a.epochs, epoch, nhwc=False)
    return secs, n, {"torchvision": torchvision.__version__, **fallbacks}


def dataloader_pil(torch: Any, a: argparse.Namespace) -> Tuple[float, int, Dict[str, Any]]:
    from torchvision import datasets, transforms

    workers = os.cpu_count() or 1
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(a.size),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    dl = torch.utils.data.DataLoader(
        datasets.ImageFolder(a.files, transform=tf),
        batch_size=a.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=True,
        persistent_workers=True,
        prefetch_factor=4,
    )

    def epoch(e: int) -> Iterator[Tuple[Any, Any]]:
        for x, y in dl:
            yield x.cuda(non_blocking=True), y.cuda(non_blocking=True)

    secs, n, _ = timed_epochs(torch, a.epochs, epoch, nhwc=False)
    return secs, n, {"workers": workers}


PIPELINES = {
    "loaderd_gpu": loaderd_gpu,
    "loaderd_cpu": loaderd_cpu,
    "torchvision_gpu": torchvision_gpu,
    "dataloader_pil": dataloader_pil,
}


def pipelines(a: argparse.Namespace) -> int:
    import torch

    names = a.only or list(PIPELINES)
    results: Dict[str, Any] = {}
    if not torch.cuda.is_available():
        print("gpu_bench: torch sees no CUDA device", file=sys.stderr)
        results = {n: {"failed": "torch sees no CUDA device"} for n in names}
    else:
        print(f"gpu_bench: torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for name in names if not results else []:
        try:
            secs, n, extra = PIPELINES[name](torch, a)
            results[name] = {"images_per_s": n / secs, "images": n, "secs": secs, **extra}
            print(f"gpu_bench: {name}: {n / secs:.0f} img/s ({n} images in {secs:.2f} s) {extra}")
        except Exception as e:  # report and go on with the next pipeline
            traceback.print_exc()
            results[name] = {"failed": str(e)[:300]}
            print(f"gpu_bench: {name}: FAILED: {e}")
        sys.stdout.flush()
    print("RESULT " + json.dumps(results))
    return int(any("failed" in r for r in results.values()))


def smoke(a: argparse.Namespace) -> int:
    """A device="cuda" loader: CUDA tensors of the right shape and dtype for an epoch, and its
    first batch beside the CPU path's for the same seed (labels equal, pixels close)."""
    import numpy as np
    import torch

    gpu = open_loader(a, "cuda", "gpu_bench smoke cuda")
    cpu = open_loader(a, None, "gpu_bench smoke cpu")
    try:
        first = None
        batches = images = 0
        for x, y in gpu:
            assert x.is_cuda and y.is_cuda, f"host tensors from a device='cuda' loader: {x.device}"
            assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (a.size, a.size, 3), (
                x.dtype,
                tuple(x.shape),
            )
            if first is None:
                print(f"smoke: memory={gpu.memory!r} gpu_reason={gpu.gpu_reason!r}")
                assert gpu.memory == "cuda", f"served from host memory: {gpu.gpu_reason}"
                first = (x.cpu().numpy().copy(), y.cpu().numpy().copy())
            batches, images = batches + 1, images + x.shape[0]
        torch.cuda.synchronize()
        assert first is not None, "no batch"
        cx, cy = next(iter(cpu))
        cx, cy = np.asarray(cx), np.asarray(cy)
        gx, gy = first
        assert (gy == cy).all(), f"labels differ: {gy[:8]} vs {cy[:8]}"
        assert gx.shape == cx.shape, (gx.shape, cx.shape)
        d = np.abs(gx.astype(np.int16) - cx.astype(np.int16))
        within = float((d <= 8).mean())
        print(
            f"smoke: {batches} batches, {images} images on {x.device}; first batch vs the CPU "
            f"path: max |diff| {int(d.max())}, mean {d.mean():.2f}, {100 * within:.2f}% of "
            "values within 8 levels"
        )
        # The crops and flips are the same; decoders differ by a few levels (IDCT, upsampling).
        assert within >= 0.95, "the GPU and CPU batches of one seed differ"
        return 0
    finally:
        gpu.close()
        cpu.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["smoke", "pipelines"])
    p.add_argument("--dataset", required=True, help="the dataset's logical path in loaderd")
    p.add_argument("--files", help="the folder the daemon mounts there (pipelines)")
    p.add_argument("--socket", default=os.environ.get("LOADERD_SOCKET"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--only", nargs="*", choices=list(PIPELINES))
    a = p.parse_args()
    if a.mode == "smoke":
        a.batch_size = min(a.batch_size, 64)
        return smoke(a)
    if not a.files:
        p.error("pipelines needs --files")
    return pipelines(a)


if __name__ == "__main__":
    sys.exit(main())
