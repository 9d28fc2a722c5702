//! What one nvJPEG decode writes, and where: [`ImageGeometry`] (the size nvJPEG will write),
//! [`InspectedJpeg`] (JPEG bytes together with the geometry [`JpegDecoder::inspect`] found in
//! those very bytes), [`DecodeJob`] (an inspected JPEG and its slot in the destination buffer)
//! and the packing of slots into one buffer under a byte cap.
//!
//! nvJPEG writes as many bytes as *it* reads from the bitstream, so the slot reserved for an
//! image must be sized from the bytes that are decoded. The types make that hold in safe code:
//! the fields are private, an `InspectedJpeg` is made only by `inspect` (which checks that
//! nvJPEG and the header reader agree) and borrows the bytes it describes, and a `DecodeJob`
//! is made only from one, so its data and geometry cannot disagree.
//!
//! [`JpegDecoder::inspect`]: super::JpegDecoder::inspect

use std::ops::Range;

use crate::GpuError;

/// Slots in a packed buffer start at multiples of this: the alignment `cudaMalloc` gives, so
/// each image starts as a separately allocated one would.
pub const SLOT_ALIGN: usize = 256;

/// The default cap on one decode buffer: 2 GiB (a batch of 256 ImageNet-sized images needs
/// ~110 MB, 256 twelve-megapixel photos ~9 GB).
pub const DEFAULT_MAX_DECODE_BYTES: usize = 2 << 30;

/// The size of an image the GPU will decode; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGeometry {
    width: u32,
    height: u32,
}

impl ImageGeometry {
    pub(super) fn new(width: u32, height: u32) -> Self {
        ImageGeometry { width, height }
    }

    /// Pixels per row.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per RGB row (no padding).
    pub fn pitch(&self) -> u32 {
        self.width * 3
    }

    /// Bytes of the decoded RGB image.
    pub fn bytes(&self) -> usize {
        self.pitch() as usize * self.height as usize
    }

    #[cfg(test)]
    pub(crate) fn for_test(width: u32, height: u32) -> Self {
        ImageGeometry { width, height }
    }
}

/// JPEG bytes and the geometry [`JpegDecoder::inspect`](super::JpegDecoder::inspect) found in
/// them; it borrows the bytes, so they cannot change or be swapped while it lives.
#[derive(Debug, Clone, Copy)]
pub struct InspectedJpeg<'a> {
    data: &'a [u8],
    geometry: ImageGeometry,
}

impl<'a> InspectedJpeg<'a> {
    /// Only `inspect` calls this, after nvJPEG agreed with the header about `data`.
    pub(super) fn new(data: &'a [u8], geometry: ImageGeometry) -> Self {
        InspectedJpeg { data, geometry }
    }

    /// The JPEG file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// What decoding it writes.
    pub fn geometry(&self) -> ImageGeometry {
        self.geometry
    }

    /// From the CPU header alone (no nvJPEG), for tests without a GPU.
    #[cfg(test)]
    pub(crate) fn from_header(data: &'a [u8]) -> Self {
        let h = crate::jpeg::parse_header(data).expect("a valid test JPEG");
        InspectedJpeg::new(data, ImageGeometry::new(h.width, h.height))
    }
}

/// One inspected JPEG to decode into a destination buffer at [`Self::offset`].
///
/// The fields are private: a job is built only from an [`InspectedJpeg`], so its bytes and the
/// space reserved for them always agree. This does not compile:
///
/// ```compile_fail,E0451
/// use loaderd_gpu::nvjpeg::{DecodeJob, ImageGeometry};
/// fn forge<'a>(data: &'a [u8], geometry: ImageGeometry) -> DecodeJob<'a> {
///     DecodeJob { data, geometry, offset: 0 }
/// }
/// ```
///
/// while this, the only way, does:
///
/// ```no_run
/// use loaderd_gpu::nvjpeg::{DecodeJob, ImageError, JpegDecoder};
/// fn job<'a>(decoder: &JpegDecoder, data: &'a [u8]) -> Result<DecodeJob<'a>, ImageError> {
///     let image = decoder.inspect(data)?;
///     Ok(DecodeJob::new(image, 0).expect("offset 0 is aligned"))
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DecodeJob<'a> {
    image: InspectedJpeg<'a>,
    offset: usize,
}

impl<'a> DecodeJob<'a> {
    /// `image` into the slot at `offset` (a multiple of [`SLOT_ALIGN`]); refused when the
    /// offset is unaligned or the slot's end overflows. Whether the slot fits the destination
    /// and overlaps no other is checked when the batch is decoded.
    pub fn new(image: InspectedJpeg<'a>, offset: usize) -> Result<Self, GpuError> {
        if !offset.is_multiple_of(SLOT_ALIGN)
            || offset.checked_add(image.geometry.bytes()).is_none()
        {
            return Err(GpuError::InvalidArgument(format!(
                "slot of {} bytes at offset {offset} (must be {SLOT_ALIGN}-aligned)",
                image.geometry.bytes()
            )));
        }
        Ok(DecodeJob { image, offset })
    }

    /// The JPEG file.
    pub fn data(&self) -> &'a [u8] {
        self.image.data
    }

    /// What decoding it writes.
    pub fn geometry(&self) -> ImageGeometry {
        self.image.geometry
    }

    /// Byte offset of its pixel (0, 0) in the destination buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The bytes it writes in the destination buffer.
    pub fn slot(&self) -> Range<usize> {
        self.offset..self.offset + self.image.geometry.bytes()
    }
}

/// Checks that every job's slot lies inside a buffer of `len` bytes and that no two overlap.
pub(crate) fn check_slots(jobs: &[DecodeJob<'_>], len: usize) -> Result<(), GpuError> {
    let mut slots: Vec<Range<usize>> = jobs.iter().map(DecodeJob::slot).collect();
    slots.sort_by_key(|s| s.start);
    if let Some(s) = slots.iter().find(|s| s.end > len) {
        return Err(GpuError::InvalidArgument(format!(
            "image slot {s:?} overflows a buffer of {len} bytes"
        )));
    }
    if let Some(w) = slots.windows(2).find(|w| w[0].end > w[1].start) {
        return Err(GpuError::InvalidArgument(format!(
            "image slots {:?} and {:?} overlap",
            w[0], w[1]
        )));
    }
    Ok(())
}

/// Start of each image in a packed buffer ([`SLOT_ALIGN`]-aligned) and the total size, which
/// must not exceed `cap` bytes ([`GpuError::DecodeBufferCap`] otherwise).
pub(crate) fn pack(
    sizes: impl IntoIterator<Item = usize>,
    cap: usize,
) -> Result<(Vec<usize>, usize), GpuError> {
    let mut offsets = Vec::new();
    let mut end = 0usize;
    for n in sizes {
        offsets.push(end);
        end = end
            .checked_add(n)
            .and_then(|e| e.checked_next_multiple_of(SLOT_ALIGN))
            .ok_or_else(|| GpuError::InvalidArgument("batch size overflows".into()))?;
    }
    if end > cap {
        return Err(GpuError::DecodeBufferCap { need: end, cap });
    }
    Ok((offsets, end))
}

/// The size to allocate when a reused decode buffer is too small for `need` bytes: the next
/// power of two, so a slowly growing batch does not reallocate every time, but never over
/// `cap` (and never under `need`, which [`pack`] has kept within `cap`).
pub(crate) fn grown_size(need: usize, cap: usize) -> usize {
    let need = need.max(1);
    need.checked_next_power_of_two()
        .unwrap_or(need)
        .min(cap)
        .max(need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::tests::baseline;

    #[test]
    fn packing_aligns_and_detects_overflow() {
        let (offsets, total) = pack([10, 0, 256, 1], usize::MAX).unwrap();
        assert_eq!(offsets, [0, 256, 256, 512]);
        assert_eq!(total, 768);
        assert_eq!(pack([], 1).unwrap(), (vec![], 0));
        assert!(pack([usize::MAX - 10, 100], usize::MAX).is_err());
    }

    #[test]
    fn a_batch_over_the_cap_is_refused_with_the_error() {
        assert_eq!(pack([100, 100], 512).unwrap().1, 512);
        let err = pack([100, 100, 100], 512).unwrap_err();
        assert!(
            matches!(
                err,
                GpuError::DecodeBufferCap {
                    need: 768,
                    cap: 512
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("768") && msg.contains("512"), "{msg}");
        // One image alone over the cap.
        assert!(matches!(
            pack([4096 * 4096 * 3], 1 << 20),
            Err(GpuError::DecodeBufferCap { .. })
        ));
    }

    #[test]
    fn reused_buffer_grows_by_powers_of_two_within_the_cap() {
        assert_eq!(grown_size(0, 1 << 20), 1);
        assert_eq!(grown_size(300, 1 << 20), 512);
        assert_eq!(grown_size(600 << 10, 1 << 20), 1 << 20);
        // Capped, but never below the need.
        assert_eq!(grown_size(700, 768), 768);
    }

    #[test]
    fn a_job_borrows_the_bytes_it_was_inspected_from() {
        let a = baseline(16, 8, 1);
        let b = baseline(40, 30, 2);
        let job = DecodeJob::new(InspectedJpeg::from_header(&a), 256).unwrap();
        assert_eq!(job.data().as_ptr(), a.as_ptr());
        assert_eq!(job.geometry(), ImageGeometry::for_test(16, 8));
        assert_eq!(job.slot(), 256..256 + 16 * 8 * 3);
        // Unaligned slots are refused.
        assert!(DecodeJob::new(InspectedJpeg::from_header(&b), 3).is_err());
    }

    #[test]
    fn slots_must_fit_the_buffer_and_not_overlap() {
        let a = baseline(16, 8, 1); // 384 bytes
        let img = InspectedJpeg::from_header(&a);
        let at = |o| DecodeJob::new(img, o).unwrap();
        assert!(check_slots(&[at(0), at(512)], 896).is_ok());
        let past = check_slots(&[at(0), at(512)], 895).unwrap_err();
        assert!(past.to_string().contains("overflows"), "{past}");
        let overlap = check_slots(&[at(256), at(0)], 4096).unwrap_err();
        assert!(overlap.to_string().contains("overlap"), "{overlap}");
        assert!(check_slots(&[], 0).is_ok());
    }
}
