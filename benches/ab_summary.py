"""Summarise benches/ab.sh's results: medians per build, paired new/old ratios per round."""

import json
import statistics
import sys
from collections import defaultdict


def metrics(rec):
    r = rec["r"]
    if rec["bench"] in ("read", "read-s3"):
        tag = "S3 " if rec["bench"] == "read-s3" else ""
        by = {p["phase"]: p for p in r["phases"]}
        out = {f"{tag}{name} MB/s": by[name]["mb_per_s"] for name in by}
        if tag:
            for name in ("loaderd-cold", "loaderd-warm", "loaderd-warm-shm"):
                out[f"S3 {name} vs S3"] = by[name]["vs_ufs"]
        out[f"{tag}warm-shm / page cache"] = by["loaderd-warm-shm"]["vs_local"]
        return out
    if rec["bench"] == "pipeline":
        return {"pipeline img/s": r["images_per_s"]}
    return {"first ls -R s": r["first_secs"], "second ls -R s": r["second_secs"]}


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def main(path):
    recs = [json.loads(line) for line in open(path) if line.strip()]
    vals = defaultdict(lambda: defaultdict(dict))  # metric -> build -> round -> value
    loads = [rec["load"] for rec in recs]
    for rec in recs:
        for k, v in metrics(rec).items():
            vals[k][rec["build"]][rec["round"]] = v
    for rec in recs:
        if rec["bench"] == "ls" and rec["r"]["lines"] != rec["r"]["lines2"]:
            print(f"warning: {rec['build']} round {rec['round']} listed {rec['r']}")
    print(f"{len(recs)} measurements, load average {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'metric':<24} {'new med':>10} {'old med':>10} {'new/old paired med (IQR)':>28} {'new higher':>11}")
    for k, by in vals.items():
        new, old = by["new"], by["old"]
        rounds = sorted(set(new) & set(old))
        ratios = [new[r] / old[r] for r in rounds]
        lo, hi = quartiles(ratios)
        higher = sum(1 for x in ratios if x > 1)
        print(
            f"{k:<24} {statistics.median(new.values()):>10.3f} {statistics.median(old.values()):>10.3f} "
            f"{statistics.median(ratios):>14.3f} ({lo:.2f}-{hi:.2f})   {higher:>4} of {len(ratios)}"
        )
    print("per round (new/old):")
    for k, by in vals.items():
        rounds = sorted(set(by["new"]) & set(by["old"]))
        print(f"  {k:<24} " + " ".join(f"{by['new'][r] / by['old'][r]:.2f}" for r in rounds))


if __name__ == "__main__":
    main(sys.argv[1])
