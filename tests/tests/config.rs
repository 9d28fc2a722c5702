//! `--print-config` and configuration validation.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use loaderd_tests::{Daemon, bin, free_port, output_with_timeout};

/// Runs `loaderd ARGS...` as a one-shot command. A private socket and metrics
/// port keep it harmless should it start serving instead of exiting.
fn loaderd(dir: &Path, args: &[&str]) -> Output {
    output_with_timeout(
        Command::new(bin("loaderd"))
            .arg("--socket")
            .arg(dir.join("loaderd.sock"))
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .args(args),
        Duration::from_secs(20),
    )
}

fn print_config(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let out = loaderd(dir, &all);
    assert!(
        out.status.success(),
        "loaderd {all:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("config is UTF-8")
}

#[test]
fn print_config_shows_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = print_config(dir.path(), &["--block-size", "64KiB"]);
    let line = printed
        .lines()
        .find(|l| l.trim_start().starts_with("block_size"))
        .unwrap_or_else(|| panic!("--print-config has no block_size:\n{printed}"));
    assert!(
        line.contains("65536") || line.contains("64KiB") || line.contains("64 KiB"),
        "block_size is not 64KiB: {line:?}"
    );
}

#[test]
fn print_config_shows_the_eviction_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let eviction = |args: &[&str]| -> String {
        let printed = print_config(dir.path(), args);
        let cache = printed
            .split("\n[")
            .find(|section| section.starts_with("cache]"))
            .unwrap_or_else(|| panic!("no [cache] in:\n{printed}"));
        let line = cache
            .lines()
            .find_map(|l| l.trim().strip_prefix("eviction = "))
            .unwrap_or_else(|| panic!("no cache.eviction in:\n{printed}"));
        line.trim_matches('"').to_string()
    };
    assert_eq!(eviction(&[]), "clairvoyant", "the default");
    for policy in ["stable", "lru", "clairvoyant"] {
        assert_eq!(eviction(&["--eviction", policy]), policy);
    }
    let file = dir.path().join("stable.toml");
    fs::write(&file, "[cache]\neviction = \"stable\"\n").expect("write config");
    assert_eq!(
        eviction(&["--config", file.to_str().expect("utf-8")]),
        "stable"
    );
    let out = loaderd(dir.path(), &["--print-config", "--eviction", "fifo"]);
    assert!(!out.status.success(), "an unknown policy is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fifo"), "the error names the value: {err}");
}

#[test]
fn printed_config_is_a_valid_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = print_config(
        dir.path(),
        &["--block-size", "64KiB", "--memory-capacity", "1GiB"],
    );
    let file = dir.path().join("loaderd.toml");
    fs::write(&file, &printed).expect("write config");
    let again = print_config(dir.path(), &["--config", file.to_str().expect("utf-8")]);
    // Each run gets its own free metrics port from the command line.
    let without_port = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with("metrics_addr"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        without_port(&again),
        without_port(&printed),
        "config printed from the printed config differs"
    );
}

#[test]
fn unknown_config_key_is_rejected_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    fs::write(&file, "bogus_key = 1\n").expect("write config");
    let out = loaderd(
        dir.path(),
        &["--config", file.to_str().expect("utf-8"), "--print-config"],
    );
    assert!(
        !out.status.success(),
        "a config with an unknown key was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus_key"),
        "error does not name the unknown key: {err}"
    );
}

#[test]
fn bad_watermark_in_config_file_is_rejected_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = print_config(dir.path(), &[]);
    // Find the memory high watermark in whatever layout the printed config has.
    let mut section = String::new();
    let mut key = None;
    let bad: Vec<String> = printed
        .lines()
        .map(|line| {
            let trimmed = line.trim();
            if trimmed.starts_with('[') {
                section = trimmed.to_string();
            }
            let name = trimmed.split('=').next().unwrap_or("").trim();
            let is_high =
                name.contains("high") && (name.contains("memory") || section.contains("memory"));
            if key.is_none() && trimmed.contains('=') && is_high {
                key = Some(name.to_string());
                format!("{name} = 1.5")
            } else {
                line.to_string()
            }
        })
        .collect();
    let key =
        key.unwrap_or_else(|| panic!("no memory high watermark in --print-config:\n{printed}"));
    let file = dir.path().join("bad.toml");
    fs::write(&file, bad.join("\n")).expect("write config");

    let out = loaderd(
        dir.path(),
        &["--config", file.to_str().expect("utf-8"), "--print-config"],
    );
    assert!(
        !out.status.success(),
        "a memory high watermark of 1.5 was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key), "error does not name {key}: {err}");
}

#[test]
fn bad_watermark_flags_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        ["--memory-high", "0.5", "--memory-low", "0.8"],
        ["--memory-high", "1.5", "--memory-low", "0.5"],
    ] {
        let mut all = args.to_vec();
        all.push("--print-config");
        let out = loaderd(dir.path(), &all);
        assert!(!out.status.success(), "loaderd {all:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("high") || err.contains("low"),
            "error does not name the watermark: {err}"
        );
    }
    let out = loaderd(dir.path(), &["--block-size", "12parsecs", "--print-config"]);
    assert!(
        !out.status.success(),
        "a block size of 12parsecs was accepted"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("12parsecs"),
        "error does not show the bad value"
    );
}

#[test]
fn status_says_which_gpus_serve_or_why_the_cpu_does() {
    let data = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(&loaderd_tests::file_mount_args("/d", data.path()));
    let gpu = &d.status_json()["gpu"];
    assert_eq!(gpu["mode"], "auto", "{gpu}");
    match loaderd_gpu::detect() {
        loaderd_gpu::GpuAvailability::Available(devs) => {
            assert_eq!(gpu["available"], true, "{gpu}");
            assert_eq!(gpu["devices"].as_array().map(Vec::len), Some(devs.len()));
        }
        loaderd_gpu::GpuAvailability::Unavailable { reason } => {
            assert_eq!(gpu["available"], false, "{gpu}");
            let shown = gpu["reason"].as_str().unwrap_or_default();
            assert!(shown.contains(reason.as_str()), "{gpu}");
            assert!(d.log().contains("decoding on the CPU"), "{}", d.log());
        }
    }
    let off = Daemon::start(&loaderd_tests::args(&["--gpu", "off"]));
    let gpu = &off.status_json()["gpu"];
    assert_eq!(
        (&gpu["mode"], &gpu["available"]),
        (&"off".into(), &false.into()),
        "{gpu}"
    );
    assert!(
        off.ctl_ok(&["status"])
            .contains("gpu off: none used (gpu.mode is off)")
    );
}
