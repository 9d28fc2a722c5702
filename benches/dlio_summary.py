"""Results of benches/dlio.sh: one JSON line per DLIO training run, then one table.

  dlio_summary.py record --workload W --mode M --out DIR ...   prints one JSON line
  dlio_summary.py table RESULTS.jsonl                          prints the Markdown table
  dlio_summary.py sample --metrics URL --out FILE              samples the daemon's counters

`sample` scrapes the daemon's Prometheus endpoint about every second until it is killed, one
JSON line per scrape: the bytes its FUSE view returned, the bytes it read from its UFS, the
files opened through the view.

`record` reads DLIO's DIR/summary.json (the `metric` block: per-epoch and mean AU % and
samples/s; AU excludes each epoch's first step, throughput counts it) and the daemon's
`loaderctl status --json` before and after the run, and keeps the bytes the daemon read from
its UFS and served from its cache over the run.
"""

import argparse
import datetime
import json
import pathlib
import sys
import time
import urllib.request

# MLPerf Storage counts a training run only at this accelerator utilisation.
AU_PASS = 90.0


def find_summary(out: pathlib.Path) -> pathlib.Path:
    direct = out / "summary.json"
    if direct.is_file():
        return direct
    found = sorted(out.rglob("*summary.json"))
    if not found:
        sys.exit(f"dlio_summary.py: no summary.json under {out}")
    return found[0]


# Prometheus counters sampled during a run, and the names they get in the results.
SAMPLED = {
    "loaderd_fuse_read_bytes_total": "fuse_bytes",
    "loaderd_ufs_bytes_total": "ufs_bytes",
    "loaderd_fuse_opens_total": "fuse_opens",
}


def scrape(url: str) -> dict:
    totals = dict.fromkeys(SAMPLED.values(), 0.0)
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in SAMPLED:
                totals[SAMPLED[name]] += float(line.rsplit(" ", 1)[1])
    return totals


def sample(args) -> None:
    with open(args.out, "a") as out:
        while True:
            try:
                row = scrape(args.metrics)
            except OSError as err:  # the daemon is starting or stopping
                print(f"dlio_summary.py sample: {err}", file=sys.stderr)
            else:
                row["t"] = time.time()
                out.write(json.dumps(row) + "\n")
                out.flush()
            time.sleep(1.0)


def epoch_windows(out: pathlib.Path) -> list:
    """(start, end) of each epoch, from DLIO's per_epoch_stats.json (local times)."""
    stats = json.loads((out / "per_epoch_stats.json").read_text())
    epochs = sorted((k for k in stats if k.isdigit()), key=int)
    parse = datetime.datetime.fromisoformat
    return [
        (parse(stats[e]["start"]).timestamp(), parse(stats[e]["end"]).timestamp()) for e in epochs
    ]


def per_epoch_counters(samples_file: str, windows: list) -> list:
    """Per epoch, the counters' growth from the last sample before it to the first after it."""
    if not samples_file or not pathlib.Path(samples_file).is_file():
        return []
    samples = [json.loads(line) for line in open(samples_file) if line.strip()]
    result = []
    for start, end in windows:
        before = [s for s in samples if s["t"] <= start]
        after = [s for s in samples if s["t"] >= end]
        if not before or not after:
            result.append(None)
            continue
        result.append({k: after[0][k] - before[-1][k] for k in SAMPLED.values()})
    return result


def record_counters(mode: str, counters: list) -> list:
    # A separate FUSE front counts the view's bytes in its own process, not in the daemon.
    if mode == "front":
        for c in counters:
            if c:
                c.pop("fuse_bytes", None)
                c.pop("fuse_opens", None)
    return counters


def counter_delta(before: dict, after: dict, key: str):
    if key not in after:
        return None
    return after[key] - before.get(key, 0)


def record(args) -> None:
    summary_path = find_summary(pathlib.Path(args.out))
    summary = json.loads(summary_path.read_text())
    metric = summary["metric"]
    before, after = json.loads(args.before), json.loads(args.after)
    row = {
        "workload": args.workload,
        "mode": args.mode,
        "epochs": len(metric["train_au_percentage"]),
        "au": metric["train_au_percentage"],
        "au_mean": metric["train_au_mean_percentage"],
        "samples_per_s": metric["train_throughput_samples_per_second"],
        "samples_per_s_mean": metric["train_throughput_mean_samples_per_second"],
        "io_mib_per_s_mean": metric.get("train_io_mean_MB_per_second"),
        "meets_expectation": metric.get("train_au_meet_expectation"),
        "data_bytes": args.data_bytes,
        "ufs_bytes": counter_delta(before, after, "bytes_from_ufs"),
        "epoch_secs": [round(e - s, 2) for s, e in epoch_windows(summary_path.parent)],
        "epoch_counters": record_counters(
            args.mode, per_epoch_counters(args.samples, epoch_windows(summary_path.parent))
        ),
        "page_cache_dropped": args.dropped == "yes",
        "load_before": args.load_before,
        "load_after": args.load_after,
    }
    print(json.dumps(row))


def mb(n) -> str:
    return "–" if n is None else f"{n / 1e6:,.0f}"


def per_epoch(r: dict, key: str) -> str:
    counters = r.get("epoch_counters") or []
    if not counters:
        return "–"
    return " / ".join(mb(c.get(key)) if c else "?" for c in counters)


def table(args) -> None:
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    local = {r["workload"]: r for r in rows if r["mode"] == "local"}
    via = {
        "inproc": "FUSE, in-daemon (`--fuse-mount`)",
        "nokeep": "FUSE, in-daemon, `keep_cache = false`",
        "front": "FUSE, thin front",
        "local": "local directory",
    }
    print(
        "| workload | read from | epoch s | AU % per epoch | AU % mean | samples/s per epoch "
        "| samples/s mean | AU vs local | samples/s vs local | MB via FUSE per epoch "
        "| MB from UFS per epoch | load avg before → after |"
    )
    print("| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | --- |")
    for r in rows:
        base = local.get(r["workload"])
        au_ratio = sps_ratio = "–"
        if base and r["mode"] != "local":
            au_ratio = f"{r['au_mean'] / base['au_mean']:.3f}×"
            sps_ratio = f"{r['samples_per_s_mean'] / base['samples_per_s_mean']:.3f}×"
        passed = "" if r["au_mean"] >= AU_PASS else " (< 90)"
        print(
            f"| {r['workload']} | {via.get(r['mode'], r['mode'])} "
            f"| {' / '.join(f'{d:.1f}' for d in r.get('epoch_secs', []))} "
            f"| {' / '.join(f'{a:.1f}' for a in r['au'])} | **{r['au_mean']:.2f}**{passed} "
            f"| {' / '.join(f'{s:.1f}' for s in r['samples_per_s'])} | {r['samples_per_s_mean']:.1f} "
            f"| {au_ratio} | {sps_ratio} | {per_epoch(r, 'fuse_bytes')} | {per_epoch(r, 'ufs_bytes')} "
            f"| {r['load_before']} → {r['load_after']} |"
        )
    print()
    for r in rows:
        if r["mode"] != "local" and r["ufs_bytes"] is not None:
            print(
                f"- {r['workload']} via {r['mode']}: the daemon read {mb(r['ufs_bytes'])} MB from its UFS "
                f"over the run (`loaderctl status`); the training files hold {mb(r['data_bytes'])} MB."
            )
    if {r["page_cache_dropped"] for r in rows} == {True}:
        print(
            "- The page cache was dropped before every run: epoch 1 is cold, the later ones warm."
        )
    else:
        print("- The page cache could not be dropped before every run: epoch 1 may be warm too.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--workload", required=True)
    rec.add_argument("--mode", required=True)
    rec.add_argument("--out", required=True, help="DLIO's output folder of the run")
    rec.add_argument("--dropped", choices=["yes", "no"], required=True)
    rec.add_argument("--load-before", required=True)
    rec.add_argument("--load-after", required=True)
    rec.add_argument("--before", default="{}", help="loaderctl status --json before the run")
    rec.add_argument("--after", default="{}", help="loaderctl status --json after the run")
    rec.add_argument("--data-bytes", type=int, required=True)
    rec.add_argument("--samples", help="the `sample` file of the run (mount runs)")
    smp = sub.add_parser("sample")
    smp.add_argument("--metrics", required=True, help="the daemon's /metrics URL")
    smp.add_argument("--out", required=True)
    tab = sub.add_parser("table")
    tab.add_argument("results")
    args = parser.parse_args()
    {"record": record, "table": table, "sample": sample}[args.cmd](args)


if __name__ == "__main__":
    main()
