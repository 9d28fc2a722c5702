"""ResNet-50 training throughput fed by loaderd (or by synthetic tensors, for the GPU's ceiling).

    python examples/train_resnet50.py --dataset /imagenet/train --batch-size 256 --steps 200
    python examples/train_resnet50.py --synthetic --batch-size 256 --steps 200
    python examples/train_resnet50.py --dataset /imagenet/train --loader host --compile

The loader delivers uint8 NHWC batches (4x fewer bytes than float32). With ``--loader device``
(the default on CUDA) the daemon decodes them on the GPU into device memory the trainer reads in
place (``Loader(device=...)``; a daemon without a usable GPU serves a host ring and says why);
with ``--loader host`` the daemon decodes on its CPUs and ``.torch(device)`` copies each batch
to the GPU. The GPU converts, normalizes and lays them out channels_last (``--no-channels-last``
to keep NCHW). bf16 autocast on CUDA (``--no-bf16`` for float32), SGD. Prints the images/s of
the steps after the warm-up (``--json``: one JSON object). Runs on the CPU too (``--device
cpu``), slowly: a smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Iterator, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def on_off(p: argparse.ArgumentParser, name: str, default: Any, help: str) -> None:
    """``--NAME`` and ``--no-NAME`` (argparse.BooleanOptionalAction is Python 3.9+)."""
    dest = name.replace("-", "_")
    p.add_argument(f"--{name}", dest=dest, action="store_true", default=default, help=help)
    p.add_argument(f"--no-{name}", dest=dest, action="store_false")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset", help="logical path of the dataset in loaderd (ImageFolder or WebDataset)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the measurement")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument(
        "--synthetic", action="store_true", help="random tensors on the device, no loader"
    )
    p.add_argument(
        "--socket", help="loaderd socket (default: $LOADERD_SOCKET or the per-user default)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help="decode threads in the daemon (0: its default)"
    )
    p.add_argument(
        "--depth", type=int, default=0, help="batches the daemon prepares ahead (0: its default)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cuda", help="the torch device the model trains on")
    p.add_argument(
        "--loader",
        choices=["device", "host"],
        default="device",
        help="device: batches decoded by the daemon into --device's memory (a CUDA device; "
        "on the CPU this is the host path); host: a host ring copied with .torch(device)",
    )
    on_off(p, "bf16", None, "bf16 autocast (default on CUDA)")
    on_off(p, "channels-last", True, "channels_last model and inputs (default)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args()
    if not args.synthetic and not args.dataset:
        p.error("--dataset is required unless --synthetic")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return args


def batches(args: argparse.Namespace, torch: Any, device: Any) -> Iterator[Tuple[Any, Any]]:
    """Endless (images, labels) on ``device``: images float, normalized, channels_last unless
    ``--no-channels-last``."""
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.synthetic:
        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        x = x.contiguous(memory_format=layout)
        y = torch.randint(0, args.classes, (args.batch_size,), device=device)
        while True:
            yield x, y

    from loaderd import Loader

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    kwargs: Any = dict(
        size=args.size,
        layout="NHWC",
        socket=args.socket,
        workers=args.workers,
        depth=args.depth,
        drop_last=True,
        name="train_resnet50",
    )
    # The GPU path: batches in device memory, read in place (valid until the next batch).
    on_device = args.loader == "device" and device.type == "cuda"
    if on_device:
        kwargs["device"] = device
    loader = Loader(args.dataset, args.batch_size, **kwargs)
    epoch, told = 0, False
    while True:
        loader.set_epoch(epoch)
        for images, labels in loader if on_device else loader.torch(device):
            if on_device and not told:
                # Known once the daemon answered: device memory, or a host ring and why.
                told = True
                print(f"train_resnet50: batches in {loader.memory} memory {loader.gpu_reason}")
            # uint8 NHWC is already channels_last once permuted to NCHW: no copy.
            x = images.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            yield x.contiguous(memory_format=layout), labels.long()
        epoch += 1


def main() -> int:
    args = parse_args()
    import torch
    import torchvision

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bf16 = cuda if args.bf16 is None else args.bf16
    if cuda:
        torch.backends.cudnn.benchmark = True
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = torchvision.models.resnet50(num_classes=args.classes).to(device, memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    step_model = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    data = batches(args, torch, device)
    start = time.perf_counter()
    images_seen = 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            start, images_seen = time.perf_counter(), 0
        x, y = next(data)
        with autocast:
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images_seen += x.shape[0]
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    source = "synthetic" if args.synthetic else f"loaderd {args.dataset} ({args.loader} ring)"
    result = {
        "source": "synthetic" if args.synthetic else "loaderd",
        "loader": None if args.synthetic else args.loader,
        "images_per_s": images_seen / secs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "secs": secs,
        "loss": loss.item(),
        "bf16": bf16,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "device": str(device),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"resnet50 {source}: {images_seen / secs:.1f} img/s ({args.steps} steps of "
            f"{args.batch_size}, {secs:.1f} s, loss {loss.item():.3f}, bf16 {bf16}, "
            f"channels_last {args.channels_last}, compile {args.compile})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
