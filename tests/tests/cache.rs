//! Cache tiers: memory eviction between watermarks, the SSD tier surviving a
//! restart, and a corrupt SSD block being dropped and refetched.

use std::fs;
use std::path::Path;
use std::time::Duration;

use loaderd_tests::{
    Daemon, Dataset, S3Sandbox, args, assert_bytes_eq, flip_byte, sha256, ssd_block_files, tier,
    tiers_sum, wait_until,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GET: &str = "loaderd_ufs_requests_total{op=\"get\"}";
const LIST: &str = "loaderd_ufs_requests_total{op=\"list\"}";

fn s3_daemon(s3: &S3Sandbox, extra: &[&str]) -> Daemon {
    let mut daemon_args = args(extra);
    daemon_args.extend(s3.mount_args("/data", "ds"));
    Daemon::start(&daemon_args)
}

fn memory_used(daemon: &Daemon) -> (u64, u64, u64) {
    let status = daemon.status_json();
    let memory = tier(&status, "memory");
    (
        memory["used_bytes"].as_u64().expect("used_bytes"),
        memory["capacity_bytes"].as_u64().expect("capacity_bytes"),
        memory["evictions"].as_u64().expect("evictions"),
    )
}

#[test]
fn memory_eviction_stays_within_watermarks() {
    let block = 64 * KIB as u64;
    let data = Dataset::blobs(&[512 * KIB; 6]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let daemon = s3_daemon(
        &s3,
        &[
            "--block-size",
            "64KiB",
            // Only LRU frees down to the low watermark (the others evict per admission).
            "--eviction",
            "lru",
            "--memory-capacity",
            "1MiB",
            "--memory-high",
            "0.9",
            "--memory-low",
            "0.5",
        ],
    );

    let (_, capacity, _) = memory_used(&daemon);
    assert_eq!(capacity, MIB as u64, "memory tier capacity");
    let low = capacity / 2;

    let mut rounds_checked = 0;
    let mut last_evictions = 0;
    for (rel, _) in &data.files {
        let path = format!("/data/{rel}");
        let want = data.read(rel);
        for offset in (0..want.len() as u64).step_by(block as usize) {
            let got = daemon.ctl_bytes(&[
                "cat",
                "--offset",
                &offset.to_string(),
                "--length",
                &block.to_string(),
                &path,
            ]);
            assert_bytes_eq(
                &got,
                &want[offset as usize..(offset + block) as usize],
                &format!("{path} at {offset}"),
            );

            let (used, capacity, evictions) = memory_used(&daemon);
            assert!(
                used <= capacity,
                "memory used {used} exceeds capacity {capacity}"
            );
            if evictions > last_evictions {
                // An eviction round ran: it must have brought usage down to
                // (about) the low watermark; allow one block just admitted and
                // a moment for a background evictor to finish.
                let mut seen = used;
                let settled = wait_until(Duration::from_secs(3), || {
                    seen = memory_used(&daemon).0;
                    seen <= low + block
                });
                assert!(
                    settled,
                    "after eviction round, memory used {seen} stays above low watermark {low} + 1 block"
                );
                rounds_checked += 1;
                last_evictions = memory_used(&daemon).2;
            }
        }
    }
    assert!(
        rounds_checked > 0,
        "reading 3 MiB through a 1 MiB memory tier caused no eviction"
    );
    assert!(
        daemon.metric("loaderd_cache_evictions_total{tier=\"memory\"}") > 0.0,
        "evictions metric"
    );

    // Whole files still read back exactly after all that churn.
    assert_all_read_back(&daemon, &data, "");
    let (used, capacity, _) = memory_used(&daemon);
    assert!(
        used <= capacity,
        "memory used {used} exceeds capacity {capacity}"
    );
}

/// Every file of `data` reads back byte-exact through `/data`.
#[track_caller]
fn assert_all_read_back(daemon: &Daemon, data: &Dataset, when: &str) {
    for (rel, _) in &data.files {
        assert_eq!(
            sha256(&daemon.cat(&format!("/data/{rel}"))),
            sha256(&data.read(rel)),
            "cat /data/{rel} {when}"
        );
    }
}

/// A daemon with no memory tier and a 64 MiB SSD tier in a fresh directory, 64 KiB blocks.
fn ssd_only_daemon(s3: &S3Sandbox) -> (tempfile::TempDir, Daemon) {
    let ssd = tempfile::tempdir().expect("tempdir");
    let daemon = ssd_daemon_at(s3, ssd.path());
    (ssd, daemon)
}

/// A daemon with no memory tier and a 64 MiB SSD tier in `dir`, 64 KiB blocks.
fn ssd_daemon_at(s3: &S3Sandbox, dir: &Path) -> Daemon {
    s3_daemon(
        s3,
        &[
            "--block-size",
            "64KiB",
            "--memory-capacity",
            "0",
            "--ssd-dir",
            dir.to_str().expect("utf-8 path"),
            "--ssd-capacity",
            "64MiB",
        ],
    )
}

/// `load`s everything and waits until every block has its SSD file; returns the block count.
fn load_to_ssd(daemon: &Daemon, data: &Dataset, ssd: &Path) -> usize {
    daemon.ctl_ok(&["load", "--no-progress", "/data"]);
    let blocks_needed: usize = data
        .files
        .iter()
        .map(|(rel, _)| data.read(rel).len().div_ceil(64 * KIB))
        .sum();
    wait_for_blocks(ssd, blocks_needed);
    blocks_needed
}

fn wait_for_blocks(ssd: &Path, count: usize) {
    let mut seen = 0;
    let ok = wait_until(Duration::from_secs(10), || {
        seen = ssd_block_files(ssd).len();
        seen >= count
    });
    assert!(
        ok,
        "expected {count} .blk files under {}/blocks, found {seen}",
        ssd.display()
    );
}

#[test]
fn ssd_tier_survives_restart() {
    let data = Dataset::new(2, 5, &[MIB, 300_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let (ssd, mut daemon) = ssd_only_daemon(&s3);

    let blocks_needed = load_to_ssd(&daemon, &data, ssd.path());
    let ssd_blocks = tier(&daemon.status_json(), "ssd")["blocks"]
        .as_u64()
        .expect("ssd blocks");
    assert!(
        ssd_blocks >= blocks_needed as u64,
        "ssd tier holds {ssd_blocks} blocks, expected {blocks_needed}"
    );

    daemon.stop();
    let manifests = ssd.path().join("manifests");
    let manifest_count = fs::read_dir(&manifests).map(|d| d.count()).unwrap_or(0);
    assert!(
        manifest_count > 0,
        "no manifest written under {}",
        manifests.display()
    );

    daemon.restart();
    let status = daemon.status_json();
    assert_eq!(
        tier(&status, "ssd")["blocks"].as_u64(),
        Some(ssd_blocks),
        "ssd tier after restart: {status}"
    );
    assert_all_read_back(&daemon, &data, "");
    assert_eq!(
        daemon.metric(GET),
        0.0,
        "reads after restart went to the UFS instead of the SSD tier"
    );
    assert_eq!(
        daemon.metric(LIST),
        0.0,
        "the manifest was not reused after restart"
    );
}

#[test]
fn broken_ssd_files_at_restart_are_counted() {
    let data = Dataset::blobs(&[MIB, 300_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let (ssd, mut daemon) = ssd_only_daemon(&s3);
    let blocks_needed = load_to_ssd(&daemon, &data, ssd.path());
    daemon.stop();

    // One file cut short, one with junk appended, one moved under another block's id.
    let files = ssd_block_files(ssd.path());
    let truncated = &files[0];
    let len = fs::metadata(truncated).expect("block file").len();
    fs::OpenOptions::new()
        .write(true)
        .open(truncated)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate a block file");
    let mut junk = fs::read(&files[1]).expect("block file");
    junk.extend_from_slice(b"junk after the block");
    fs::write(&files[1], junk).expect("append junk");
    let foreign = ssd
        .path()
        .join("blocks/ff/ffffffffffffffffffffffffffffffff.blk");
    fs::create_dir_all(foreign.parent().expect("prefix dir")).expect("prefix dir");
    fs::rename(&files[2], &foreign).expect("move a block file under another id");

    daemon.restart();
    let status = daemon.status_json();
    assert_eq!(
        status["corrupt_blocks"].as_u64(),
        Some(3),
        "status after a restart over 3 broken block files: {status}"
    );
    for reason in ["truncated", "junk_appended", "wrong_id"] {
        assert_eq!(
            daemon.metric(&format!(
                "loaderd_ssd_dropped_at_start_total{{reason=\"{reason}\"}}"
            )),
            1.0,
            "files dropped at start for {reason}"
        );
    }
    assert_eq!(daemon.metric("loaderd_cache_corrupt_blocks_total"), 3.0);
    assert_eq!(
        tier(&status, "ssd")["blocks"].as_u64(),
        Some(blocks_needed as u64 - 3),
        "ssd tier after restart: {status}"
    );
    assert!(!foreign.exists(), "the misnamed block file was kept");
    assert_all_read_back(&daemon, &data, "after broken block files were dropped");
    assert_eq!(
        daemon.metric(GET),
        3.0,
        "the 3 dropped blocks are refetched, nothing else"
    );
}

#[test]
fn corrupt_ssd_block_is_dropped_and_refetched() {
    let data = Dataset::blobs(&[100_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let (ssd, daemon) = ssd_only_daemon(&s3);
    let path = "/data/blobs/blob_00.bin";
    let want = data.read("blobs/blob_00.bin");

    assert_bytes_eq(&daemon.cat(path), &want, "cold read");
    wait_for_blocks(ssd.path(), 2);
    assert_eq!(daemon.metric("loaderd_cache_corrupt_blocks_total"), 0.0);

    let victim = &ssd_block_files(ssd.path())[0];
    let header = 40;
    flip_byte(victim, header + 100);

    let gets = daemon.metric(GET);
    assert_eq!(
        sha256(&daemon.cat(path)),
        sha256(&want),
        "read over a corrupt block returned wrong bytes"
    );
    assert_eq!(
        daemon.metric("loaderd_cache_corrupt_blocks_total"),
        1.0,
        "corrupt block not counted"
    );
    assert_eq!(
        daemon.metric(GET) - gets,
        1.0,
        "the corrupt block must be refetched with one GET"
    );
    let status = daemon.status_json();
    assert_eq!(
        status["corrupt_blocks"].as_u64(),
        Some(1),
        "status: {status}"
    );

    // The refetched block replaced the corrupt one: no further UFS traffic.
    let gets = daemon.metric(GET);
    assert_eq!(sha256(&daemon.cat(path)), sha256(&want), "second read");
    assert_eq!(daemon.metric(GET), gets, "second read went to the UFS");
    assert_eq!(daemon.metric("loaderd_cache_corrupt_blocks_total"), 1.0);
    assert!(tiers_sum(&status, "blocks") >= 1);
}

#[test]
fn ssd_tier_after_crash_serves_correct_bytes() {
    let data = Dataset::blobs(&[MIB, 300_000, 5000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let (ssd, mut daemon) = ssd_only_daemon(&s3);
    let blocks_needed = load_to_ssd(&daemon, &data, ssd.path());

    // A crash leaves a stale socket and whatever the SSD tier had written.
    daemon.kill9();
    daemon.restart();
    assert_all_read_back(&daemon, &data, "after a crash");
    assert!(
        daemon.metric(GET) <= blocks_needed as f64,
        "reads after a crash issued {} GETs for {blocks_needed} blocks",
        daemon.metric(GET)
    );
    daemon.stop();
}

/// Unmounts a test tmpfs when dropped.
struct TmpfsMount(std::path::PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_ssd_passes_reads_through_uncached() {
    // A 256 KiB tmpfs as the SSD tier, configured far larger than the disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("skipping: cannot mount a tmpfs for a full disk (needs root): {other:?}");
            return;
        }
    }
    let _umount = TmpfsMount(dir.path().to_path_buf());
    let data = Dataset::blobs(&[MIB, 300_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let daemon = ssd_daemon_at(&s3, dir.path());
    for round in ["first", "second"] {
        for (rel, _) in &data.files {
            assert_bytes_eq(
                &daemon.cat(&format!("/data/{rel}")),
                &data.read(rel),
                &format!("{round} read of {rel} with a full SSD"),
            );
        }
    }
    // The tier's capacity follows the file system: 64 MiB configured, 256 KiB of disk.
    let status = daemon.status_json();
    let ssd = tier(&status, "ssd");
    let field = |k: &str| {
        ssd[k]
            .as_u64()
            .unwrap_or_else(|| panic!("ssd {k} in {ssd}"))
    };
    let (fs_total, fs_free) = (field("fs_total_bytes"), field("fs_free_bytes"));
    assert!(
        fs_total > 0 && fs_total <= 256 * KIB as u64 && fs_free <= fs_total,
        "SSD file system space in status: {ssd}"
    );
    assert_eq!(field("configured_capacity_bytes"), 64 * MIB as u64, "{ssd}");
    assert!(
        field("capacity_bytes") <= fs_total,
        "capacity in force must be lowered to what the disk holds: {ssd}"
    );
    assert!(
        field("used_bytes") <= fs_total,
        "SSD accounting counts blocks that were never written: {ssd}"
    );
    let text = daemon.ctl_ok(&["status"]);
    assert!(
        text.contains("file system") && text.contains("capacity lowered from the configured"),
        "status text does not show the file system's space:\n{text}"
    );

    // A load reads every byte but cannot keep most of them: it says so, and --strict fails.
    let out = daemon.ctl_ok(&["load", "--no-progress", "/data"]);
    let not_cached: u64 = out
        .split("; ")
        .find_map(|part| {
            part.strip_suffix(" not cached\n")
                .or(part.strip_suffix(" not cached"))
        })
        .and_then(|part| part.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no not-cached count in the load report: {out}"));
    let total = data.total_bytes();
    assert!(
        not_cached > total / 2 && not_cached <= total,
        "load of {total} bytes onto a 256 KiB disk reported {not_cached} bytes not cached: {out}"
    );
    let err = daemon.ctl_err(&["load", "--no-progress", "--strict", "/data"]);
    assert!(err.contains("not cached"), "load --strict: {err}");

    // Writes that still fail (another writer fills the disk) warn once per interval.
    let warnings = daemon.log().matches("SSD tier write failed").count();
    assert!(
        warnings <= 1,
        "{warnings} write-failure warnings in one interval:\n{}",
        daemon.log()
    );
}

#[test]
fn ssd_write_failures_warn_once_per_interval() {
    // Every block's directory is taken by a file: each SSD write fails with an I/O error.
    let ssd = tempfile::tempdir().expect("tempdir");
    let blocks = ssd.path().join("blocks");
    fs::create_dir_all(&blocks).expect("blocks dir");
    for prefix in 0..=255u8 {
        fs::write(blocks.join(format!("{prefix:02x}")), b"in the way").expect("blocker");
    }
    let data = Dataset::blobs(&[MIB, 300_000]);
    let s3 = S3Sandbox::start(&[(&data.root, "ds")]);
    let daemon = ssd_daemon_at(&s3, ssd.path());
    let started = std::time::Instant::now();
    for round in ["first", "second"] {
        assert_all_read_back(
            &daemon,
            &data,
            &format!("({round} round, SSD writes failing)"),
        );
    }
    let failures = daemon.metric("loaderd_cache_passthrough_total{reason=\"ssd_write_failed\"}");
    assert!(
        failures >= 20.0,
        "{failures} SSD write failures counted, expected one per block"
    );
    let warnings = daemon.log().matches("SSD tier write failed").count();
    let intervals = started.elapsed().as_secs() / 10 + 1;
    assert!(
        warnings >= 1 && warnings as u64 <= intervals,
        "{warnings} write-failure warnings for {failures} failures in {:?} (one per 10 s allowed):\n{}",
        started.elapsed(),
        daemon.log()
    );
}
