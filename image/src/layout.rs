//! What one output sample looks like in memory: element type, plane order, normalization.

/// ImageNet channel means (RGB, on the 0..1 scale).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Memory layout and element type of one output sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Height × width × RGB, u8, not normalized.
    NhwcU8,
    /// RGB planes of height × width, f32, normalized.
    NchwF32,
    /// RGB planes of height × width, IEEE half, normalized.
    NchwF16,
}

/// Element type of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// Unsigned byte.
    U8,
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
}

impl Layout {
    /// The element type.
    pub fn dtype(self) -> DType {
        match self {
            Layout::NhwcU8 => DType::U8,
            Layout::NchwF32 => DType::F32,
            Layout::NchwF16 => DType::F16,
        }
    }

    /// Bytes of one element.
    pub fn element_bytes(self) -> usize {
        match self.dtype() {
            DType::U8 => 1,
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// Bytes of one `w × h` RGB sample.
    pub fn sample_bytes(self, w: u32, h: u32) -> usize {
        w as usize * h as usize * 3 * self.element_bytes()
    }

    /// The shape of one square sample of side `size`: `[h, w, 3]` or `[3, h, w]`.
    pub fn sample_shape(self, size: u32) -> [u32; 3] {
        match self {
            Layout::NhwcU8 => [size, size, 3],
            Layout::NchwF32 | Layout::NchwF16 => [3, size, size],
        }
    }

    /// Whether samples are normalized (`(v/255 − mean)/std`) rather than raw bytes.
    pub fn is_normalized(self) -> bool {
        self != Layout::NhwcU8
    }
}

/// Per-channel mean and std on the 0..1 scale: a normalized element is `(v/255 − mean)/std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// RGB means.
    pub mean: [f32; 3],
    /// RGB standard deviations (nonzero).
    pub std: [f32; 3],
}

impl Default for Normalize {
    /// ImageNet's.
    fn default() -> Self {
        Normalize {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl Normalize {
    /// Every std is a normal float (nonzero, finite, not subnormal), so dividing by it is safe.
    pub fn is_valid(&self) -> bool {
        self.std.iter().all(|s| s.is_normal())
    }

    /// Channel `c` of byte value `v`, normalized.
    pub fn apply(&self, c: usize, v: u8) -> f32 {
        (f32::from(v) / 255.0 - self.mean[c]) / self.std[c]
    }
}

/// IEEE 754 binary32 → binary16 bits, rounding to nearest, ties to even (as `cvt.rn.f16.f32`
/// does on the GPU; the CPU path's f16 output uses this same function).
pub fn f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 {
            0x200 | (man >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: shift the full 24-bit significand down.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut h = m >> shift;
        if rem > half || (rem == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    // A carry out of the significand bumps the exponent, up to infinity: still correct.
    if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_shapes_and_types() {
        assert_eq!(Layout::NhwcU8.sample_bytes(224, 224), 224 * 224 * 3);
        assert_eq!(Layout::NchwF32.sample_bytes(4, 2), 96);
        assert_eq!(Layout::NchwF16.sample_bytes(4, 2), 48);
        assert_eq!(Layout::NhwcU8.sample_shape(8), [8, 8, 3]);
        assert_eq!(Layout::NchwF16.sample_shape(8), [3, 8, 8]);
        assert_eq!(Layout::NchwF32.dtype(), DType::F32);
        assert!(!Layout::NhwcU8.is_normalized() && Layout::NchwF16.is_normalized());
    }

    #[test]
    fn normalization_is_the_torchvision_formula() {
        let n = Normalize::default();
        assert!(n.is_valid());
        assert_eq!(n.apply(1, 255), (1.0 - 0.456) / 0.224);
        let bad = Normalize {
            std: [1.0, 0.0, 1.0],
            ..n
        };
        assert!(!bad.is_valid());
        assert!(
            !Normalize {
                std: [f32::NAN; 3],
                ..n
            }
            .is_valid()
        );
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        let cases: [(f32, u16); 15] = [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65519.0, 0x7bff),
            (65520.0, 0x7c00),
            (f32::INFINITY, 0x7c00),
            (2f32.powi(-14), 0x0400),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000),
            (1.5 * 2f32.powi(-25), 0x0001),
            (1.0 + 2f32.powi(-11), 0x3c00),
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02),
            (1.0 / 3.0, 0x3555),
        ];
        for (x, h) in cases {
            assert_eq!(f16_bits(x), h, "{x}");
        }
        assert_eq!(f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f16_bits(f32::NAN) & 0x3ff, 0);
        // Every finite half survives the round trip.
        for h in 0..=u16::MAX {
            if h & 0x7c00 != 0x7c00 {
                assert_eq!(f16_bits(f16_to_f32(h)), h, "{h:#06x}");
            }
        }
    }

    fn f16_to_f32(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((h >> 10) & 0x1f);
        let m = f32::from(h & 0x3ff);
        sign * match e {
            0 => m * 2f32.powi(-24),
            31 if m == 0.0 => f32::INFINITY,
            31 => f32::NAN,
            _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
        }
    }
}
