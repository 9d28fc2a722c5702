//! Listing at ImageNet scale: 1,000 class folders of empty files on `file://`, listed with
//! `loaderctl ls -R` (streamed in pages), then a loader opened on the same dataset.
//!
//! Every run lists 1,000 x 320 files (a quarter of ImageNet) whose names are long enough
//! that the whole listing is over 64 MiB encoded, more than any one gRPC message may carry,
//! so a single-message reply fails here as it did at full scale. `LOADERD_LISTING_FULL=1`
//! runs ImageNet's own count and names instead: 1,000 x 1,281 files. Both print the figures
//! that docs/BENCHMARKS.md keeps: first listing time, the daemon's metadata bytes and RSS
//! growth per entry, and the loader open time.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use loaderd_proto::v1 as pb;
use loaderd_tests::{Daemon, file_mount_args, output_with_timeout};

const CLASSES: usize = 1000;

/// The old single reply's limit (`MAX_MESSAGE`).
const MESSAGE_LIMIT: usize = 64 << 20;

struct Scale {
    per_class: usize,
    /// Characters of each file's name before `.JPEG`.
    name_len: usize,
}

fn scale() -> Scale {
    if std::env::var_os("LOADERD_LISTING_FULL").is_some_and(|v| v == "1") {
        // ImageNet's own: `n01440764/n01440764_10026.JPEG`.
        Scale {
            per_class: 1281,
            name_len: 0,
        }
    } else {
        Scale {
            per_class: 320,
            name_len: 200,
        }
    }
}

fn class_name(c: usize) -> String {
    format!("n{:08}", 1_440_764 + c * 97)
}

fn file_name(class: &str, i: usize, name_len: usize) -> String {
    let base = format!("{class}_{:05}", 10_000 + i);
    let pad = name_len.saturating_sub(base.len());
    format!("{base}{}.JPEG", "x".repeat(pad))
}

/// Writes the empty files; returns every logical path below `point`.
fn generate(root: &Path, point: &str, s: &Scale) -> Vec<String> {
    let mut paths = Vec::with_capacity(CLASSES * s.per_class);
    for c in 0..CLASSES {
        let class = class_name(c);
        let dir = root.join(&class);
        fs::create_dir(&dir).expect("class dir");
        for i in 0..s.per_class {
            let name = file_name(&class, i, s.name_len);
            fs::File::create(dir.join(&name)).expect("create file");
            paths.push(format!("{point}/{class}/{name}"));
        }
    }
    paths
}

fn rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

#[test]
fn ls_recursive_streams_an_imagenet_sized_listing() {
    let s = scale();
    let files = CLASSES * s.per_class;
    let data = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let want = generate(data.path(), "/imagenet/train", &s);
    eprintln!(
        "generated {files} empty files in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let daemon = Daemon::start(&file_mount_args("/imagenet/train", data.path()));
    let pid = daemon.pid().expect("daemon pid");
    let rss_before = rss_bytes(pid);

    // The first listing walks the directory tree into the mount's manifest and streams it.
    let t = Instant::now();
    let out = output_with_timeout(
        std::process::Command::new(loaderd_tests::bin("loaderctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["ls", "-R", "/imagenet/train"]),
        Duration::from_secs(600),
    );
    let first_listing = t.elapsed();
    let rss_after = rss_bytes(pid);
    eprintln!(
        "{files} files: first ls -R {:.1}s ({}), daemon RSS {} -> {} MiB",
        first_listing.as_secs_f64(),
        out.status,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        out.status.success(),
        "ls -R failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 listing");
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), files, "ls -R lines");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "the listing is not in path order"
    );
    let want_set: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    assert!(
        got.iter().all(|p| want_set.contains(p)),
        "ls -R lists a path that was never generated"
    );

    // As one message (the reply before pages), the listing is over the limit: this scale
    // fails a single-message reply. Entries carry the version and mtime `stat` shows.
    let one = daemon.stat_json(got[0]);
    let version = one["version"].as_str().expect("version").to_string();
    let mtime_unix_ms = one["mtime_unix_ms"].as_i64().expect("mtime");
    let whole = pb::ListResponse {
        entries: got
            .iter()
            .map(|p| pb::FileInfo {
                path: p.to_string(),
                version: version.clone(),
                mtime_unix_ms,
                ..Default::default()
            })
            .collect(),
    };
    let whole = prost::Message::encoded_len(&whole);
    assert!(
        whole > MESSAGE_LIMIT,
        "the listing ({whole} B as one message) fits one message; the test proves nothing"
    );

    // One level: the 1,000 class folders.
    let classes = daemon.ctl_ok(&["ls", "/imagenet/train"]);
    assert_eq!(classes.lines().count(), CLASSES);
    assert!(classes.lines().all(|l| l.ends_with('/')), "{classes:.200}");

    let status = daemon.status_json();
    let entries = status["metadata_entries"]
        .as_u64()
        .expect("metadata_entries");
    let meta_bytes = status["metadata_bytes"].as_u64().expect("metadata_bytes");
    assert!(entries >= files as u64, "{entries} metadata entries");

    // A loader opened on the dataset indexes it from the manifest, without another walk.
    let t = Instant::now();
    let shm = loaderd_proto::transport::default_shm_socket(&daemon.socket);
    let client = loaderctl::client::shm::BatchClient::open(
        &shm,
        pb::OpenLoader {
            dataset: "/imagenet/train".into(),
            batch_size: 256,
            world_size: 1,
            size: 224,
            layout: pb::SampleLayout::NhwcU8 as i32,
            depth: 1,
            ..Default::default()
        },
    )
    .expect("open a loader on the dataset");
    let open = t.elapsed();
    assert_eq!(client.opened().dataset_len, files as u64);
    drop(client);

    let rss_growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{files} files: first ls -R {:.1}s; metadata {} MiB ({} B/entry); daemon RSS growth \
         {} MiB ({} B/entry); loader open {:.2}s",
        first_listing.as_secs_f64(),
        meta_bytes >> 20,
        meta_bytes / entries,
        rss_growth >> 20,
        rss_growth / files as u64,
        open.as_secs_f64()
    );
    // Generous bounds (a loaded 2-core machine): figures far past docs/BENCHMARKS.md's
    // mean a regression, not noise.
    let per_file = |secs: f64| Duration::from_secs_f64(secs * files as f64 / 1_281_000.0);
    assert!(
        first_listing < per_file(120.0).max(Duration::from_secs(30)),
        "first listing took {first_listing:?}"
    );
    assert!(
        open < per_file(30.0).max(Duration::from_secs(10)),
        "loader open took {open:?}"
    );
    assert!(
        rss_growth / (files as u64) < 2048,
        "daemon RSS grew {rss_growth} B for {files} entries"
    );
}
