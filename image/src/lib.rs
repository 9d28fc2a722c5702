//! The vocabulary the CPU pipeline (`loaderd-pipeline`) and the GPU path (`loaderd-gpu`) share:
//! where a sample's crop lies in its image and what one output sample looks like in memory.
//!
//! - [`geometry`]: [`Rect`], an integer pixel rectangle (what a decoder decodes), and
//!   [`CropBox`], a crop in continuous source coordinates (what the resize samples);
//! - [`layout`]: [`Layout`] and its [`DType`], [`Normalize`] (ImageNet's by default), and
//!   [`f16_bits`], the one f32 → f16 conversion both paths round with;
//! - [`compare`]: [`psnr`], how both paths' tests measure a lossy result against a reference.
//!
//! Plain data and arithmetic, no dependencies and no unsafe code: the GPU crate stays below the
//! pipeline, and neither has to translate the other's copy of these types.
#![warn(missing_docs)]

pub mod compare;
pub mod geometry;
pub mod layout;

pub use compare::psnr;
pub use geometry::{CropBox, Rect};
pub use layout::{DType, IMAGENET_MEAN, IMAGENET_STD, Layout, Normalize, f16_bits};
