//! Amazon EC2 and EFS backend for bee (paper section IV).
//!
//! This crate will provision EC2 instances that run Docker and share an EFS file system,
//! through the real EC2 and EFS APIs.
//!
//! # Limitations
//!
//! Nothing is implemented yet; the `aws` backend name is refused at validation.
