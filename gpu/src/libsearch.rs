//! Finding a CUDA shared library at run time: an environment override, then the names the
//! dynamic loader resolves itself (`LD_LIBRARY_PATH`, ldconfig), then the toolkit directories.

use std::path::PathBuf;

use libloading::Library;

use crate::GpuError;

/// Where CUDA toolkits put their libraries.
const TOOLKIT_DIRS: &[&str] = &[
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/local/cuda/lib64",
];

/// Every candidate, in the order tried: `$env` (a file path), each bare `name`, then each name
/// under `/usr/local/cuda*/{targets/x86_64-linux/lib,lib64}` (newest toolkit first).
pub(crate) fn candidates(env: &str, names: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    out.extend(names.iter().map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = TOOLKIT_DIRS.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("cuda-"))
            })
            .collect();
        versioned.sort();
        for v in versioned.into_iter().rev() {
            dirs.push(v.join("targets/x86_64-linux/lib"));
            dirs.push(v.join("lib64"));
        }
    }
    for d in dirs {
        for n in names {
            let p = d.join(n);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

/// Opens the first candidate that loads.
pub(crate) fn open(
    library: &'static str,
    env: &'static str,
    names: &[&str],
) -> Result<(Library, String), GpuError> {
    let mut tried = Vec::new();
    for c in candidates(env, names) {
        // SAFETY: opening a library runs its initializers; these are NVIDIA's CUDA libraries
        // (or what the operator pointed `env` at), whose initializers have no preconditions.
        match unsafe { Library::new(&c) } {
            Ok(lib) => {
                let path = c.display().to_string();
                tracing::debug!(library, %path, "opened");
                return Ok((lib, path));
            }
            Err(e) => tried.push(format!("{}: {}", c.display(), describe(&e))),
        }
    }
    Err(GpuError::LibraryMissing {
        library,
        tried: tried.join("; "),
        env,
    })
}

/// libloading's message plus the loader's own reason (`dlerror`), which it keeps as `source`.
pub(crate) fn describe(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => format!("{e}: {why}"),
        None => e.to_string(),
    }
}
