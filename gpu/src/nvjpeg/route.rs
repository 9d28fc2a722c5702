//! Which backend decodes each image of a batch when the decoder has the hardware backend.

/// Where one image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The JPEG engines (`NVJPEG_BACKEND_HARDWARE`).
    Hardware,
    /// The GPU hybrid backend (`NVJPEG_BACKEND_GPU_HYBRID`, Huffman on the GPU).
    GpuHybrid,
    /// Neither: the CPU decoder.
    Cpu,
}

/// Routes a batch from the hardware backend's answers (`nvjpegDecodeBatchedSupported` per
/// image: `Some(true)` takes it, `Some(false)` refuses, `None` could not tell, e.g. a header
/// it cannot parse). Refused or unknown images go to the GPU hybrid backend when there is
/// one (which decodes them or reports their own error), else to the CPU.
pub fn route(support: &[Option<bool>], gpu_hybrid: bool) -> Vec<Route> {
    support
        .iter()
        .map(|s| match s {
            Some(true) => Route::Hardware,
            Some(false) | None if gpu_hybrid => Route::GpuHybrid,
            Some(false) | None => Route::Cpu,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_images_go_to_the_hybrid_backend_then_the_cpu() {
        let answers = [Some(true), Some(false), None, Some(true)];
        use Route::*;
        assert_eq!(
            route(&answers, true),
            [Hardware, GpuHybrid, GpuHybrid, Hardware]
        );
        assert_eq!(route(&answers, false), [Hardware, Cpu, Cpu, Hardware]);
        assert_eq!(route(&[Some(true); 3], false), [Hardware; 3]);
        assert!(route(&[], true).is_empty());
    }
}
