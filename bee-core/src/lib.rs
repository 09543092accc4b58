//! The core of bee: configuration, the `Backend`, `Network` and `Storage` traits, the one
//! cluster builder that composes them, node access over SSH, the Docker layer and the
//! on-disk records that let a fresh process find and tear down what an earlier one
//! started.
//!
//! This crate depends on no implementation: QEMU, the data-plane networks and the shared
//! storages live in their own crates and plug in through the traits of [`traits`].
//!
//! # Logging policy
//!
//! Diagnostics go through `tracing` with structured fields (`node`, `pid`, `port`):
//! `error` means what the user asked for failed; `warn` means degraded but going on (such
//! as falling back to TCG, or a teardown step that failed); `info` marks lifecycle steps;
//! `debug` shows commands and wire detail. What the user reads as results goes through
//! [`events::Events`] and the application's own output, never through `tracing`.

pub mod build_context;
pub mod cluster;
pub mod config;
pub mod docker;
pub mod error;
pub mod events;
pub mod files;
pub mod mpi;
pub mod orchestrator;
pub mod paths;
pub mod record;
pub mod runs;
pub mod ssh;
pub mod traits;
pub mod tree;

pub use cluster::{Cluster, ClusterBuilder};
pub use config::Config;
pub use error::CoreError;
