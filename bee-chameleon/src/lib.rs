//! Chameleon Cloud backend for bee (paper section V).
//!
//! This crate will provision bare-metal nodes through OpenStack and run Docker on them
//! directly, or the VM layer on top.
//!
//! # Limitations
//!
//! Nothing is implemented yet; the `chameleon` backend name is refused at validation.
