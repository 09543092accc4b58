//! Shared storage for bee clusters (paper section III-B).
//!
//! This crate will provide the two designs of the paper: a host directory shared into
//! every guest over virtio-9p, and an extra data image attached to the master and
//! exported over NFS to the workers. Both keep data apart from the guest's OS image so
//! that it can migrate.
//!
//! # Limitations
//!
//! Nothing is implemented yet: `[storage]` sections are refused at validation with an
//! error that says shared storage is not supported yet.
