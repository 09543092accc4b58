//! One multicast group per cluster (paper Fig. 2).

use std::net::{Ipv4Addr, SocketAddr};

use bee_core::config::NetworkMode;
use bee_core::error::CoreError;
use bee_core::traits::{Network, NetworkRequest, Nic, NodeNetwork};

use crate::plan;

/// Every node's data NIC joins one QEMU socket multicast group: a hub that shows every
/// frame to every node, so no node forwards for another and a stopped node cuts off no
/// one. Good for all-to-all traffic; one-to-one traffic costs every node a copy.
///
/// The group is `239.x.y.z` (administratively scoped), with `x.y.z` taken from a hash of
/// the cluster name, on the first port of the request. Each node has one data NIC, so no
/// node needs a bridge.
///
/// # Limitations
///
/// The backend joins the group on 127.0.0.1, which needs no multicast route on the host
/// but keeps the cluster on one host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Multicast;

impl Network for Multicast {
    fn mode(&self) -> NetworkMode {
        NetworkMode::Multicast
    }

    fn ports_needed(&self, nodes: u32) -> usize {
        usize::from(nodes > 1)
    }

    fn plan(&self, request: &NetworkRequest<'_>) -> Result<Vec<NodeNetwork>, CoreError> {
        plan::plan(self.mode(), self.ports_needed(request.nodes), request, || {
            if request.nodes == 1 {
                return vec![Vec::new()];
            }
            let group = SocketAddr::new(group_address(request.cluster).into(), request.ports[0]);
            (0..request.nodes)
                .map(|node| {
                    vec![Nic::Multicast { group, mac: plan::mac(request.cluster, node, 0) }]
                })
                .collect()
        })
    }
}

/// `239.x.y.z` from bytes of the cluster hash that the MAC addresses do not use.
fn group_address(cluster: &str) -> Ipv4Addr {
    let hash = plan::cluster_hash(cluster);
    Ipv4Addr::new(239, hash[5], hash[6], hash[7])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_is_administratively_scoped_and_stable() {
        let group = group_address("ring");
        assert_eq!(group.octets()[0], 239);
        assert!(group.is_multicast());
        assert_eq!(group, group_address("ring"));
        assert_ne!(group, group_address("ring2"));
    }
}
