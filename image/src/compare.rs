//! How close two decodes or two resizes of the same image are.

/// Peak signal-to-noise ratio of two equally sized 8-bit buffers, in dB (infinite when equal).
///
/// # Panics
/// When the buffers differ in length.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "psnr of buffers of different lengths");
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_buffers_are_infinite_and_an_off_by_one_is_48_db() {
        assert_eq!(psnr(&[7; 12], &[7; 12]), f64::INFINITY);
        let p = psnr(&[10; 12], &[11; 12]);
        assert!((p - 48.13).abs() < 0.01, "{p}");
    }
}
