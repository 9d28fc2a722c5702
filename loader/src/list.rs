//! Listing replies in pages.
//!
//! A listing can be far larger than any one gRPC message may be: ImageNet's 1,281,167 training
//! files make a 94 MB reply, over the 64 MiB message limit. So `List` streams *pages*, each
//! ending at [`DEFAULT_PAGE`] entries (or the caller's `page_size`) or before it passes
//! [`PAGE_BYTES`] encoded, whichever comes first. Pages are built lazily as the transport
//! pulls them, so the reply never exists as one message in memory, and the client can print
//! the first page while later ones are still on their way.

use loaderd_cache::{LogicalPath, Stat};
use loaderd_proto::v1 as pb;
use prost::Message;

/// Entries per page when the request does not say.
pub const DEFAULT_PAGE: usize = 10_000;

/// A page ends before its encoded entries pass this many bytes (whatever `page_size` says).
pub const PAGE_BYTES: usize = 1 << 20;

/// One listing entry as the wire shows it. Listing reports sizes, not residency (that would
/// cost a lookup per block).
pub fn entry(path: &LogicalPath, stat: Stat) -> pb::FileInfo {
    match stat {
        Stat::Dir => pb::FileInfo {
            path: path.to_string(),
            is_dir: true,
            ..Default::default()
        },
        Stat::File(f) => pb::FileInfo {
            path: path.to_string(),
            is_dir: false,
            size: f.size,
            version: f.version,
            mtime_unix_ms: f.mtime_ms,
            ..Default::default()
        },
    }
}

/// The pages of `entries`, at most `page_size` entries each (0: [`DEFAULT_PAGE`]) and never
/// much over [`PAGE_BYTES`]: a page holds at least one entry, then stops before the one that
/// would pass the limit. An empty listing has no pages.
pub fn pages(
    entries: Vec<(LogicalPath, Stat)>,
    page_size: u32,
) -> impl Iterator<Item = pb::ListResponse> + Send + 'static {
    let max = match page_size {
        0 => DEFAULT_PAGE,
        n => n as usize,
    };
    let mut rest = entries.into_iter().map(|(p, s)| entry(&p, s)).peekable();
    std::iter::from_fn(move || {
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < max {
            // The repeated field's tag and length prefix come on top of the entry itself.
            let Some(len) = rest.peek().map(|e| e.encoded_len() + 8) else {
                break;
            };
            if !page.is_empty() && bytes + len > PAGE_BYTES {
                break;
            }
            bytes += len;
            page.extend(rest.next());
        }
        (!page.is_empty()).then_some(pb::ListResponse { entries: page })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loaderd_cache::ufs::FileMeta;

    fn listing(n: usize, name_len: usize) -> Vec<(LogicalPath, Stat)> {
        (0..n)
            .map(|i| {
                let rel = format!("{i:04}{}", "x".repeat(name_len));
                let path = LogicalPath::parse(&format!("/data/{rel}")).expect("path");
                let meta = FileMeta {
                    rel,
                    size: i as u64,
                    version: format!("v{i}"),
                    mtime_ms: 7,
                };
                (path, Stat::File(meta))
            })
            .collect()
    }

    fn paths(pages: &[pb::ListResponse]) -> Vec<String> {
        pages
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.path.clone()))
            .collect()
    }

    #[test]
    fn pages_keep_every_entry_in_order_and_stop_at_the_count() {
        let all = listing(25, 4);
        let want: Vec<String> = all.iter().map(|(p, _)| p.to_string()).collect();
        let got: Vec<_> = pages(all, 10).collect();
        let sizes: Vec<usize> = got.iter().map(|p| p.entries.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(paths(&got), want);
        assert_eq!(got[2].entries[4].size, 24);
        assert_eq!(got[2].entries[4].version, "v24");
    }

    #[test]
    fn long_paths_end_a_page_before_it_passes_the_byte_limit() {
        // 4 KiB names: a 10,000-entry page would be 40 MB.
        let got: Vec<_> = pages(listing(1000, 4096), 0).collect();
        assert!(got.len() > 1, "one page of 4 MB");
        for p in &got {
            assert!(p.encoded_len() <= PAGE_BYTES, "{} bytes", p.encoded_len());
        }
        assert_eq!(got.iter().map(|p| p.entries.len()).sum::<usize>(), 1000);
    }

    #[test]
    fn an_entry_larger_than_a_page_still_goes_alone_and_empty_has_no_pages() {
        let got: Vec<_> = pages(listing(2, PAGE_BYTES + 10), 0).collect();
        assert_eq!(
            got.iter().map(|p| p.entries.len()).collect::<Vec<_>>(),
            [1, 1]
        );
        assert_eq!(pages(Vec::new(), 0).count(), 0);
    }
}
