//! A loader's schedule reaches the block owners: two nodes (static membership, loopback), a
//! loader on node `a` over a dataset whose blocks both own, `b`'s memory tier half the
//! blocks it owns. `b` holds `a`'s schedule (status), and its UFS GETs per epoch after the
//! first match an offline MIN over `b`'s owned subsequence of the trace, well below the same
//! run under LRU. Closing the loader withdraws the schedule; a listing that differs on `b`
//! is ignored with a counter; killing `a` with -9 makes `b` drop the schedule at its expiry.
//!
//! Before the epochs, a read of a file outside the dataset fills `b`'s tier with blocks no
//! schedule needs. MIN evicts those first; without `a`'s schedule `b`'s clairvoyant policy
//! is `stable`, which keeps them and misses nearly every read, so the test fails if the
//! schedule does not reach `b` or is wrong there.

use std::path::Path;
use std::time::Duration;

use loaderctl::client::shm::BatchClient;
use loaderd_pipeline::sampler::order;
use loaderd_proto::v1 as pb;
use loaderd_tests::cluster::{TOKEN, owners};
use loaderd_tests::epochs::{
    assert_min_and_below_lru, bench_epoch, cache_toml, min_misses, one_block_images,
};
use loaderd_tests::{
    Daemon, args, config_file_args, file_mount_args, free_port, tail, tier, wait_until,
    write_random_file,
};

/// Block size, and what every block is charged in the memory tier (4 KiB slots; every image
/// is one block).
const BLOCK: u64 = 4096;
/// `b`'s memory tier, in blocks: about half of the dataset's blocks it owns.
const B_MEMORY_BLOCKS: usize = 128;
const CLASSES: usize = 4;
const PER_CLASS: usize = 128;
const SEED: u64 = 11;
const EPOCHS: u64 = 3;
const BATCH: usize = 4;
/// The other reader's file: enough blocks that `b`'s share of them fills its tier.
const JUNK_BLOCKS: usize = 4 * B_MEMORY_BLOCKS;
/// Announcements every 200 ms; a schedule not refreshed for a second is dropped.
const SCHEDULES: &str = "[cluster.schedules]\nrefresh = \"200ms\"\nexpiry = \"1s\"\n";

/// Two nodes `a` (memory for everything) and `b` (`B_MEMORY_BLOCKS`), evicting by
/// `eviction`, both mounting `/ds` and `/other`; `b`'s `/ds2` is `ds2_on_b`.
struct Pair {
    a: Daemon,
    b: Daemon,
    _conf: tempfile::TempDir,
}

fn node(
    conf: &Path,
    id: &str,
    ports: (u16, u16),
    memory_blocks: usize,
    eviction: &str,
    mounts: &[(&str, &Path)],
) -> Daemon {
    // Eviction alone, as in tests/tests/schedule.rs: a prefetch landing after its block's read
    // began is read again, which the exact counts below would see (prefetch across nodes is
    // tests/tests/prefetch.rs's).
    let toml = cache_toml(BLOCK, memory_blocks, eviction)
        + "[prefetch]\nenabled = false\n"
        + &format!("[cluster]\npeer_timeout = \"2s\"\nsuspect_time = \"1s\"\n{SCHEDULES}");
    let dir = conf.join(id);
    std::fs::create_dir_all(&dir).expect("config dir");
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    let (mine, theirs) = ports;
    let other = if id == "a" { "b" } else { "a" };
    let mut a = config_file_args(&dir, &toml);
    a.extend(args(&[
        "--node-id",
        id,
        "--cluster-listen",
        &format!("127.0.0.1:{mine}"),
        "--cluster-token-file",
        token.to_str().expect("utf-8 path"),
        "--peer",
        &format!("{other}=127.0.0.1:{theirs}"),
    ]));
    for (point, dir) in mounts {
        a.extend(file_mount_args(point, dir));
    }
    Daemon::start(&a)
}

impl Pair {
    fn start(eviction: &str, data: &Path, junk: &Path, ds2: (&Path, &Path)) -> Pair {
        let conf = tempfile::tempdir().expect("tempdir");
        let (pa, pb) = (free_port(), free_port());
        let memory_a = 4 * CLASSES * PER_CLASS + JUNK_BLOCKS;
        let a = node(
            conf.path(),
            "a",
            (pa, pb),
            memory_a,
            eviction,
            &[("/ds", data), ("/other", junk), ("/ds2", ds2.0)],
        );
        let b = node(
            conf.path(),
            "b",
            (pb, pa),
            B_MEMORY_BLOCKS,
            eviction,
            &[("/ds", data), ("/other", junk), ("/ds2", ds2.1)],
        );
        Pair { a, b, _conf: conf }
    }
}

fn gets(d: &Daemon) -> u64 {
    d.metric("loaderd_ufs_requests_total{op=\"get\"}") as u64
}

fn remote(d: &Daemon) -> serde_json::Value {
    d.status_json()["cluster"]["remote_schedules"].clone()
}

/// `b`'s UFS GETs per epoch of three epochs of one loader on `a`, after `a` read the other
/// file (filling `b`'s tier with blocks no schedule needs).
fn epochs(p: &Pair, files: &[String], orders: &[Vec<u64>]) -> Vec<u64> {
    p.a.cat("/other/blob");
    let used = tier(&p.b.status_json(), "memory")["used_bytes"]
        .as_u64()
        .unwrap_or(0);
    // Full (LRU frees down to its low watermark, 0.8).
    let capacity = B_MEMORY_BLOCKS as u64 * BLOCK;
    assert!(
        used * 10 >= capacity * 8,
        "b's tier holds {used} of {capacity}"
    );
    let mut per_epoch = Vec::new();
    for (e, want) in orders.iter().enumerate() {
        let before = gets(&p.b);
        let keys = bench_epoch(&p.a, "/ds", SEED, e as u64, BATCH);
        per_epoch.push(gets(&p.b) - before);
        let want: Vec<&String> = want.iter().map(|&i| &files[i as usize]).collect();
        assert_eq!(
            keys.iter().collect::<Vec<_>>(),
            want,
            "epoch {e}: the order simulated"
        );
    }
    per_epoch
}

fn loader(dataset: &str) -> pb::OpenLoader {
    pb::OpenLoader {
        dataset: dataset.into(),
        batch_size: BATCH as u32,
        size: 16,
        depth: 2,
        workers: 1,
        seed: SEED,
        train: true,
        name: "propagate test".into(),
        ..Default::default()
    }
}

#[track_caller]
fn wait_for(d: &Daemon, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let ok = wait_until(Duration::from_secs(30), || check(&remote(d)));
    assert!(
        ok,
        "{what}: remote schedules {}; log:\n{}",
        remote(d),
        tail(&d.log(), 3000)
    );
}

#[test]
fn a_loaders_schedule_reaches_the_owners_which_evict_by_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let files = one_block_images(data.path(), CLASSES, PER_CLASS, BLOCK);
    let junk = tempfile::tempdir().expect("tempdir");
    write_random_file(&junk.path().join("blob"), JUNK_BLOCKS * BLOCK as usize, 5);
    // `/ds2` differs between the nodes: one image more on b.
    let (ds2_a, ds2_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    one_block_images(ds2_a.path(), 2, 8, BLOCK);
    one_block_images(ds2_b.path(), 2, 8, BLOCK);
    let class = ds2_b.path().join("class_000");
    std::fs::copy(class.join("img_00000.jpg"), class.join("zz-extra.jpg")).expect("extra image");

    let p = Pair::start(
        "clairvoyant",
        data.path(),
        junk.path(),
        (ds2_a.path(), ds2_b.path()),
    );
    // b's owned subsequence of the trace, and MIN over it.
    let len = files.len() as u64;
    let owned: Vec<bool> = files
        .iter()
        .map(|rel| owners(&p.a, &format!("/ds/{rel}")) == ["b"])
        .collect();
    let on_b = owned.iter().filter(|o| **o).count();
    assert!(
        on_b > B_MEMORY_BLOCKS + B_MEMORY_BLOCKS / 2 && on_b < 3 * B_MEMORY_BLOCKS,
        "b owns {on_b} of {len}"
    );
    let orders: Vec<Vec<u64>> = (0..EPOCHS).map(|e| order(len, SEED, e, true)).collect();
    let trace: Vec<usize> = orders
        .concat()
        .into_iter()
        .map(|i| i as usize)
        .filter(|&i| owned[i])
        .collect();
    let predicted = min_misses(&trace, on_b, B_MEMORY_BLOCKS);

    let clairvoyant = epochs(&p, &files, &orders);
    eprintln!(
        "b's UFS GETs per epoch: MIN {predicted:?}, clairvoyant {clairvoyant:?} ({on_b} blocks owned, {B_MEMORY_BLOCKS} in memory)"
    );
    let st = remote(&p.b);
    assert_eq!(st["refused"], 0, "{st}");
    assert_eq!(st["ignored"], 0, "{st}");

    // A loader held open: b holds its schedule, by peer; closing it withdraws it.
    let mut open = BatchClient::open(&p.a.shm_socket(), loader("/ds")).expect("loader opens");
    open.next_batch().expect("a batch").expect("not the end");
    wait_for(&p.b, "b holds a's schedule", |r| {
        r["held"] == 1 && r["by_peer"]["a"] == 1 && r["bytes"].as_u64().unwrap_or(0) > 0
    });
    let text = p.b.ctl_ok(&["status"]);
    assert!(text.contains("remote schedules: 1 held (a: 1)"), "{text}");
    drop(open);
    wait_for(&p.b, "closing the loader withdraws it", |r| {
        r["held"] == 0 && r["expired"] == 0 && r["bytes"] == 0
    });

    // A listing that differs on b: ignored there, with a warning and a counter.
    let mut other = BatchClient::open(&p.a.shm_socket(), loader("/ds2")).expect("loader opens");
    wait_for(&p.b, "a differing listing is ignored", |r| {
        r["ignored"].as_u64().unwrap_or(0) >= 1 && r["held"] == 0
    });
    assert!(
        p.b.log().contains("differs here"),
        "{}",
        tail(&p.b.log(), 3000)
    );
    drop(other.next_batch());
    drop(other);

    // Killing a: b drops the schedule once no refresh came within the expiry.
    let mut a = p.a;
    let open = BatchClient::open(&a.shm_socket(), loader("/ds")).expect("loader opens");
    wait_for(&p.b, "b holds the schedule again", |r| r["held"] == 1);
    a.kill9();
    drop(open);
    // (The ignored loader's withdrawal may not have gone out before the kill: it expires too.)
    wait_for(&p.b, "b drops a dead node's schedule", |r| {
        r["held"] == 0 && r["expired"].as_u64().unwrap_or(0) >= 1
    });
    assert!(p.b.metric("loaderd_remote_schedules_expired_total") >= 1.0);
    drop(p.b);

    let lru = {
        let q = Pair::start(
            "lru",
            data.path(),
            junk.path(),
            (ds2_a.path(), ds2_b.path()),
        );
        epochs(&q, &files, &orders)
    };
    eprintln!(
        "b's UFS GETs per epoch: MIN {predicted:?}, clairvoyant {clairvoyant:?}, lru {lru:?}"
    );

    // After the cold first epoch, MIN's count within a few blocks: the reads before b
    // registered the epoch's schedule (it is built in the background after the
    // announcement) and re-anchors of the rate account for the rest.
    assert_min_and_below_lru(
        &clairvoyant,
        &lru,
        &predicted,
        on_b as u64,
        4 * BATCH as u64,
    );
}
