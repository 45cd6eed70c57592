//! pailfs: mount an S3-compatible bucket, or an internal path inside it, as a local folder.
//!
//! Layers, top to bottom: `cli`/`config` (input → one `MountConfig`), `daemon` (mount
//! lifecycle), `fuse` (kernel adapter), `fs` (filesystem semantics, no FUSE types), `store`
//! (the `ObjectStore` trait and its S3 / in-memory implementations).

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod kernel_mount;
pub mod notify;
pub mod startup;
pub mod status;
pub mod store;
