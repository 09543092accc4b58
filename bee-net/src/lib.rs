//! Data-plane networks for bee clusters (paper section III-A).
//!
//! Each guest keeps its first NIC for SSH; this crate will wire the second NIC of every
//! node into one L2 subnet for MPI, without root on the host, in one of three ways:
//! a QEMU socket multicast group (`multicast`), point-to-point links to the master
//! (`p2p-star`), or a binary tree rooted at the master (`p2p-tree`).
//!
//! # Limitations
//!
//! Nothing is implemented yet: clusters have one node and no data-plane network. The
//! configuration accepts the mode names so that files stay valid, and `bee up` refuses a
//! cluster of more than one node with an error that says so.
