//! The epochs bench's results: each policy's epochs beside the offline optimum of the same
//! trace, as a table or JSON.

use std::collections::HashMap;

use loaderd_cache::evict::offline::min_hits;
use serde_json::{Value, json};

use crate::human;

/// What one epoch of one policy delivered and cost.
pub(super) struct EpochRow {
    pub epoch: u64,
    /// Sample keys in delivery order.
    pub keys: Vec<String>,
    pub ufs_bytes: u64,
    pub memory_hits: u64,
    pub ssd_hits: u64,
    /// Blocks prefetched, and reads that found their block's prefetch planned or running.
    pub prefetched: u64,
    pub late: u64,
    pub secs: f64,
    /// Share of the epoch (after its first batch) the trainer waited for batches.
    pub starved: f64,
}

/// One epoch with the optimum's numbers for it.
struct Scored {
    row: EpochRow,
    bytes_read: u64,
    opt_ufs_bytes: u64,
}

impl Scored {
    fn hit(&self) -> f64 {
        hit_ratio(self.ufs_bytes(), self.bytes_read)
    }
    fn opt_hit(&self) -> f64 {
        hit_ratio(self.opt_ufs_bytes, self.bytes_read)
    }
    fn ufs_bytes(&self) -> u64 {
        self.row.ufs_bytes
    }
    fn img_per_s(&self) -> f64 {
        self.row.keys.len() as f64 / self.row.secs.max(1e-9)
    }
}

fn hit_ratio(ufs: u64, read: u64) -> f64 {
    if read == 0 {
        0.0
    } else {
        1.0 - (ufs.min(read) as f64 / read as f64)
    }
}

struct Run {
    tiers: String,
    policy: String,
    epochs: Vec<Scored>,
}

impl Run {
    /// Epochs after the first (the cold one), summed: (hit, optimum's hit, UFS bytes,
    /// optimum's UFS bytes, mean starved share).
    fn later(&self) -> (f64, f64, u64, u64, f64) {
        let later: Vec<&Scored> = self.epochs.iter().skip(1).collect();
        let read: u64 = later.iter().map(|e| e.bytes_read).sum();
        let ufs: u64 = later.iter().map(|e| e.ufs_bytes()).sum();
        let opt: u64 = later.iter().map(|e| e.opt_ufs_bytes).sum();
        let starved = later.iter().map(|e| e.row.starved).sum::<f64>() / later.len().max(1) as f64;
        (
            hit_ratio(ufs, read),
            hit_ratio(opt, read),
            ufs,
            opt,
            starved,
        )
    }
}

/// Every run of the bench.
pub(super) struct Report {
    files: usize,
    bytes: u64,
    memory: u64,
    bandwidth: u64,
    train_rate: f64,
    prefetch: bool,
    runs: Vec<Run>,
}

impl Report {
    pub fn new(
        files: usize,
        bytes: u64,
        memory: u64,
        bandwidth: u64,
        train_rate: f64,
        prefetch: bool,
    ) -> Self {
        Report {
            files,
            bytes,
            memory,
            bandwidth,
            train_rate,
            prefetch,
            runs: Vec::new(),
        }
    }

    /// Scores one policy's epochs against MIN over the blocks they read, with room for
    /// `cap_blocks`.
    pub fn add(
        &mut self,
        tiers: &str,
        policy: &str,
        rows: Vec<EpochRow>,
        cap_blocks: usize,
        sizes: &HashMap<String, u64>,
    ) {
        let mut ids: HashMap<&str, u64> = HashMap::new();
        let trace: Vec<u64> = rows
            .iter()
            .flat_map(|r| r.keys.iter())
            .map(|k| {
                let next = ids.len() as u64;
                *ids.entry(k.as_str()).or_insert(next)
            })
            .collect();
        let hits = min_hits(&trace, cap_blocks);
        let size = |k: &str| sizes.get(k).copied().unwrap_or(0);
        let mut at = 0;
        let mut epochs = Vec::new();
        for row in rows {
            let n = row.keys.len();
            let bytes_read = row.keys.iter().map(|k| size(k)).sum();
            let opt_ufs_bytes = row
                .keys
                .iter()
                .zip(&hits[at..at + n])
                .filter(|(_, hit)| !**hit)
                .map(|(k, _)| size(k))
                .sum();
            at += n;
            epochs.push(Scored {
                row,
                bytes_read,
                opt_ufs_bytes,
            });
        }
        self.runs.push(Run {
            tiers: tiers.to_string(),
            policy: policy.to_string(),
            epochs,
        });
    }

    fn lru_of(&self, tiers: &str) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.tiers == tiers && r.policy == "lru")
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
            return;
        }
        let cap = if self.bandwidth == 0 {
            "uncapped".to_string()
        } else {
            format!("capped at {}/s", human(self.bandwidth))
        };
        println!(
            "bench epochs: {} images, {}; memory tier {} ({:.2}x); UFS {cap}; trainer {} img/s; prefetch {}",
            self.files,
            human(self.bytes),
            human(self.memory),
            self.memory as f64 / self.bytes.max(1) as f64,
            self.train_rate,
            if self.prefetch { "on" } else { "off" },
        );
        println!(
            "{:<7} {:<12} {:>5} {:>7} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}",
            "tiers",
            "policy",
            "epoch",
            "hit",
            "optimum",
            "UFS MiB",
            "opt MiB",
            "mem/ssd",
            "pf/late",
            "img/s",
            "starved"
        );
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        for r in &self.runs {
            for e in &r.epochs {
                println!(
                    "{:<7} {:<12} {:>5} {:>6.1}% {:>7.1}% {:>9.2} {:>9.2} {:>10} {:>10} {:>8.0} {:>7.1}%",
                    r.tiers,
                    r.policy,
                    e.row.epoch + 1,
                    100.0 * e.hit(),
                    100.0 * e.opt_hit(),
                    mib(e.ufs_bytes()),
                    mib(e.opt_ufs_bytes),
                    format!("{}/{}", e.row.memory_hits, e.row.ssd_hits),
                    format!("{}/{}", e.row.prefetched, e.row.late),
                    e.img_per_s(),
                    100.0 * e.row.starved,
                );
            }
        }
        println!("epochs 2 on:");
        for r in &self.runs {
            let (hit, opt, ufs, opt_ufs, starved) = r.later();
            let vs_lru = self
                .lru_of(&r.tiers)
                .map(|l| l.later().0)
                .filter(|l| *l > 0.0)
                .map_or(String::new(), |l| format!(", {:.2}x lru", hit / l));
            println!(
                "  {}/{}: hit {:.1}% = {:.3}x optimum{vs_lru}; UFS bytes {:.3}x optimum; starved {:.1}%",
                r.tiers,
                r.policy,
                100.0 * hit,
                if opt > 0.0 { hit / opt } else { 1.0 },
                if opt_ufs > 0 {
                    ufs as f64 / opt_ufs as f64
                } else {
                    1.0
                },
                100.0 * starved,
            );
        }
    }

    fn json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let (hit, opt, ufs, opt_ufs, starved) = r.later();
                json!({
                    "tiers": r.tiers,
                    "policy": r.policy,
                    "epochs": r.epochs.iter().map(|e| json!({
                        "epoch": e.row.epoch,
                        "samples": e.row.keys.len(),
                        "bytes_read": e.bytes_read,
                        "hit_ratio": e.hit(),
                        "opt_hit_ratio": e.opt_hit(),
                        "ufs_bytes": e.ufs_bytes(),
                        "opt_ufs_bytes": e.opt_ufs_bytes,
                        "memory_hits": e.row.memory_hits,
                        "ssd_hits": e.row.ssd_hits,
                        "prefetched_blocks": e.row.prefetched,
                        "late_prefetches": e.row.late,
                        "secs": e.row.secs,
                        "img_per_s": e.img_per_s(),
                        "starved": e.row.starved,
                    })).collect::<Vec<_>>(),
                    "later": {
                        "hit_ratio": hit,
                        "opt_hit_ratio": opt,
                        "ufs_bytes": ufs,
                        "opt_ufs_bytes": opt_ufs,
                        "starved": starved,
                    },
                })
            })
            .collect();
        json!({
            "files": self.files,
            "bytes": self.bytes,
            "memory_bytes": self.memory,
            "ufs_bandwidth": self.bandwidth,
            "train_rate": self.train_rate,
            "prefetch": self.prefetch,
            "runs": runs,
        })
    }
}
