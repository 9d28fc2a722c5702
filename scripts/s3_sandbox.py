#!/usr/bin/env python3
"""A real S3 server on localhost for the end-to-end tests and the quickstart.

Starts moto's S3 server, creates one bucket, uploads local directories into it,
then writes a JSON "ready file" describing how to reach it and serves until
SIGTERM or SIGINT.

    python3 scripts/s3_sandbox.py --port 0 --bucket train \
        --upload ./dataset:imagenet-mini --ready-file /tmp/s3.json

The ready file is written atomically (temporary file + rename), so a reader
that sees it always sees complete JSON:

    {"endpoint": "http://127.0.0.1:PORT", "bucket": "train", "region": "us-east-1",
     "access_key_id": "testing", "secret_access_key": "testing",
     "objects": N, "pid": PID}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


def fail(message: str) -> NoReturn:
    print(f"s3_sandbox: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_upload(spec: str) -> tuple[Path, str]:
    """Parses LOCAL_DIR:PREFIX; the prefix may be empty, the directory may not."""
    if ":" not in spec:
        fail(f"--upload expects LOCAL_DIR:PREFIX, got {spec!r}")
    local, prefix = spec.rsplit(":", 1)
    if not local:
        fail(f"--upload {spec!r}: empty local directory")
    path = Path(local)
    if not path.is_dir():
        fail(f"--upload {spec!r}: not a directory: {local}")
    return path, prefix.strip("/")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a local S3 server (moto) with one bucket.")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--bucket", required=True, help="bucket to create")
    parser.add_argument(
        "--upload",
        action="append",
        default=[],
        metavar="LOCAL_DIR:PREFIX",
        help="upload every file under LOCAL_DIR to PREFIX/relative/path (repeatable)",
    )
    parser.add_argument("--ready-file", required=True, help="where to write the JSON once ready")
    parser.add_argument("--workers", type=int, default=16, help="upload threads")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        fail(f"--port {args.port} out of range")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", args.bucket):
        fail(f"invalid bucket name {args.bucket!r} (3-63 chars of a-z, 0-9, '.', '-')")
    ready_dir = Path(args.ready_file).resolve().parent
    if not ready_dir.is_dir():
        fail(f"--ready-file: directory does not exist: {ready_dir}")
    if args.workers < 1:
        fail("--workers must be at least 1")
    args.uploads = [parse_upload(spec) for spec in args.upload]
    return args


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port_free(port: int) -> None:
    """Fails clearly if the port is taken; the server would otherwise hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as the server, so a port in TIME_WAIT (restart) passes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as err:
            fail(f"cannot listen on {HOST}:{port}: {err.strerror}")


def files_to_upload(uploads: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    jobs = []
    for root, prefix in uploads:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            jobs.append((path, f"{prefix}/{rel}" if prefix else rel))
    return jobs


def write_ready_file(path: str, info: dict) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, target)


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    # Imported late so that argument errors are reported quickly.
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    # One access-log line per request would drown the test logs.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    port = args.port or free_port()
    endpoint = f"http://{HOST}:{port}"
    check_port_free(port)
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    # start() waits forever if the server thread dies before listening (port
    # taken between the check above and now), so bound the wait.
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(timeout=15)
    if starter.is_alive():
        fail(f"S3 server did not start listening on {HOST}:{port}")

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(max_pool_connections=args.workers, retries={"max_attempts": 5}),
        )
        client.create_bucket(Bucket=args.bucket)

        jobs = files_to_upload(args.uploads)

        def upload(job: tuple[Path, str]) -> None:
            local, key = job
            client.upload_file(str(local), args.bucket, key)

        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            # list() re-raises the first upload error, if any.
            list(pool.map(upload, jobs))

        write_ready_file(
            args.ready_file,
            {
                "endpoint": endpoint,
                "bucket": args.bucket,
                "region": REGION,
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET_ACCESS_KEY,
                "objects": len(jobs),
                "pid": os.getpid(),
            },
        )
        print(f"s3 sandbox ready at {endpoint} ({len(jobs)} objects)", flush=True)

        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
