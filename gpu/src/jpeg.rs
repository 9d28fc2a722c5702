//! A JPEG header reader on the CPU: size, coding process, components and chroma subsampling,
//! read from the markers before the first scan, without decoding anything.
//!
//! It decides, before a byte goes to the GPU, whether nvJPEG's fast path can take an image
//! ([`JpegHeader::gpu_support`]): 8-bit baseline Huffman with one component or three YCbCr
//! components at 4:4:4, 4:2:2, 4:2:0 or 4:4:0. That is what every nvJPEG backend decodes
//! (the hardware engines take nothing else); progressive, lossless, arithmetic-coded and
//! 12-bit files, CMYK/YCCK (four components, Adobe APP14), RGB-coded files (APP14 transform 0)
//! and 4:1:1/4:1:0 go to the CPU decoder instead. It is also the pixel-limit check that runs
//! before any device memory is allocated.

/// Chroma subsampling of a three-component image (`nvjpegChromaSubsampling_t`'s cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsampling {
    /// One component.
    Gray,
    /// Chroma at full resolution.
    S444,
    /// Chroma halved horizontally.
    S422,
    /// Chroma halved both ways.
    S420,
    /// Chroma halved vertically.
    S440,
    /// Chroma quartered horizontally.
    S411,
    /// Chroma quartered horizontally and halved vertically.
    S410,
    /// Anything else (Cb and Cr sampled differently, non-integer ratios, 2 or 4 components).
    Other,
}

/// The coding process, from the SOF marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// SOF0.
    Baseline,
    /// SOF1: extended sequential, Huffman.
    ExtendedSequential,
    /// SOF2 (or SOF6 hierarchical): progressive, Huffman.
    Progressive,
    /// SOF3 (or SOF7).
    Lossless,
    /// SOF9–SOF11, SOF13–SOF15: arithmetic coding.
    Arithmetic,
    /// SOF5: hierarchical sequential.
    Hierarchical,
}

/// What the frame header and the APP14 segment say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegHeader {
    /// Pixels per row.
    pub width: u32,
    /// Rows (0 when the file defers it to a DNL marker).
    pub height: u32,
    /// Sample precision in bits (8 or 12; 2–16 for lossless).
    pub precision: u8,
    /// The coding process.
    pub coding: Coding,
    /// (horizontal, vertical) sampling factors of each component, in frame order.
    pub sampling: Vec<(u8, u8)>,
    /// The Adobe APP14 colour transform (0: none, i.e. RGB or CMYK; 1: YCbCr; 2: YCCK).
    pub adobe_transform: Option<u8>,
}

/// Why a header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The data does not start with SOI.
    #[error("not a JPEG (no SOI marker)")]
    NotJpeg,
    /// The data ends inside the header.
    #[error("JPEG header truncated")]
    Truncated,
    /// A marker segment or frame header that makes no sense.
    #[error("malformed JPEG header: {0}")]
    Malformed(&'static str),
    /// A scan or the end of the image came before any frame header.
    #[error("JPEG has no frame header before its first scan")]
    NoFrame,
}

/// Why nvJPEG's fast path does not take an image; the CPU decoder does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// Not baseline sequential.
    #[error("{0:?} JPEG")]
    Coding(Coding),
    /// Not 8-bit samples.
    #[error("{0}-bit samples")]
    Precision(u8),
    /// Four components: CMYK or YCCK.
    #[error("CMYK/YCCK JPEG")]
    Cmyk,
    /// Three components stored as RGB (Adobe transform 0), which nvJPEG would treat as YCbCr.
    #[error("RGB-coded JPEG")]
    RgbCoded,
    /// Two components, or more than four.
    #[error("{0} components")]
    Components(usize),
    /// A subsampling the GPU decoders do not all handle.
    #[error("{0:?} chroma subsampling")]
    Subsampling(Subsampling),
    /// The height is deferred to a DNL marker after the first scan.
    #[error("height deferred to a DNL marker")]
    DeferredHeight,
    /// The JPEG engines refuse it (`nvjpegDecodeBatchedSupported`) and no GPU hybrid
    /// decoder could be made.
    #[error("refused by the hardware JPEG decoder")]
    HardwareRefused,
    /// nvJPEG itself refused the image (its status).
    #[error("nvJPEG reports the image unsupported (status {0})")]
    Decoder(i32),
}

impl JpegHeader {
    /// Width × height.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The chroma subsampling, as nvJPEG names it.
    pub fn subsampling(&self) -> Subsampling {
        match self.sampling.as_slice() {
            [_] => Subsampling::Gray,
            [y, cb, cr] if cb == cr && cb.0 > 0 && cb.1 > 0 => {
                if y.0 % cb.0 != 0 || y.1 % cb.1 != 0 {
                    return Subsampling::Other;
                }
                match (y.0 / cb.0, y.1 / cb.1) {
                    (1, 1) => Subsampling::S444,
                    (2, 1) => Subsampling::S422,
                    (2, 2) => Subsampling::S420,
                    (1, 2) => Subsampling::S440,
                    (4, 1) => Subsampling::S411,
                    (4, 2) => Subsampling::S410,
                    _ => Subsampling::Other,
                }
            }
            _ => Subsampling::Other,
        }
    }

    /// `Ok` when nvJPEG's fast path decodes this image; the reason to use the CPU otherwise.
    pub fn gpu_support(&self) -> Result<(), Unsupported> {
        if self.coding != Coding::Baseline {
            return Err(Unsupported::Coding(self.coding));
        }
        if self.precision != 8 {
            return Err(Unsupported::Precision(self.precision));
        }
        if self.height == 0 {
            return Err(Unsupported::DeferredHeight);
        }
        match self.sampling.len() {
            1 => return Ok(()),
            3 if self.adobe_transform == Some(0) => return Err(Unsupported::RgbCoded),
            3 => {}
            4 => return Err(Unsupported::Cmyk),
            n => return Err(Unsupported::Components(n)),
        }
        match self.subsampling() {
            Subsampling::S444 | Subsampling::S422 | Subsampling::S420 | Subsampling::S440 => Ok(()),
            other => Err(Unsupported::Subsampling(other)),
        }
    }
}

fn be16(data: &[u8], at: usize) -> Result<u16, HeaderError> {
    data.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(HeaderError::Truncated)
}

/// Reads the markers up to the first scan (SOS). Never reads entropy-coded data.
pub fn parse_header(data: &[u8]) -> Result<JpegHeader, HeaderError> {
    if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(HeaderError::NotJpeg);
    }
    let mut pos = 2;
    let mut frame: Option<JpegHeader> = None;
    let mut adobe = None;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if *data.get(pos).ok_or(HeaderError::Truncated)? != 0xFF {
            return Err(HeaderError::Malformed("expected a marker"));
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *data.get(pos).ok_or(HeaderError::Truncated)?;
        pos += 1;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD8 => return Err(HeaderError::Malformed("second SOI")),
            0xD9 => return Err(HeaderError::NoFrame),
            _ => {}
        }
        let len = usize::from(be16(data, pos)?);
        if len < 2 {
            return Err(HeaderError::Malformed("segment length below 2"));
        }
        let body = data.get(pos + 2..pos + len).ok_or(HeaderError::Truncated)?;
        pos += len;
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if frame.is_some() {
                    return Err(HeaderError::Malformed("second frame header"));
                }
                frame = Some(parse_frame(marker, body)?);
            }
            0xEE if body.len() >= 12 && body.starts_with(b"Adobe") => adobe = Some(body[11]),
            0xDA => {
                let mut header = frame.ok_or(HeaderError::NoFrame)?;
                header.adobe_transform = adobe;
                return Ok(header);
            }
            _ => {}
        }
    }
}

fn parse_frame(marker: u8, body: &[u8]) -> Result<JpegHeader, HeaderError> {
    let coding = match marker {
        0xC0 => Coding::Baseline,
        0xC1 => Coding::ExtendedSequential,
        0xC2 | 0xC6 => Coding::Progressive,
        0xC3 | 0xC7 => Coding::Lossless,
        0xC5 => Coding::Hierarchical,
        _ => Coding::Arithmetic,
    };
    if body.len() < 6 {
        return Err(HeaderError::Malformed("short frame header"));
    }
    let precision = body[0];
    let height = u32::from(be16(body, 1)?);
    let width = u32::from(be16(body, 3)?);
    let n = usize::from(body[5]);
    if width == 0 || n == 0 {
        return Err(HeaderError::Malformed("zero width or no components"));
    }
    let comps = body.get(6..6 + 3 * n).ok_or(HeaderError::Malformed(
        "frame header shorter than its components",
    ))?;
    let sampling: Vec<(u8, u8)> = comps
        .chunks_exact(3)
        .map(|c| (c[1] >> 4, c[1] & 0xF))
        .collect();
    if sampling
        .iter()
        .any(|&(h, v)| !(1..=4).contains(&h) || !(1..=4).contains(&v))
    {
        return Err(HeaderError::Malformed("sampling factor outside 1..=4"));
    }
    Ok(JpegHeader {
        width,
        height,
        precision,
        coding,
        sampling,
        adobe_transform: None,
    })
}

#[cfg(test)]
pub(crate) mod tests;
