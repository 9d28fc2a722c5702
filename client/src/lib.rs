//! The Rust client of a loaderd daemon: its gRPC API ([`grpc`]) and the zero-copy reads over
//! its shared-memory socket ([`shm`]).

pub mod grpc;
pub mod shm;

pub use grpc::{
    BearerToken, Client, ConnectError, connect_tcp, connect_unix, list_all, pinned_read,
};
pub use shm::{DeviceSlot, Piece, ShmClient, ShmError};
