//! Finding a CUDA shared library (NVRTC, nvJPEG) at run time.
//!
//! Order: the library's environment override (a file path), then for each soname the driver
//! can use, newest first: the bare name (what the dynamic loader finds itself through
//! `LD_LIBRARY_PATH` and ldconfig), then the file under each root: Python site-packages (pip
//! wheels: `nvidia/<wheel>/lib` for CUDA 12 wheels, `nvidia/cu13/lib` for CUDA 13 ones), conda
//! and virtualenv prefixes (`<prefix>/lib`), and CUDA toolkits
//! (`targets/{x86_64,sbsa}-linux/lib`, `lib64`; `$CUDA_HOME`, `/usr/local/cuda`, then
//! `/usr/local/cuda-X.Y` newest first). The unversioned `.so` comes last.
//!
//! The sonames follow the driver's CUDA version (`cuDriverGetVersion`): a 13.x driver tries
//! `.so.13` then `.so.12`; a 12.x driver only `.so.12` (a 13.x library needs a 13.x driver);
//! with no driver (NVRTC compiling without a GPU) `.so.13` then `.so.12`. [`search`] is a pure
//! function of the roots and the driver version, so the order is tested without a GPU.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

use crate::GpuError;

/// One library to find.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LibSpec {
    /// Its name in messages, e.g. "nvJPEG".
    pub library: &'static str,
    /// The environment variable naming its file.
    pub env: &'static str,
    /// The file name before `.so`, e.g. "libnvjpeg".
    pub stem: &'static str,
    /// The pip wheel's directory under `site-packages/nvidia/` (CUDA 12 wheels), e.g. "nvjpeg".
    pub wheel: &'static str,
}

/// Directories that may hold CUDA libraries, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Roots {
    /// Python site-packages directories.
    pub site_packages: Vec<PathBuf>,
    /// Conda or virtualenv prefixes (libraries in `<prefix>/lib`).
    pub prefixes: Vec<PathBuf>,
    /// CUDA toolkit roots, e.g. `/usr/local/cuda`.
    pub toolkits: Vec<PathBuf>,
}

/// The CUDA major versions whose sonames to try, preferred first, for a driver that reports
/// `driver` (`cuDriverGetVersion`: 13000 = 13.0), or `None` without a driver.
pub(crate) fn soname_majors(driver: Option<u32>) -> &'static [u32] {
    match driver {
        Some(v) if v < 13000 => &[12],
        _ => &[13, 12],
    }
}

/// Every directory to look in for `spec`, in order.
fn dirs(roots: &Roots, spec: &LibSpec) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sp in &roots.site_packages {
        let nvidia = sp.join("nvidia");
        out.push(nvidia.join(spec.wheel).join("lib"));
        out.push(nvidia.join("cu13/lib"));
        out.push(nvidia.join("cu12/lib"));
    }
    out.extend(roots.prefixes.iter().map(|p| p.join("lib")));
    for t in &roots.toolkits {
        out.push(t.join("targets/x86_64-linux/lib"));
        out.push(t.join("targets/sbsa-linux/lib"));
        out.push(t.join("lib64"));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.clone()));
    out
}

/// Every candidate for `spec` under `roots` for a driver reporting `driver`, in the order to
/// try (see the module docs); without the environment override. Files under the roots are
/// listed only if they exist; bare names always (the dynamic loader resolves them).
pub(crate) fn search(roots: &Roots, spec: &LibSpec, driver: Option<u32>) -> Vec<PathBuf> {
    let dirs = dirs(roots, spec);
    let mut names: Vec<String> = soname_majors(driver)
        .iter()
        .map(|m| format!("{}.so.{m}", spec.stem))
        .collect();
    names.push(format!("{}.so", spec.stem));
    let mut out = Vec::new();
    for name in names {
        out.push(PathBuf::from(&name));
        out.extend(dirs.iter().map(|d| d.join(&name)).filter(|p| p.is_file()));
    }
    out
}

impl Roots {
    /// The roots of this process: site-packages from `python3` (memoized) plus those of
    /// `$VIRTUAL_ENV`, `$CONDA_PREFIX` and `$PYTHONPATH`; `$CONDA_PREFIX` and `$VIRTUAL_ENV`
    /// as prefixes; `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, `/usr/local/cuda-X.Y`.
    pub(crate) fn from_env() -> Self {
        let mut toolkits = versioned_toolkits(Path::new("/usr/local"));
        toolkits.insert(0, PathBuf::from("/usr/local/cuda"));
        Roots::from_vars(|k| std::env::var_os(k), python_site_packages(), toolkits)
    }

    /// [`Roots::from_env`] with the environment, python's answer and the system toolkits
    /// passed in.
    pub(crate) fn from_vars(
        var: impl Fn(&str) -> Option<OsString>,
        python: &[PathBuf],
        system_toolkits: Vec<PathBuf>,
    ) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut roots = Roots::default();
        for prefix in ["VIRTUAL_ENV", "CONDA_PREFIX"].into_iter().filter_map(var) {
            roots.site_packages.extend(prefix_site_packages(&prefix));
            roots.prefixes.push(prefix);
        }
        if let Some(pp) = var("PYTHONPATH") {
            roots.site_packages.extend(std::env::split_paths(&pp));
        }
        roots.site_packages.extend(python.iter().cloned());
        roots.toolkits = ["CUDA_HOME", "CUDA_PATH"]
            .into_iter()
            .filter_map(var)
            .chain(system_toolkits)
            .collect();
        roots
    }
}

/// `<prefix>/lib/python3.*/site-packages`, newest Python first.
fn prefix_site_packages(prefix: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(prefix.join("lib"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = parse_version(name.strip_prefix("python")?)?;
            let sp = e.path().join("site-packages");
            sp.is_dir().then_some((version, sp))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

/// `<dir>/cuda-X.Y`, newest version first.
fn versioned_toolkits(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((parse_version(name.strip_prefix("cuda-")?)?, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, p)| p).collect()
}

/// "12.10" → [12, 10] (so 12.10 sorts after 12.9).
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

/// The site-packages directories `python3` reports (asked once per process; none when there
/// is no `python3`).
fn python_site_packages() -> &'static [PathBuf] {
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    PATHS.get_or_init(|| {
        const SCRIPT: &str = "import site, sys\n\
            p = site.getsitepackages() + [site.getusersitepackages()] + sys.path\n\
            print('\\n'.join(x for x in p if x))";
        match std::process::Command::new("python3")
            .args(["-c", SCRIPT])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .collect(),
            Ok(_) | Err(_) => Vec::new(),
        }
    })
}

/// Opens the first candidate that loads: `$env`, then [`search`] over this process's roots.
pub(crate) fn open(spec: &LibSpec, driver: Option<u32>) -> Result<(Library, String), GpuError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os(spec.env).filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.extend(search(&Roots::from_env(), spec, driver));
    let mut tried = Vec::new();
    for c in candidates {
        // SAFETY: opening a library runs its initializers; these are NVIDIA's CUDA libraries
        // (or what the operator pointed `env` at), whose initializers have no preconditions.
        match unsafe { Library::new(&c) } {
            Ok(lib) => {
                let path = c.display().to_string();
                tracing::debug!(library = spec.library, %path, ?driver, "opened");
                return Ok((lib, path));
            }
            Err(e) => tried.push(format!("{}: {}", c.display(), describe(&e))),
        }
    }
    Err(GpuError::LibraryMissing {
        library: spec.library,
        tried: tried.join("; "),
        env: spec.env,
    })
}

/// libloading's message plus the loader's own reason (`dlerror`), which it keeps as `source`.
pub(crate) fn describe(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => format!("{e}: {why}"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVJPEG: LibSpec = LibSpec {
        library: "nvJPEG",
        env: "LOADERD_TEST_UNSET",
        stem: "libnvjpeg",
        wheel: "nvjpeg",
    };

    fn touch(root: &Path, rel: &str) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
        p
    }

    /// A laid-out tree: pip wheels for CUDA 12 and 13 in a virtualenv's site-packages, a conda
    /// prefix, an sbsa toolkit. The files found, in order, follow the driver's version.
    #[test]
    fn finds_wheels_conda_and_toolkits_in_driver_order() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let venv = r.join("venv");
        let sp = "venv/lib/python3.12/site-packages";
        let wheel12 = touch(r, &format!("{sp}/nvidia/nvjpeg/lib/libnvjpeg.so.12"));
        let wheel13 = touch(r, &format!("{sp}/nvidia/cu13/lib/libnvjpeg.so.13"));
        // An older Python in the same venv is searched after the newer one.
        let old = touch(
            r,
            "venv/lib/python3.9/site-packages/nvidia/nvjpeg/lib/libnvjpeg.so.12",
        );
        let conda12 = touch(r, "conda/lib/libnvjpeg.so.12");
        let sbsa13 = touch(r, "cuda-13.0/targets/sbsa-linux/lib/libnvjpeg.so.13");
        let x86_12 = touch(r, "cuda-12.9/targets/x86_64-linux/lib/libnvjpeg.so.12");
        let unversioned = touch(r, "cuda-12.9/lib64/libnvjpeg.so");
        touch(r, "cuda-12.9/lib64/libnvrtc.so.12"); // another library: never listed
        let toolkits = versioned_toolkits(r);
        assert_eq!(toolkits, [r.join("cuda-13.0"), r.join("cuda-12.9")]);
        let env = |k: &str| match k {
            "VIRTUAL_ENV" => Some(venv.clone().into_os_string()),
            "CONDA_PREFIX" => Some(r.join("conda").into_os_string()),
            _ => None,
        };
        let roots = Roots::from_vars(env, &[], toolkits);
        let bare = |n: &str| PathBuf::from(n);
        assert_eq!(
            search(&roots, &NVJPEG, Some(13000)),
            [
                bare("libnvjpeg.so.13"),
                wheel13,
                sbsa13,
                bare("libnvjpeg.so.12"),
                wheel12.clone(),
                old.clone(),
                conda12.clone(),
                x86_12.clone(),
                bare("libnvjpeg.so"),
                unversioned.clone(),
            ]
        );
        // A 12.x driver cannot run a CUDA 13 library: no .so.13 at all.
        let for12 = [
            bare("libnvjpeg.so.12"),
            wheel12,
            old,
            conda12,
            x86_12,
            bare("libnvjpeg.so"),
            unversioned,
        ];
        assert_eq!(search(&roots, &NVJPEG, Some(12080)), for12);
        // No driver: newest first, as for 13.x.
        assert_eq!(search(&roots, &NVJPEG, None)[0], bare("libnvjpeg.so.13"));
    }

    #[test]
    fn soname_follows_the_driver() {
        assert_eq!(soname_majors(Some(13000)), [13, 12]);
        assert_eq!(soname_majors(Some(13020)), [13, 12]);
        assert_eq!(soname_majors(Some(12090)), [12]);
        assert_eq!(soname_majors(Some(12000)), [12]);
        assert_eq!(soname_majors(None), [13, 12]);
        assert_eq!(parse_version("12.10"), Some(vec![12, 10]));
        assert!(parse_version("12.x").is_none());
    }

    #[test]
    fn environment_roots() {
        let env = |k: &str| match k {
            "CUDA_HOME" => Some("/opt/cuda".into()),
            "PYTHONPATH" => Some("/a:/b".into()),
            "CONDA_PREFIX" => Some("".into()),
            _ => None,
        };
        let roots = Roots::from_vars(env, &[PathBuf::from("/py")], vec!["/usr/local/cuda".into()]);
        assert_eq!(
            roots.site_packages,
            [Path::new("/a"), Path::new("/b"), Path::new("/py")]
        );
        assert!(roots.prefixes.is_empty());
        assert_eq!(
            roots.toolkits,
            [Path::new("/opt/cuda"), Path::new("/usr/local/cuda")]
        );
    }
}
