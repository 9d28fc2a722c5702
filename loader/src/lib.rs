//! loaderd.
