//! What every topology shares: checking the request, node addresses, MAC addresses and
//! the guest steps that turn a node's data NICs into one interface with its address.
//!
//! A topology only decides which NICs each node gets ([`plan`] takes them as a closure);
//! everything else is decided here, the same way for all of them.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use bee_core::config::NetworkMode;
use bee_core::error::CoreError;
use bee_core::traits::{GuestStep, NetworkRequest, Nic, NodeNetwork};

use crate::{BRIDGE, MAX_NODES, MTU};

/// Checks `request`, lets `nics` pick the data NICs of every node (in node order), and
/// completes the plan with addresses and guest steps. `ports_needed` is what the topology
/// said it needs for `request.nodes`.
pub(crate) fn plan(
    mode: NetworkMode,
    ports_needed: usize,
    request: &NetworkRequest<'_>,
    nics: impl FnOnce() -> Vec<Vec<Nic>>,
) -> Result<Vec<NodeNetwork>, CoreError> {
    check(mode, ports_needed, request)?;
    let addresses = addresses(mode, request)?;

    let nics = nics();
    debug_assert_eq!(nics.len(), addresses.len());
    let prefix = request.spec.prefix;
    Ok(addresses
        .into_iter()
        .zip(nics)
        .map(|(address, nics)| {
            let guest_steps = guest_steps(address, prefix, &nics);
            NodeNetwork { address, nics, guest_steps }
        })
        .collect())
}

/// An error in the terms of the network `mode`.
fn error(mode: NetworkMode, detail: String) -> CoreError {
    CoreError::Backend { backend: mode.name(), detail }
}

/// Checks what the cluster builder passes in: these are its mistakes, not the user's.
fn check(
    mode: NetworkMode,
    ports_needed: usize,
    request: &NetworkRequest<'_>,
) -> Result<(), CoreError> {
    let nodes = request.nodes;
    if nodes == 0 {
        return Err(error(mode, "a cluster needs at least 1 node".to_string()));
    }
    if nodes > MAX_NODES {
        return Err(error(mode, format!("{nodes} nodes: at most {MAX_NODES} are supported")));
    }
    if request.hosts.len() != nodes as usize {
        let hosts = request.hosts.len();
        return Err(error(mode, format!("{nodes} nodes but {hosts} host addresses")));
    }
    if request.ports.len() < ports_needed {
        let given = request.ports.len();
        return Err(error(
            mode,
            format!("{nodes} nodes need {ports_needed} host ports, {given} given"),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(port) = request.ports[..ports_needed].iter().find(|port| !seen.insert(**port)) {
        return Err(error(mode, format!("host port {port} is given more than once")));
    }
    Ok(())
}

/// Node `i` gets `subnet + i + 1`; the network and broadcast addresses stay unused.
fn addresses(mode: NetworkMode, request: &NetworkRequest<'_>) -> Result<Vec<Ipv4Addr>, CoreError> {
    let (subnet, prefix) = (request.spec.subnet, request.spec.prefix);
    if prefix > 32 {
        return Err(error(mode, format!("subnet {subnet}/{prefix}: the prefix is over 32")));
    }
    let host_bits = 32 - u32::from(prefix);
    let room = (1u64 << host_bits).saturating_sub(2);
    let nodes = request.nodes;
    if u64::from(nodes) > room {
        let fits = 32 - (u64::from(nodes) + 2).next_power_of_two().trailing_zeros();
        return Err(error(
            mode,
            format!(
                "subnet {subnet}/{prefix} has room for {room} nodes, not {nodes}: set \
                 network.subnet to a /{fits} or larger network"
            ),
        ));
    }

    let network = u32::from(subnet) & u32::MAX.checked_shl(host_bits).unwrap_or(0);
    Ok((0..nodes).map(|i| Ipv4Addr::from(network + i + 1)).collect())
}

/// A 64-bit FNV-1a hash of the cluster name. Written out rather than taken from `std`,
/// whose hashers may change between Rust releases: MACs and multicast groups must not.
pub(crate) fn cluster_hash(cluster: &str) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in cluster.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.to_be_bytes()
}

/// The MAC address of data NIC `nic` of node `node`: locally administered unicast.
pub(crate) fn mac(cluster: &str, node: u32, nic: usize) -> [u8; 6] {
    let hash = cluster_hash(cluster);
    // `check` keeps nodes at or below 255, and no node has more NICs than nodes.
    [0x02, hash[0], hash[1], hash[2], node as u8, nic as u8]
}

/// `02:ab:cd:ef:01:00`: lower case, as `ip link` prints it.
pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

/// The MAC address of any kind of data NIC.
pub(crate) fn nic_mac(nic: &Nic) -> [u8; 6] {
    match nic {
        Nic::Multicast { mac, .. } | Nic::Listen { mac, .. } | Nic::Connect { mac, .. } => *mac,
    }
}

/// Commands that bring up `nics` and give the node `address`: on the single NIC, or on a
/// bridge over all of them.
fn guest_steps(address: Ipv4Addr, prefix: u8, nics: &[Nic]) -> Vec<GuestStep> {
    let macs: Vec<String> = nics.iter().map(|nic| format_mac(nic_mac(nic))).collect();
    match macs.as_slice() {
        [] => Vec::new(),
        [mac] => vec![GuestStep {
            what: format!("put {address}/{prefix} on data NIC {mac}"),
            command: format!(
                "{}; ip link set dev \"$dev\" mtu {MTU} up; ip addr replace {address}/{prefix} \
                 dev \"$dev\"",
                find_nic(mac)
            ),
        }],
        macs => {
            let mut steps = vec![GuestStep {
                what: format!("create bridge {BRIDGE}"),
                command: format!(
                    "set -e; ip link show dev {BRIDGE} >/dev/null 2>&1 || ip link add \
                     {BRIDGE} type bridge; ip link set dev {BRIDGE} type bridge stp_state 0 \
                     forward_delay 0; ip link set dev {BRIDGE} mtu {MTU} up"
                ),
            }];
            steps.extend(macs.iter().map(|mac| GuestStep {
                what: format!("add data NIC {mac} to bridge {BRIDGE}"),
                command: format!(
                    "{}; ip link set dev \"$dev\" mtu {MTU} master {BRIDGE} up",
                    find_nic(mac)
                ),
            }));
            steps.push(GuestStep {
                what: format!("put {address}/{prefix} on bridge {BRIDGE}"),
                command: format!("ip addr replace {address}/{prefix} dev {BRIDGE}"),
            });
            steps
        }
    }
}

/// Shell that sets `$dev` to the name of the NIC with `mac`, or fails naming the MAC.
///
/// The guest names NICs eth0.. in PCI order, but nothing here relies on that order. The
/// bridge is skipped because it takes the MAC of one of its ports, which would make a
/// second run find the bridge instead of the NIC. Names such as `eth1@if5` (veth pairs,
/// when the steps are tried in network namespaces) are cut at the `@`.
fn find_nic(mac: &str) -> String {
    format!(
        "set -e; dev=$(ip -o link | awk -v mac={mac} '$2 != \"{BRIDGE}:\" && \
         index(tolower($0), \"link/ether \" mac \" \") \
         {{ split($2, name, /[@:]/); print name[1]; exit }}'); \
         [ -n \"$dev\" ] || {{ echo \"no network interface has MAC {mac}: is the data NIC \
         attached?\" >&2; exit 1; }}"
    )
}
