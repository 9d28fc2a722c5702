//! The fused augment kernel: crop box → antialiased bilinear resize → optional horizontal
//! flip → `(v/255 − mean)/std` → NHWC u8 / NCHW f32 / NCHW f16, one launch per batch.
//!
//! Parameters come from the same seeded stream as the CPU path (the loader draws the crop box
//! and flip; this module only applies them), and the arithmetic is the CPU path's (see
//! [`crate::reference`]), so the GPU and CPU paths agree to the bit on the same decoded pixels
//! apart from NVRTC's math-library differences; the stated tolerance is PSNR ≥ 40 dB.
//!
//! The source is the whole decoded image (or any region of it: the crop box is relative to
//! pixel (0, 0) at `src_offset`). Cost per output pixel is (taps x) × (taps y), about
//! (2s+1)² for a downscale factor `s`; vertical weights are cached per thread up to 64 taps.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

use loaderd_image::{CropBox, Layout, Normalize};

use crate::pinned::{DeviceBuffer, GpuContext, H2dStream};
use crate::{DeviceSliceMut, GpuError, Nvrtc};

/// The kernel's CUDA C source.
pub const AUGMENT_CU: &str = include_str!("kernels/augment.cu");
/// The kernel's entry point.
pub const AUGMENT_ENTRY: &str = "loaderd_augment";

/// The kernel's code for a layout (`layout` in the kernel).
fn layout_code(layout: Layout) -> u32 {
    match layout {
        Layout::NhwcU8 => 0,
        Layout::NchwF32 => 1,
        Layout::NchwF16 => 2,
    }
}

/// [`Normalize`] as the kernel's `struct Norm`, passed by value.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct KernelNorm {
    mean: [f32; 3],
    std: [f32; 3],
}

// SAFETY: `#[repr(C)]` plain floats, laid out as the kernel's `struct Norm`.
unsafe impl DeviceRepr for KernelNorm {}

/// One sample: where its HWC u8 pixels are and what to do to them (`Sample` in the kernel).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// Byte offset of pixel (0, 0) in the source buffer.
    pub src_offset: usize,
    /// Source width in pixels.
    pub width: u32,
    /// Source height in pixels.
    pub height: u32,
    /// Bytes per source row (≥ 3 × width).
    pub stride: u32,
    /// The crop box in source pixels, as the CPU path draws it.
    pub crop: CropBox,
    /// Mirror left-right.
    pub flip: bool,
}

/// Size of the kernel's `struct Sample`.
const SAMPLE_BYTES: usize = 56;

impl SampleParams {
    /// Checks the sample against a source buffer of `src_len` bytes: the kernel reads only
    /// pixels inside `width × height`, so this is what keeps it in bounds.
    pub fn validate(&self, src_len: usize) -> Result<(), GpuError> {
        let bad = |why: &str| Err(GpuError::InvalidArgument(format!("{why}: {self:?}")));
        if self.width == 0 || self.height == 0 {
            return bad("empty source");
        }
        if (self.stride as usize) < self.width as usize * 3 {
            return bad("stride shorter than a row");
        }
        let end = (self.height as usize - 1)
            .checked_mul(self.stride as usize)
            .and_then(|v| v.checked_add(self.width as usize * 3))
            .and_then(|v| v.checked_add(self.src_offset));
        if end.is_none_or(|e| e > src_len) {
            return bad("source pixels past the end of the buffer");
        }
        if !self.crop.is_valid() {
            return bad("crop box must be finite with x0 < x1 and y0 < y1");
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.src_offset as u64).to_ne_bytes());
        for v in [self.width, self.height, self.stride, u32::from(self.flip)] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let c = self.crop;
        for v in [c.x0, c.y0, c.x1, c.y1] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

/// NVRTC options: IEEE float rounding everywhere (no fused multiply-add, no flush to zero),
/// so results match the CPU path; `arch` like `compute_90`.
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--std=c++17".into(),
    ]
}

/// The kernel stores whole elements (`float`, 16-bit halves): an output that does not start
/// on an element boundary would fault (a sticky "misaligned address" error that ends the
/// context), so it is refused up front. Ring slots at arbitrary byte offsets are the risk.
pub(crate) fn check_output_alignment(ptr: u64, layout: Layout) -> Result<(), GpuError> {
    let align = layout.element_bytes() as u64;
    if !ptr.is_multiple_of(align) {
        return Err(GpuError::InvalidArgument(format!(
            "output at device address {ptr:#x} is not {align}-byte aligned, as {layout:?} needs"
        )));
    }
    Ok(())
}

/// The compiled kernel, loaded into one context. Cloning shares the loaded module (no new
/// compile): a [`crate::GpuDevice`] compiles once and every batch pipeline clones it.
#[derive(Debug, Clone)]
pub struct AugmentKernel {
    func: CudaFunction,
}

impl AugmentKernel {
    /// Compiles [`AUGMENT_CU`] for the context's device and loads it.
    pub fn new(ctx: &GpuContext, nvrtc: &Nvrtc) -> Result<Self, GpuError> {
        let cuda = ctx.cuda();
        let (major, minor) = cuda
            .compute_capability()
            .map_err(GpuError::driver("cuDeviceGetAttribute"))?;
        let arch = format!("compute_{major}{minor}");
        let cc = (major as u32, minor as u32);
        let image =
            nvrtc.compile_for_device(AUGMENT_CU, "augment.cu", cc, &compile_options(&arch))?;
        let module = cuda
            .load_module(image.into_ptx())
            .map_err(GpuError::driver("cuModuleLoadData"))?;
        let func = module
            .load_function(AUGMENT_ENTRY)
            .map_err(GpuError::driver("cuModuleGetFunction"))?;
        tracing::debug!(%arch, "augment kernel loaded");
        Ok(AugmentKernel { func })
    }

    /// Queues the batch on `stream`: sample `i` of `samples` goes to `out[i * sample_bytes..]`
    /// (a [`DeviceBuffer`]'s [`DeviceBuffer::as_slice_mut`] or a slot of an exported ring).
    /// The write to `out` is ordered by `stream` only (see [`mod@crate::slice`]).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        stream: &H2dStream,
        src: &DeviceBuffer,
        samples: &[SampleParams],
        out_w: u32,
        out_h: u32,
        layout: Layout,
        norm: &Normalize,
        out: DeviceSliceMut<'_>,
    ) -> Result<(), GpuError> {
        if samples.is_empty() {
            return Ok(());
        }
        if out_w == 0 || out_h == 0 || samples.len() > 65_535 {
            return Err(GpuError::InvalidArgument(format!(
                "{out_w}x{out_h} output, {} samples",
                samples.len()
            )));
        }
        if !norm.is_valid() {
            return Err(GpuError::InvalidArgument("std must be nonzero".into()));
        }
        let need = layout
            .sample_bytes(out_w, out_h)
            .saturating_mul(samples.len());
        if out.len() < need {
            return Err(GpuError::InvalidArgument(format!(
                "output buffer of {} bytes, need {need}",
                out.len()
            )));
        }
        check_output_alignment(out.device_ptr(), layout)?;
        let mut table = Vec::with_capacity(samples.len() * SAMPLE_BYTES);
        for s in samples {
            s.validate(src.len())?;
            s.encode(&mut table);
        }
        let cuda: &Arc<_> = stream.cuda();
        let table = cuda
            .clone_htod(&table)
            .map_err(GpuError::driver("cuMemcpyHtoD"))?;
        let blocks = u32::try_from((u64::from(out_w) * u64::from(out_h)).div_ceil(256))
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| GpuError::InvalidArgument(format!("{out_w}x{out_h} output")))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, samples.len() as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let code = layout_code(layout);
        let norm = KernelNorm {
            mean: norm.mean,
            std: norm.std,
        };
        let out_ptr: u64 = out.device_ptr();
        let mut args = cuda.launch_builder(&self.func);
        args.arg(&src.slice)
            .arg(&table)
            .arg(&out_ptr)
            .arg(&out_w)
            .arg(&out_h)
            .arg(&code)
            .arg(&norm);
        // SAFETY: the argument list matches `loaderd_augment`'s parameters in order and type
        // (pointers for the three buffers, the output's as its 64-bit device address, u32
        // sizes and layout, `Norm` by value); every sample was validated to lie inside `src`,
        // and `out` holds `need` writable bytes (the view's contract), which is all the grid
        // writes; `out` stays borrowed (so mapped) until this returns, and its owner keeps it
        // mapped until the stream's work is done (ExportedMemory and DeviceBuffer synchronize
        // before freeing).
        unsafe { args.launch(cfg) }.map_err(GpuError::driver("cuLaunchKernel"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_table_matches_the_kernel_struct() {
        let s = SampleParams {
            src_offset: 1,
            width: 2,
            height: 3,
            stride: 6,
            crop: CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 2.0,
                y1: 3.0,
            },
            flip: true,
        };
        let mut t = Vec::new();
        s.encode(&mut t);
        assert_eq!(t.len(), SAMPLE_BYTES);
        assert_eq!(t[20..24], 1u32.to_ne_bytes());
        assert_eq!(std::mem::size_of::<KernelNorm>(), 24);
    }

    #[test]
    fn outputs_must_start_on_an_element() {
        assert!(check_output_alignment(0x1000, Layout::NchwF32).is_ok());
        assert!(check_output_alignment(0x1002, Layout::NchwF32).is_err());
        assert!(check_output_alignment(0x1002, Layout::NchwF16).is_ok());
        assert!(check_output_alignment(0x1001, Layout::NchwF16).is_err());
        assert!(check_output_alignment(0x1001, Layout::NhwcU8).is_ok());
    }

    #[test]
    fn validation_keeps_reads_in_bounds() {
        let ok = SampleParams {
            src_offset: 0,
            width: 4,
            height: 2,
            stride: 12,
            crop: CropBox {
                x0: 0.0,
                y0: 0.0,
                x1: 4.0,
                y1: 2.0,
            },
            flip: false,
        };
        assert!(ok.validate(24).is_ok());
        assert!(ok.validate(23).is_err());
        assert!(SampleParams { stride: 11, ..ok }.validate(24).is_err());
        assert!(
            SampleParams {
                src_offset: 1,
                ..ok
            }
            .validate(24)
            .is_err()
        );
        let crop = |x1, y0| SampleParams {
            crop: CropBox { x1, y0, ..ok.crop },
            ..ok
        };
        assert!(crop(0.0, 0.0).validate(24).is_err());
        assert!(crop(4.0, f64::NAN).validate(24).is_err());
        assert!(SampleParams { width: 0, ..ok }.validate(24).is_err());
    }
}
