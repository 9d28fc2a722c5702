//! A sample dataset generator: real JPEGs in ImageNet's class-folder layout.
//!
//! Content matters for decode speed and file size, so images are ImageNet-like: a smooth
//! background of random gradients plus per-pixel noise, which makes ~500×375 q90 JPEGs of
//! roughly 100 KB (smooth images would be far smaller and decode ~3× faster). Output is a
//! pure function of the seed.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cli::GenArgs;
use crate::human;

/// What to generate.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub out: PathBuf,
    pub classes: usize,
    pub per_class: usize,
    pub width: u32,
    pub height: u32,
    pub quality: u8,
    /// Amplitude of per-pixel noise (0 = smooth images).
    pub noise: u8,
    pub seed: u64,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        DatasetSpec {
            out: PathBuf::from("dataset"),
            classes: 10,
            per_class: 50,
            width: 500,
            height: 375,
            quality: 90,
            noise: 18,
            seed: 0,
        }
    }
}

/// Files and bytes written.
#[derive(Debug, Clone, Copy, Default)]
pub struct DatasetSummary {
    pub files: u64,
    pub bytes: u64,
}

/// Writes `out/class_NNN/img_NNNNN.jpg`, using `threads` threads.
pub fn generate(spec: &DatasetSpec, threads: usize) -> std::io::Result<DatasetSummary> {
    let total = spec.classes * spec.per_class;
    for c in 0..spec.classes {
        std::fs::create_dir_all(class_dir(&spec.out, c))?;
    }
    let bytes = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= total {
                            return Ok(());
                        }
                        let (c, k) = (i / spec.per_class, i % spec.per_class);
                        let path = class_dir(&spec.out, c).join(format!("img_{k:05}.jpg"));
                        let n = write_image(spec, i as u64, &path)?;
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("generator thread panicked")))
        })
    })?;
    Ok(DatasetSummary {
        files: total as u64,
        bytes: bytes.into_inner(),
    })
}

fn class_dir(out: &Path, c: usize) -> PathBuf {
    out.join(format!("class_{c:03}"))
}

fn write_image(spec: &DatasetSpec, index: u64, path: &Path) -> std::io::Result<u64> {
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index);
    // Vary the size a little, like real photos.
    let w = (spec.width as f32 * rng.random_range(0.8..1.2)) as u32;
    let h = (spec.height as f32 * rng.random_range(0.8..1.2)) as u32;
    let base: [f32; 3] = std::array::from_fn(|_| rng.random_range(30.0..220.0));
    let gx: [f32; 3] = std::array::from_fn(|_| rng.random_range(-0.3..0.3));
    let gy: [f32; 3] = std::array::from_fn(|_| rng.random_range(-0.3..0.3));
    let (cx, cy, r) = (
        rng.random_range(0.0..w as f32),
        rng.random_range(0.0..h as f32),
        rng.random_range(4.0..(w.min(h) as f32 / 2.0).max(5.0)),
    );
    let blob: [f32; 3] = std::array::from_fn(|_| rng.random_range(-80.0..80.0));
    let noise = spec.noise as i32;
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let inside = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)) < r * r;
            for ch in 0..3 {
                let mut v = base[ch] + gx[ch] * x as f32 + gy[ch] * y as f32;
                if inside {
                    v += blob[ch];
                }
                if noise > 0 {
                    v += rng.random_range(-noise..=noise) as f32;
                }
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    let file = std::fs::File::create(path)?;
    let mut out = BufWriter::new(file);
    JpegEncoder::new_with_quality(&mut out, spec.quality)
        .encode(&pixels, w, h, ExtendedColorType::Rgb8)
        .map_err(std::io::Error::other)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok(file.metadata()?.len())
}

/// `loaderctl dataset gen`.
pub(crate) fn generate_cmd(g: &GenArgs) -> anyhow::Result<()> {
    let spec = DatasetSpec {
        out: g.out.clone(),
        classes: g.classes,
        per_class: g.per_class,
        width: g.width,
        height: g.height,
        quality: g.quality,
        noise: g.noise,
        seed: g.seed,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let s = generate(&spec, threads)
        .with_context(|| format!("generating dataset in {}", g.out.display()))?;
    println!(
        "generated {} JPEGs, {} in {} ({:.1}s)",
        s.files,
        human(s.bytes),
        g.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decodable_deterministic_jpegs() {
        let d = tempfile::tempdir().unwrap();
        let spec = DatasetSpec {
            out: d.path().join("a"),
            classes: 2,
            per_class: 2,
            width: 64,
            height: 48,
            ..DatasetSpec::default()
        };
        let s = generate(&spec, 2).unwrap();
        assert_eq!(s.files, 4);
        let p = d.path().join("a/class_001/img_00001.jpg");
        let img = image::open(&p).unwrap();
        assert!(img.width() > 40 && img.height() > 30);
        let again = DatasetSpec {
            out: d.path().join("b"),
            ..spec
        };
        generate(&again, 1).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(d.path().join("b/class_001/img_00001.jpg")).unwrap()
        );
    }
}
