//! Checks of the graph every plan implies, for every mode and cluster size, and of the
//! errors and guest steps a reader sees.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use bee_core::config::{NetworkMode, NetworkSpec, Transport};
use bee_core::traits::{NetworkRequest, Nic, NodeNetwork};

use super::*;
use crate::plan::{format_mac, nic_mac};

const MODES: [NetworkMode; 3] =
    [NetworkMode::Multicast, NetworkMode::P2pStar, NetworkMode::P2pTree];

fn spec(mode: NetworkMode, subnet: [u8; 4], prefix: u8) -> NetworkSpec {
    NetworkSpec { mode, transport: Transport::Stream, subnet: Ipv4Addr::from(subnet), prefix }
}

/// Nodes spread over three hosts, so that a link's host matters.
fn hosts(nodes: u32) -> Vec<Ipv4Addr> {
    (0..nodes).map(|i| Ipv4Addr::new(10, 0, 0, 1 + (i % 3) as u8)).collect()
}

/// More ports than needed, not in a simple sequence.
fn ports(count: usize) -> Vec<u16> {
    (0..count as u16 + 2).map(|i| 40000 + (i * 37) % 1000).collect()
}

fn plan_for(mode: NetworkMode, nodes: u32) -> (Vec<NodeNetwork>, Vec<u16>, usize) {
    let network = for_mode(mode);
    let needed = network.ports_needed(nodes);
    let (spec, hosts, ports) = (spec(mode, [192, 168, 100, 0], 24), hosts(nodes), ports(needed));
    let request =
        NetworkRequest { spec: &spec, cluster: "ring", nodes, hosts: &hosts, ports: &ports };
    let plan = network.plan(&request).unwrap_or_else(|e| panic!("{mode} with {nodes}: {e}"));
    (plan, ports, needed)
}

/// The port and address a NIC uses on the host.
fn host_addr(nic: &Nic) -> SocketAddr {
    match nic {
        Nic::Multicast { group, .. } => *group,
        Nic::Listen { addr, .. } | Nic::Connect { addr, .. } => *addr,
    }
}

/// True when the guest steps join every NIC of the node in the bridge.
fn bridged(node: &NodeNetwork) -> bool {
    let creates = node.guest_steps.iter().any(|step| step.what == "create bridge bee0");
    let joins = node.nics.iter().all(|nic| {
        let mac = format_mac(nic_mac(nic));
        node.guest_steps.iter().any(|step| {
            step.command.contains(&format!("awk -v mac={mac} "))
                && step.command.contains("master bee0 up")
        })
    });
    creates && joins
}

/// The links between nodes: a pair per point-to-point link, every pair of a multicast
/// group. Checks that every link has exactly one listening and one connecting end.
fn links(plan: &[NodeNetwork], hosts: &[Ipv4Addr]) -> Vec<(usize, usize)> {
    let mut listeners: HashMap<SocketAddr, usize> = HashMap::new();
    let mut groups: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (node, network) in plan.iter().enumerate() {
        for nic in &network.nics {
            match nic {
                Nic::Listen { addr, .. } => {
                    assert_eq!(addr.ip(), std::net::IpAddr::from(hosts[node]), "node {node}");
                    assert!(listeners.insert(*addr, node).is_none(), "{addr} listened twice");
                }
                Nic::Multicast { group, .. } => groups.entry(*group).or_default().push(node),
                Nic::Connect { .. } => {}
            }
        }
    }

    let mut links = Vec::new();
    let mut connected = HashSet::new();
    for (node, network) in plan.iter().enumerate() {
        for nic in &network.nics {
            if let Nic::Connect { addr, .. } = nic {
                let listener = *listeners.get(addr).unwrap_or_else(|| panic!("no listener {addr}"));
                assert!(connected.insert(*addr), "{addr} connected to twice");
                assert!(listener < node, "node {node} connects to later node {listener}");
                links.push((listener, node));
            }
        }
    }
    assert_eq!(connected.len(), listeners.len(), "a listener nobody connects to");
    for members in groups.values() {
        for (i, a) in members.iter().enumerate() {
            links.extend(members[i + 1..].iter().map(|b| (*a, *b)));
        }
    }
    links
}

/// Hops from `from` to every node; frames cross a node only where `forwards` says so.
fn hops(forwards: &[bool], links: &[(usize, usize)], from: usize) -> Vec<Option<usize>> {
    let mut neighbours = vec![Vec::new(); forwards.len()];
    for (a, b) in links {
        neighbours[*a].push(*b);
        neighbours[*b].push(*a);
    }
    let mut hops = vec![None; forwards.len()];
    hops[from] = Some(0);
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        if node != from && !forwards[node] {
            continue;
        }
        for next in &neighbours[node] {
            if hops[*next].is_none() {
                hops[*next] = Some(hops[node].unwrap_or(0) + 1);
                queue.push_back(*next);
            }
        }
    }
    hops
}

fn ceil_log2(n: u32) -> usize {
    (u32::BITS - n.saturating_sub(1).leading_zeros()) as usize
}

#[test]
fn every_plan_is_one_loop_free_subnet() {
    for mode in MODES {
        for nodes in 1..=64u32 {
            let (plan, ports, needed) = plan_for(mode, nodes);
            let n = nodes as usize;
            let context = format!("{mode} with {nodes} nodes");
            assert_eq!(plan.len(), n, "{context}");

            let addresses: Vec<Ipv4Addr> = plan.iter().map(|node| node.address).collect();
            let expected: Vec<Ipv4Addr> =
                (1..=nodes).map(|i| Ipv4Addr::new(192, 168, 100, i as u8)).collect();
            assert_eq!(addresses, expected, "{context}");

            let macs: Vec<[u8; 6]> = plan.iter().flat_map(|node| &node.nics).map(nic_mac).collect();
            assert_eq!(macs.iter().collect::<HashSet<_>>().len(), macs.len(), "{context}");
            assert!(macs.iter().all(|mac| mac[0] == 0x02), "{context}");

            let used: HashSet<u16> =
                plan.iter().flat_map(|node| &node.nics).map(|nic| host_addr(nic).port()).collect();
            let given: HashSet<u16> = ports[..needed].iter().copied().collect();
            assert_eq!(used, given, "{context}");
            assert_eq!(used.len(), needed, "{context}");

            let links = links(&plan, &hosts(nodes));
            if mode != NetworkMode::Multicast {
                assert_eq!(links.len(), n - 1, "{context}");
            }

            for node in &plan {
                let has_bridge = node.guest_steps.iter().any(|step| {
                    ["type bridge", "master bee0", "dev bee0"]
                        .iter()
                        .any(|s| step.command.contains(s))
                });
                assert_eq!(has_bridge, node.nics.len() > 1, "{context}, {}", node.address);
                assert_eq!(bridged(node), node.nics.len() > 1, "{context}, {}", node.address);
                assert_eq!(node.guest_steps.is_empty(), node.nics.is_empty(), "{context}");
                if let Some(last) = node.guest_steps.last() {
                    assert!(last.command.contains(&format!("{}/24", node.address)), "{context}");
                }
            }
            if nodes == 1 {
                assert!(plan[0].nics.is_empty(), "{context}");
            }

            let most = match mode {
                NetworkMode::Multicast => 1,
                NetworkMode::P2pStar => 2,
                NetworkMode::P2pTree => 2 * ceil_log2(nodes),
            };
            let forwards: Vec<bool> = plan.iter().map(bridged).collect();
            for from in 0..n {
                for (to, hops) in hops(&forwards, &links, from).into_iter().enumerate() {
                    let hops =
                        hops.unwrap_or_else(|| panic!("{context}: {from} cannot reach {to}"));
                    assert!(hops <= most, "{context}: {from} to {to} takes {hops} hops");
                }
            }
        }
    }
}

#[test]
fn star_links_every_worker_to_the_master() {
    let (plan, ports, _) = plan_for(NetworkMode::P2pStar, 5);
    assert_eq!(plan[0].nics.len(), 4);
    for worker in 1..5 {
        let addr = SocketAddr::new(hosts(5)[0].into(), ports[worker - 1]);
        assert_eq!(plan[worker].nics.len(), 1);
        assert!(matches!(plan[worker].nics[0], Nic::Connect { addr: a, .. } if a == addr));
    }
}

#[test]
fn tree_nodes_have_at_most_three_links() {
    let (plan, ports, _) = plan_for(NetworkMode::P2pTree, 64);
    assert!(plan.iter().all(|node| node.nics.len() <= 3));
    // Node 5 hangs below node 2, on node 2's host, through the port of link 5.
    let addr = SocketAddr::new(hosts(64)[2].into(), ports[4]);
    assert!(matches!(plan[5].nics[0], Nic::Connect { addr: a, .. } if a == addr));
}

#[test]
fn multicast_puts_every_node_in_one_group() {
    let (plan, ports, _) = plan_for(NetworkMode::Multicast, 4);
    let groups: HashSet<SocketAddr> =
        plan.iter().flat_map(|node| &node.nics).map(host_addr).collect();
    assert_eq!(groups.len(), 1);
    let group = groups.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!(group.port(), ports[0]);
    assert!(plan.iter().all(|node| node.nics.len() == 1));
}

#[test]
fn ports_needed() {
    let needed = |mode, nodes| for_mode(mode).ports_needed(nodes);
    assert_eq!(needed(NetworkMode::Multicast, 1), 0);
    assert_eq!(needed(NetworkMode::Multicast, 40), 1);
    assert_eq!(needed(NetworkMode::P2pStar, 1), 0);
    assert_eq!(needed(NetworkMode::P2pStar, 40), 39);
    assert_eq!(needed(NetworkMode::P2pTree, 0), 0);
    assert_eq!(needed(NetworkMode::P2pTree, 40), 39);
}

#[test]
fn for_mode_picks_the_mode() {
    for mode in MODES {
        assert_eq!(for_mode(mode).mode(), mode);
    }
}

/// The error text of planning `nodes` nodes of `mode` in `subnet/prefix`.
fn error(
    mode: NetworkMode,
    (subnet, prefix): ([u8; 4], u8),
    nodes: u32,
    hosts: &[Ipv4Addr],
    ports: &[u16],
) -> String {
    let spec = spec(mode, subnet, prefix);
    let request = NetworkRequest { spec: &spec, cluster: "ring", nodes, hosts, ports };
    match for_mode(mode).plan(&request) {
        Ok(_) => panic!("{mode} with {nodes} nodes in /{prefix} was planned"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn subnet_too_small() {
    let ports = ports(8);
    assert_eq!(
        error(NetworkMode::P2pTree, ([192, 168, 100, 0], 29), 7, &hosts(7), &ports),
        "p2p-tree: subnet 192.168.100.0/29 has room for 6 nodes, not 7: set network.subnet \
         to a /28 or larger network"
    );
    assert_eq!(
        error(NetworkMode::Multicast, ([10, 9, 0, 0], 26), 63, &hosts(63), &ports),
        "multicast: subnet 10.9.0.0/26 has room for 62 nodes, not 63: set network.subnet \
         to a /25 or larger network"
    );
}

#[test]
fn subnet_just_large_enough() {
    let spec = spec(NetworkMode::P2pStar, [192, 168, 100, 0], 29);
    let (hosts, ports) = (hosts(6), ports(5));
    let request =
        NetworkRequest { spec: &spec, cluster: "ring", nodes: 6, hosts: &hosts, ports: &ports };
    let plan = P2pStar.plan(&request).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan[5].address, Ipv4Addr::new(192, 168, 100, 6));
}

#[test]
fn requests_the_builder_got_wrong() {
    let subnet = ([192, 168, 100, 0], 24);
    let star = NetworkMode::P2pStar;
    assert_eq!(error(star, subnet, 0, &[], &[]), "p2p-star: a cluster needs at least 1 node");
    assert_eq!(
        error(star, subnet, 256, &hosts(256), &ports(255)),
        "p2p-star: 256 nodes: at most 255 are supported"
    );
    assert_eq!(
        error(star, subnet, 3, &hosts(2), &ports(2)),
        "p2p-star: 3 nodes but 2 host addresses"
    );
    assert_eq!(
        error(star, subnet, 3, &hosts(3), &[40000]),
        "p2p-star: 3 nodes need 2 host ports, 1 given"
    );
    assert_eq!(
        error(star, subnet, 3, &hosts(3), &[40000, 40000]),
        "p2p-star: host port 40000 is given more than once"
    );
}

#[test]
fn macs_depend_on_the_cluster() {
    let spec = spec(NetworkMode::P2pTree, [192, 168, 100, 0], 24);
    let (hosts, ports) = (hosts(3), ports(2));
    let macs = |cluster| {
        let request =
            NetworkRequest { spec: &spec, cluster, nodes: 3, hosts: &hosts, ports: &ports };
        let plan = P2pTree.plan(&request).unwrap_or_else(|e| panic!("{e}"));
        plan.iter().flat_map(|node| &node.nics).map(nic_mac).collect::<Vec<_>>()
    };
    assert_ne!(macs("ring"), macs("ring2"));
    assert_eq!(macs("ring"), macs("ring"));
}

/// Renders the guest steps of a 3-node tree on one host for a human to read (run with
/// `--nocapture`), and pins the exact commands.
#[test]
fn guest_steps_of_a_three_node_tree() {
    let spec = spec(NetworkMode::P2pTree, [192, 168, 100, 0], 24);
    let hosts = [Ipv4Addr::LOCALHOST; 3];
    let ports = [40001, 40002];
    let request =
        NetworkRequest { spec: &spec, cluster: "ring", nodes: 3, hosts: &hosts, ports: &ports };
    let plan = P2pTree.plan(&request).unwrap_or_else(|e| panic!("{e}"));
    for (i, node) in plan.iter().enumerate() {
        println!("node {i}: {}", node.address);
        for nic in &node.nics {
            println!("  nic {nic:?}");
        }
        for step in &node.guest_steps {
            println!("  # {}\n  {}", step.what, step.command);
        }
    }

    let listen = |port, mac| Nic::Listen { addr: SocketAddr::from(([127, 0, 0, 1], port)), mac };
    let connect = |port, mac| Nic::Connect { addr: SocketAddr::from(([127, 0, 0, 1], port)), mac };
    let mac = |node, nic| [0x02, 0xb2, 0x5c, 0x4c, node, nic];
    assert_eq!(plan[0].nics, [listen(40001, mac(0, 0)), listen(40002, mac(0, 1))]);
    assert_eq!(plan[1].nics, [connect(40001, mac(1, 0))]);
    assert_eq!(plan[2].nics, [connect(40002, mac(2, 0))]);

    let whats: Vec<Vec<&str>> = plan
        .iter()
        .map(|node| node.guest_steps.iter().map(|step| step.what.as_str()).collect())
        .collect();
    assert_eq!(
        whats,
        [
            vec![
                "create bridge bee0",
                "add data NIC 02:b2:5c:4c:00:00 to bridge bee0",
                "add data NIC 02:b2:5c:4c:00:01 to bridge bee0",
                "put 192.168.100.1/24 on bridge bee0",
            ],
            vec!["put 192.168.100.2/24 on data NIC 02:b2:5c:4c:01:00"],
            vec!["put 192.168.100.3/24 on data NIC 02:b2:5c:4c:02:00"],
        ]
    );

    let find = |mac: &str| {
        format!(
            "set -e; dev=$(ip -o link | awk -v mac={mac} '$2 != \"bee0:\" && index(tolower($0), \
             \"link/ether \" mac \" \") {{ split($2, name, /[@:]/); print name[1]; exit }}'); \
             [ -n \"$dev\" ] || {{ echo \"no network interface has MAC {mac}: is the data NIC \
             attached?\" >&2; exit 1; }}; "
        )
    };
    let commands: Vec<&str> =
        plan[0].guest_steps.iter().map(|step| step.command.as_str()).collect();
    assert_eq!(
        commands,
        [
            "set -e; ip link show dev bee0 >/dev/null 2>&1 || ip link add bee0 type bridge; \
             ip link set dev bee0 type bridge stp_state 0 forward_delay 0; \
             ip link set dev bee0 mtu 1500 up",
            &format!(
                "{}ip link set dev \"$dev\" mtu 1500 master bee0 up",
                find("02:b2:5c:4c:00:00")
            ),
            &format!(
                "{}ip link set dev \"$dev\" mtu 1500 master bee0 up",
                find("02:b2:5c:4c:00:01")
            ),
            "ip addr replace 192.168.100.1/24 dev bee0",
        ]
    );
    assert_eq!(
        plan[2].guest_steps[0].command,
        format!(
            "{}ip link set dev \"$dev\" mtu 1500 up; ip addr replace 192.168.100.3/24 dev \"$dev\"",
            find("02:b2:5c:4c:02:00")
        )
    );
}

/// The MAC prefix and multicast group of a cluster stay the same across bee releases.
#[test]
fn cluster_hash_is_pinned() {
    let (plan, ports, _) = plan_for(NetworkMode::Multicast, 2);
    let group = SocketAddr::from(([239, 161, 91, 11], ports[0]));
    let mac = [0x02, 0xb2, 0x5c, 0x4c, 0x01, 0x00];
    assert_eq!(plan[1].nics, [Nic::Multicast { group, mac }]);
}
