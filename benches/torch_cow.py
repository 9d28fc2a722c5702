"""What the copy-on-write slots of ``Loader.torch(device=None)`` cost per batch.

A batch ring like the daemon's (a memfd of ``depth`` slots) is mapped twice, as the client
maps it: shared read-only (the numpy path) and private copy-on-write (the CPU torch path,
whose pages the client drops with ``MADV_DONTNEED`` before each batch so that it shows the
daemon's new data). Each batch is read once in full (``np.copyto`` into a buffer, as a
trainer's first op reads it), and optionally written in place (``add_(1)``) first.

    python3 benches/torch_cow.py [--batch 256] [--side 224] [--batches 40]
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40)
    a = ap.parse_args()
    slot = a.batch * a.side * a.side * 3
    fd = os.memfd_create("ring", os.MFD_CLOEXEC)
    os.ftruncate(fd, slot * a.depth)
    writer = mmap.mmap(fd, slot * a.depth, flags=mmap.MAP_SHARED)
    writer[:] = os.urandom(1 << 20) * (slot * a.depth >> 20) + bytes(slot * a.depth % (1 << 20))
    shared = mmap.mmap(fd, slot * a.depth, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    private = mmap.mmap(
        fd, slot * a.depth, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
    )
    out = np.empty(slot, dtype=np.uint8)

    def run(ring: mmap.mmap, drop: bool, write: bool) -> float:
        started = time.perf_counter()
        for i in range(a.batches):
            off = (i % a.depth) * slot
            if drop:
                ring.madvise(mmap.MADV_DONTNEED, off, slot)
            view = np.frombuffer(ring, dtype=np.uint8, count=slot, offset=off)
            if write:
                view += 1  # what x.add_(1) does to a tensor over this view
            np.copyto(out, view)
            del view
        return (time.perf_counter() - started) / a.batches * 1e3

    run(shared, False, False)  # fault everything in once
    run(private, True, False)
    rows = [
        ("shared read-only mapping (numpy path), read", run(shared, False, False)),
        ("copy-on-write mapping, MADV_DONTNEED + read", run(private, True, False)),
        ("copy-on-write mapping, in-place add + read", run(private, True, True)),
        ("copy of the batch (.clone()) + read", 0.0),
    ]
    started = time.perf_counter()
    for i in range(a.batches):
        off = (i % a.depth) * slot
        copy = np.frombuffer(shared, dtype=np.uint8, count=slot, offset=off).copy()
        np.copyto(out, copy)
    rows[3] = (rows[3][0], (time.perf_counter() - started) / a.batches * 1e3)
    print(f"batch {a.batch}x{a.side}x{a.side}x3 uint8 ({slot / 1e6:.1f} MB), {a.batches} batches")
    for name, ms in rows:
        print(f"  {name:<48} {ms:7.2f} ms/batch")


if __name__ == "__main__":
    main()
