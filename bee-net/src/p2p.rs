//! Point-to-point socket links (paper Fig. 3): a star around the master, or a binary tree
//! rooted at it.
//!
//! Both are trees: every node but the master has one uplink to its parent, and a node
//! with more than one link bridges them. They differ only in who the parent is.

use std::net::SocketAddr;

use bee_core::config::NetworkMode;
use bee_core::error::CoreError;
use bee_core::traits::{Network, NetworkRequest, Nic, NodeNetwork};

use crate::plan;

/// One link from every worker to the master, which bridges them all.
///
/// Any two nodes are at most 2 hops apart, but all traffic between workers, and all of
/// theirs with the master, goes through the master: it is the hot spot the paper warns
/// of. Worker `i` connects to port `ports[i - 1]` on the master's host.
///
/// # Limitations
///
/// The master has one data NIC per worker. QEMU's q35 root bus has about 30 free PCI
/// slots, so a star of more than about 25 nodes needs a backend that puts NICs behind PCI
/// bridges; [`P2pTree`] needs at most 3 data NICs per node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct P2pStar;

impl Network for P2pStar {
    fn mode(&self) -> NetworkMode {
        NetworkMode::P2pStar
    }

    fn ports_needed(&self, nodes: u32) -> usize {
        links_needed(nodes)
    }

    fn plan(&self, request: &NetworkRequest<'_>) -> Result<Vec<NodeNetwork>, CoreError> {
        plan::plan(self.mode(), self.ports_needed(request.nodes), request, || links(request, |_| 0))
    }
}

/// A binary tree of links rooted at the master: node `i` hangs below node `(i - 1) / 2`.
///
/// No node has more than 3 links (one up, two down), so the forwarding load spreads over
/// the inner nodes, at the price of longer paths: up to `2 * floor(log2(n))` hops between
/// two leaves. Node `i` connects to port `ports[i - 1]` on its parent's host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct P2pTree;

impl Network for P2pTree {
    fn mode(&self) -> NetworkMode {
        NetworkMode::P2pTree
    }

    fn ports_needed(&self, nodes: u32) -> usize {
        links_needed(nodes)
    }

    fn plan(&self, request: &NetworkRequest<'_>) -> Result<Vec<NodeNetwork>, CoreError> {
        plan::plan(self.mode(), self.ports_needed(request.nodes), request, || {
            links(request, |node| (node - 1) / 2)
        })
    }
}

/// A tree of `nodes` nodes has one link, and so one port, per node but the master.
fn links_needed(nodes: u32) -> usize {
    nodes.saturating_sub(1) as usize
}

/// The NICs of a tree in which node `i > 0` hangs below `parent(i) < i`.
///
/// The link of node `i` to its parent uses port `ports[i - 1]`; the parent listens on it,
/// on its own host. A node's uplink is its first NIC, then come the links to its children
/// in node order. Since a parent has a lower index than its children, nodes started in
/// index order start every listener before its peer connects.
fn links(request: &NetworkRequest<'_>, parent: impl Fn(u32) -> u32) -> Vec<Vec<Nic>> {
    let link_addr = |child: u32| {
        let host = request.hosts[parent(child) as usize];
        SocketAddr::new(host.into(), request.ports[child as usize - 1])
    };

    (0..request.nodes)
        .map(|node| {
            let mut nics = Vec::new();
            if node > 0 {
                let mac = plan::mac(request.cluster, node, nics.len());
                nics.push(Nic::Connect { addr: link_addr(node), mac });
            }
            for child in (node + 1..request.nodes).filter(|child| parent(*child) == node) {
                let mac = plan::mac(request.cluster, node, nics.len());
                nics.push(Nic::Listen { addr: link_addr(child), mac });
            }
            nics
        })
        .collect()
}
