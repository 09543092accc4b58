//! Python bindings for bee, to be built with pyo3 as the `bee` module.
//!
//! # Limitations
//!
//! Nothing is exposed to Python yet; use the `bee` command line or the Rust crates.
