//! Data-plane networks for bee clusters (paper section III-A).
//!
//! Each guest keeps its first NIC for SSH. This crate plans how the other NICs of all
//! nodes become one L2 subnet for MPI, without root on the host: which QEMU NICs each node
//! gets, and which commands inside the guest join them into one interface with the node's
//! address. It only plans; the backend attaches the NICs and the cluster builder runs the
//! guest steps. Three topologies implement [`bee_core::traits::Network`]:
//!
//! - [`Multicast`] (paper Fig. 2): one QEMU socket multicast group per cluster, a hub that
//!   shows every frame to every node. One NIC per node, one host port per cluster.
//! - [`P2pStar`] (paper Fig. 3): one point-to-point link from every node to the master,
//!   which bridges them all. Any two nodes are at most 2 hops apart; all traffic between
//!   workers goes through the master.
//! - [`P2pTree`]: a binary tree of point-to-point links rooted at the master; node `i`
//!   hangs below node `(i - 1) / 2`, and every node with more than one link bridges them.
//!   No node has more than 3 data NICs, and any two nodes are at most `2 * log2(n)` hops
//!   apart.
//!
//! [`for_mode`] picks the implementation of a configured [`NetworkMode`].
//!
//! # What every plan has in common
//!
//! - Node `i` gets address `subnet + i + 1` (the master gets `192.168.100.1` in the
//!   default `192.168.100.0/24`); a subnet too small for the cluster is an error that says
//!   which prefix would do.
//! - MAC addresses are locally administered unicast, `02:hh:hh:hh:NN:KK`: three bytes of a
//!   hash of the cluster name, the node index `NN` and the index `KK` of the NIC among the
//!   node's data NICs. They differ from bee-vm's SSH NICs (`52:54:...`).
//! - Point-to-point links use `request.ports` in order, one per link, and the listening
//!   end listens on the address of its own host (`request.hosts`). A node on another host
//!   is nothing special: its peers connect to that host's address.
//! - How a link is carried (`network.transport`: QEMU `stream` or `socket`) is the
//!   backend's choice; the plan is the same for both.
//! - Every link's listening end is on the lower-numbered node, so starting the nodes in
//!   index order starts every listener before the NIC that connects to it.
//! - Guest steps find each data NIC by its MAC, never by its name, bring it up with an MTU
//!   of [`MTU`], join a node's NICs in the bridge [`BRIDGE`] when it has more than one, and
//!   put the address on the bridge or on the single NIC. They can be run again. A cluster
//!   of one node has no data NIC and no guest steps; its address is planned but not
//!   configured anywhere.
//!
//! # Limitations
//!
//! - No spanning tree: the bridges run with STP off, which is safe only because every
//!   topology here is loop-free by construction.
//! - No fault tolerance in the point-to-point topologies: when a node that bridges links
//!   stops, the nodes behind it are cut off (the master in a star: everything).
//! - The multicast group is joined on 127.0.0.1 by the backend, so a multicast cluster
//!   only spans one host; nodes on several hosts need a point-to-point topology.
//! - One IPv4 subnet, no gateway, no IPv6 addresses, no DHCP.
//! - Bridged frames pass through the guest's iptables when the `br_netfilter` module is
//!   loaded there; a dockerd with `iptables` enabled loads it and drops forwarded traffic.
//!   bee's guests run dockerd with `iptables` off.
//! - A star's master has one NIC per worker; QEMU's q35 root bus has about 30 PCI slots,
//!   so large stars need a backend that puts NICs behind PCI bridges.
//! - At most [`MAX_NODES`] nodes, because a MAC keeps one byte for the node index.

use bee_core::config::NetworkMode;
use bee_core::traits::Network;

mod multicast;
mod p2p;
mod plan;

pub use multicast::Multicast;
pub use p2p::{P2pStar, P2pTree};

/// The bridge that joins the data NICs of a node with more than one.
pub const BRIDGE: &str = "bee0";

/// MTU of every data NIC and bridge.
pub const MTU: u16 = 1500;

/// Most nodes a plan can have: a MAC address keeps one byte for the node index.
pub const MAX_NODES: u32 = 255;

/// The network that implements `mode`.
pub fn for_mode(mode: NetworkMode) -> Box<dyn Network> {
    match mode {
        NetworkMode::Multicast => Box::new(Multicast),
        NetworkMode::P2pStar => Box::new(P2pStar),
        NetworkMode::P2pTree => Box::new(P2pTree),
    }
}

#[cfg(test)]
mod tests;
