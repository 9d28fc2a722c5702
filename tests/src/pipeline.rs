//! The training pipeline as the tests drive it: `loaderctl bench pipeline` runs of a small
//! epoch.

/// `loaderctl bench pipeline` over `/ds` in batches of 4 images of 32x32, then `extra`: an
/// epoch that is quick to decode.
pub fn small_epoch<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "bench",
        "pipeline",
        "--dataset",
        "/ds",
        "--batch-size",
        "4",
        "--size",
        "32",
    ];
    a.extend_from_slice(extra);
    a
}
