//! The training pipeline: what a dataset's samples are ([`dataset`]), which of them a rank
//! gets and in what order ([`sampler`]).
//!
//! Decode, augment and the shared-memory batch handoff build on the sampler's order: it is a
//! pure function of (seed, epoch, dataset length), so every node computes the same global
//! order without talking to the others, and the daemon knows every rank's future reads.

pub mod augment;
pub mod dataset;
pub mod decode;
pub mod limits;
pub mod registry;
pub mod ring;
pub mod sampler;
pub mod session;
