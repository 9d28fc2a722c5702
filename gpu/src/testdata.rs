//! Deterministic test inputs shared by the unit and GPU tests (no `rand` needed).

/// `n` bytes of xorshift noise from `seed`.
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}
