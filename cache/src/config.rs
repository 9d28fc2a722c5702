//! Typed configuration of the cache, with loaderd's tuning defaults.
//!
//! The defaults are the lessons of production deployments, not knobs to discover: a long
//! metadata TTL (datasets are immutable by convention), reserved free space between a high and
//! a low watermark so eviction never runs block by block, and no tier promotion on reads.
//! Sizes accept integers (bytes) or strings such as `"4MiB"`; durations accept seconds or
//! strings such as `"90s"`, `"10m"`, `"24h"`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Everything the block cache needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Fixed block size; files are split into blocks of this size (small files are one block).
    pub block_size: ByteSize,
    /// Which block leaves a full tier, in both tiers (`clairvoyant`, `stable` or `lru`).
    pub eviction: Eviction,
    /// The memory tier (a shared-memory arena).
    pub memory: MemoryTierConfig,
    /// The SSD tier; absent means memory only (no persistence across restarts).
    pub ssd: Option<SsdTierConfig>,
    /// List/stat caching and dataset manifests.
    pub metadata: MetadataConfig,
    /// Requests to the under file systems.
    pub ufs: UfsConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            block_size: ByteSize(4 << 20),
            eviction: Eviction::default(),
            memory: MemoryTierConfig::default(),
            ssd: None,
            metadata: MetadataConfig::default(),
            ufs: UfsConfig::default(),
        }
    }
}

/// The eviction policy of the tiers (`cache.eviction`; see [`crate::evict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// Belady's MIN over the schedules loaders register: the block needed farthest in the
    /// future leaves first; blocks no schedule needs are kept as `stable` keeps them.
    #[default]
    Clairvoyant,
    /// A fixed resident set: once full, new blocks rarely replace resident ones, so a
    /// shuffled epoch over a dataset larger than the cache hits on the resident fraction.
    Stable,
    /// Least recently used.
    Lru,
}

impl Eviction {
    /// Parses `clairvoyant`, `stable` or `lru`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "clairvoyant" => Ok(Eviction::Clairvoyant),
            "stable" => Ok(Eviction::Stable),
            "lru" => Ok(Eviction::Lru),
            other => Err(format!(
                "unknown eviction policy {other:?} (clairvoyant, stable or lru)"
            )),
        }
    }
}

impl std::str::FromStr for Eviction {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Eviction::parse(s)
    }
}

/// Eviction thresholds as fractions of a tier's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watermarks {
    /// Eviction starts when an insert would push usage above this fraction.
    pub high: f64,
    /// Eviction frees down to this fraction, so the next misses find room without evicting.
    pub low: f64,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks {
            high: 0.95,
            low: 0.80,
        }
    }
}

/// The memory tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryTierConfig {
    /// Arena size; 0 disables the tier.
    pub capacity: ByteSize,
    /// Eviction watermarks (`watermarks = { high = 0.95, low = 0.8 }`).
    pub watermarks: Watermarks,
}

impl Default for MemoryTierConfig {
    fn default() -> Self {
        MemoryTierConfig {
            capacity: ByteSize(1 << 30),
            watermarks: Watermarks::default(),
        }
    }
}

/// The SSD tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdTierConfig {
    /// Directory holding blocks and dataset manifests.
    pub dir: PathBuf,
    /// Bytes of blocks the tier may hold; 0 disables block caching on SSD (manifests stay).
    pub capacity: ByteSize,
    /// Eviction watermarks (`watermarks = { high = 0.95, low = 0.8 }`).
    #[serde(default)]
    pub watermarks: Watermarks,
}

/// List/stat caching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// How long a listing, stat or manifest is trusted before the UFS is asked again.
    pub ttl: Secs,
    /// Memory the metadata cache may use (estimated); beyond it, oldest entries go first.
    pub max_bytes: ByteSize,
    /// LIST a mount once into a persisted manifest, so opening a file costs no HEAD request.
    pub manifest: bool,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            ttl: Secs(Duration::from_secs(24 * 3600)),
            max_bytes: ByteSize(256 << 20),
            manifest: true,
        }
    }
}

/// Requests to the under file systems.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UfsConfig {
    /// Deadline of one request (a GET of one block, a LIST page, a HEAD).
    pub timeout: Secs,
    /// Retries after a failed request (transient errors only), with exponential backoff.
    pub retries: u32,
    /// First backoff; doubled per retry up to `max_backoff`.
    pub initial_backoff: Secs,
    /// Backoff ceiling.
    pub max_backoff: Secs,
    /// Memory for block fetches in flight; misses beyond it wait.
    pub max_inflight_bytes: ByteSize,
    /// Part of `max_inflight_bytes` kept for each mount (at most an equal share; at least a
    /// block to be of use): fetches of other mounts never take it, so a hung store cannot
    /// block another mount's reads. 0 makes the budget one pool.
    pub mount_reserved_bytes: ByteSize,
    /// Bytes per second all mounts together may read from their UFS; 0: no cap. A GET waits
    /// for its share of the link before it is sent (outside its deadline).
    pub max_bandwidth: ByteSize,
}

impl Default for UfsConfig {
    fn default() -> Self {
        UfsConfig {
            timeout: Secs(Duration::from_secs(30)),
            retries: 4,
            initial_backoff: Secs(Duration::from_millis(100)),
            max_backoff: Secs(Duration::from_secs(5)),
            max_inflight_bytes: ByteSize(256 << 20),
            mount_reserved_bytes: ByteSize(16 << 20),
            max_bandwidth: ByteSize(0),
        }
    }
}

/// One statically configured cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's node id.
    pub id: String,
    /// Its peer API, `host:port`.
    pub addr: String,
}

/// The distributed cache: membership, placement and peer reads (`[cluster]`).
///
/// Off by default: with no `listen_addr` a node caches everything it reads by itself. With
/// one, blocks are placed over the live members by rendezvous hashing and only a block's
/// owners cache it; others read it from an owner over the peer API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's stable id (a restarted node owns its old blocks again); default: host name.
    pub node_id: Option<String>,
    /// Where the peer API listens (gRPC over TCP); `None` turns the cluster off.
    pub listen_addr: Option<std::net::SocketAddr>,
    /// How peers reach this node, `host:port`; default: `listen_addr` (must then be routable).
    pub advertise_addr: Option<String>,
    /// A static member list (`[[cluster.members]]`), used when no etcd endpoints are set. This
    /// node is always a member.
    pub members: Vec<MemberConfig>,
    /// etcd endpoints (`http://host:2379`); when set, membership comes from etcd leases.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster in etcd.
    pub etcd_prefix: String,
    /// A member whose lease is not renewed for this long leaves the member set.
    pub lease_ttl: Secs,
    /// Shared secret peers present on every request (prefer `token_file`).
    pub token: Option<String>,
    /// File holding the shared secret (a mounted Kubernetes Secret).
    pub token_file: Option<PathBuf>,
    /// Owners per block (more spreads hot data; each owner caches a copy).
    pub replication: usize,
    /// Deadline of one peer request; past it the next owner (or the UFS) is asked.
    pub peer_timeout: Secs,
    /// How long a peer that failed is skipped before it is tried again.
    pub suspect_time: Secs,
    /// Loaders' schedules sent to the block owners (`[cluster.schedules]`).
    pub schedules: RemoteScheduleConfig,
}

/// Schedules of loaders announced to the other members, and the caps on those this node
/// holds for the blocks it owns (`[cluster.schedules]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteScheduleConfig {
    /// How often an open loader's position and rate are sent to the other members.
    pub refresh: Secs,
    /// A schedule not refreshed for this long is dropped (its loader or node died, or it
    /// stopped consuming).
    pub expiry: Secs,
    /// Schedules held for one announcing node, and for all of them.
    pub max_per_peer: usize,
    pub max_total: usize,
    /// Memory all remote schedules' indexes may take (estimated before a build).
    pub max_bytes: ByteSize,
    /// Remote schedules built at once (each lists its dataset through the cache).
    pub build_concurrency: usize,
}

impl Default for RemoteScheduleConfig {
    fn default() -> Self {
        RemoteScheduleConfig {
            refresh: Secs(Duration::from_secs(1)),
            expiry: Secs(Duration::from_secs(5)),
            max_per_peer: 16,
            max_total: 64,
            max_bytes: ByteSize(256 << 20),
            build_concurrency: 2,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            listen_addr: None,
            advertise_addr: None,
            members: Vec::new(),
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/loaderd/".into(),
            lease_ttl: Secs(Duration::from_secs(10)),
            token: None,
            token_file: None,
            replication: 1,
            peer_timeout: Secs(Duration::from_secs(5)),
            suspect_time: Secs(Duration::from_secs(30)),
            schedules: RemoteScheduleConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// Checks values that types cannot; errors name the TOML key.
    pub fn validate(&self) -> Result<()> {
        if self.replication == 0 {
            return Err(Error::config("cluster.replication", "must be at least 1"));
        }
        if self.lease_ttl.0 < Duration::from_secs(2) {
            return Err(Error::config("cluster.lease_ttl", "must be at least 2s"));
        }
        if self.peer_timeout.0.is_zero() {
            return Err(Error::config("cluster.peer_timeout", "must be positive"));
        }
        if self.node_id.as_deref().is_some_and(str::is_empty) {
            return Err(Error::config("cluster.node_id", "must not be empty"));
        }
        for (i, m) in self.members.iter().enumerate() {
            if m.id.is_empty() || m.addr.is_empty() {
                return Err(Error::config(
                    format!("cluster.members[{i}]"),
                    "needs `id` and `addr`",
                ));
            }
        }
        if let Some(addr) = self.listen_addr
            && addr.ip().is_unspecified()
            && self.advertise_addr.is_none()
        {
            return Err(Error::config(
                "cluster.advertise_addr",
                "is needed when listen_addr is a wildcard address",
            ));
        }
        let s = &self.schedules;
        if s.refresh.0 < Duration::from_millis(50) {
            return Err(Error::config(
                "cluster.schedules.refresh",
                "must be at least 50ms",
            ));
        }
        if s.expiry.0 < s.refresh.0 * 2 {
            return Err(Error::config(
                "cluster.schedules.expiry",
                "must be at least twice cluster.schedules.refresh",
            ));
        }
        if s.build_concurrency == 0 {
            return Err(Error::config(
                "cluster.schedules.build_concurrency",
                "must be at least 1",
            ));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(Error::config(
                "cluster.token",
                "set either token or token_file, not both",
            ));
        }
        Ok(())
    }
}

impl CacheConfig {
    /// Checks values that types cannot; errors name the TOML key.
    pub fn validate(&self) -> Result<()> {
        let bs = self.block_size.0;
        if !(4096..=(256 << 20)).contains(&bs) {
            return Err(Error::config(
                "cache.block_size",
                "must be between 4KiB and 256MiB",
            ));
        }
        check_watermarks("cache.memory", &self.memory.watermarks)?;
        if let Some(ssd) = &self.ssd {
            check_watermarks("cache.ssd", &ssd.watermarks)?;
            if ssd.dir.as_os_str().is_empty() {
                return Err(Error::config("cache.ssd.dir", "must not be empty"));
            }
        }
        if self.ufs.max_inflight_bytes.0 < bs {
            return Err(Error::config(
                "cache.ufs.max_inflight_bytes",
                "must be at least one block",
            ));
        }
        if self.ufs.timeout.0.is_zero() {
            return Err(Error::config("cache.ufs.timeout", "must be positive"));
        }
        Ok(())
    }
}

fn check_watermarks(section: &str, w: &Watermarks) -> Result<()> {
    if !(w.high > 0.0 && w.high <= 1.0) {
        return Err(Error::config(
            format!("{section}.watermarks.high"),
            "must be in (0, 1]",
        ));
    }
    if !(w.low >= 0.0 && w.low < w.high) {
        return Err(Error::config(
            format!("{section}.watermarks.low"),
            "must be in [0, high)",
        ));
    }
    Ok(())
}

/// Splits `"4.5MiB"` into (4.5, "MiB").
fn split_number<'a>(s: &'a str, what: &str) -> std::result::Result<(f64, &'a str), String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num = num.parse().map_err(|_| format!("{s:?} is not {what}"))?;
    Ok((num, unit.trim()))
}

/// `FromStr` through `parse` and `Serialize` through `Display`, for values written as text.
macro_rules! text_value {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                <$t>::parse(s)
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    };
}

/// A byte count, written as an integer or a string with a unit (`"512KiB"`, `"4MiB"`, `"2GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"4MiB"`, `"4M"`, `"4194304"`; units are powers of 1024 except `KB`/`MB`/`GB`/`TB`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (num, unit) = split_number(s, "a size such as 4MiB")?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

text_value!(ByteSize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration, written as seconds or a string with a unit (`"500ms"`, `"90s"`, `"10m"`, `"24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Secs(pub Duration);

impl Secs {
    /// Parses `"500ms"`, `"90s"`, `"10m"`, `"24h"`, `"2d"` or a plain number of seconds.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (num, unit) = split_number(s, "a duration such as 90s")?;
        let secs = match unit {
            "ms" => num / 1000.0,
            "" | "s" => num,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            "d" => num * 86400.0,
            other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
        };
        Ok(Secs(Duration::from_secs_f64(secs)))
    }
}

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            let s = ms / 1000;
            match s {
                s if s > 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
                s if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
                s => write!(f, "{s}s"),
            }
        }
    }
}

text_value!(Secs);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Secs(Duration::from_secs(n))),
            Raw::Float(x) if x >= 0.0 => Ok(Secs(Duration::from_secs_f64(x))),
            Raw::Float(x) => Err(serde::de::Error::custom(format!("negative duration {x}"))),
            Raw::Str(s) => Secs::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(ByteSize::parse("4MiB").unwrap().0, 4 << 20);
        assert_eq!(ByteSize::parse("4m").unwrap().0, 4 << 20);
        assert_eq!(ByteSize::parse("2GB").unwrap().0, 2_000_000_000);
        assert_eq!(ByteSize::parse("123").unwrap().0, 123);
        assert!(ByteSize::parse("4 parsecs").is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Secs::parse("90s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Secs::parse("10m").unwrap().0, Duration::from_secs(600));
        assert_eq!(Secs::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Secs(Duration::from_secs(86400)).to_string(), "24h");
        assert_eq!(Secs(Duration::from_millis(100)).to_string(), "100ms");
    }

    #[test]
    fn eviction_parses_and_defaults_to_clairvoyant() {
        assert_eq!(CacheConfig::default().eviction, Eviction::Clairvoyant);
        for (text, want) in [
            ("clairvoyant", Eviction::Clairvoyant),
            ("stable", Eviction::Stable),
            ("lru", Eviction::Lru),
        ] {
            assert_eq!(text.parse::<Eviction>(), Ok(want));
            let json = serde_json::to_string(&want).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<Eviction>(&json).unwrap(), want);
        }
        assert!("belady".parse::<Eviction>().unwrap_err().contains("belady"));
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = CacheConfig::default();
        c.memory.watermarks.low = 0.99;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("cache.memory.watermarks.low"), "{err}");
        let c = CacheConfig {
            block_size: ByteSize(10),
            ..CacheConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cache.block_size")
        );
    }
}
