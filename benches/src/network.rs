//! `bee bench network`: TCP bandwidth, round-trip latency and all-to-all transfer time on
//! each of bee's data-plane networks, against two guests joined by one direct link.
//!
//! For each mode (`multicast`, `p2p-star`, `p2p-tree`) it starts one cluster of four nodes
//! with `bee up` and measures, in every run:
//!
//! - bandwidth: `iperf3 -c` on node 1 against `iperf3 -s` on node 2 for a few seconds,
//!   read from iperf3's JSON (`end.sum_received.bits_per_second`). Nodes 1 and 2 are two
//!   hops apart through the master in the star and the tree, one in the multicast hub;
//! - latency: the average round trip of `ping -i 0.2` from node 1 to node 2;
//! - all-to-all: for the first k = 2, 3, 4 nodes, every node sends the same number of
//!   bytes to every other at once (`iperf3 -n`, one server per sender on each node), timed
//!   from the moment the benchmark tells all nodes to start until the last one reports
//!   that all its transfers finished.
//!
//! The reference, in the same invocation, is a two-node `p2p-star` cluster: two guests
//! joined by one direct `-netdev stream` link, QEMU's fastest point-to-point netdev here,
//! measured node 0 to node 1 the same way (all-to-all with k = 2). The host's loopback
//! (iperf3 and ping on 127.0.0.1) is shown beside it, as what no guest can beat. The
//! report gives each mode's bandwidth and latency as ratios to the reference; the target
//! is at least [`BANDWIDTH_TARGET`] of the reference's bandwidth for the point-to-point
//! modes.
//!
//! # Limitations
//!
//! - The clusters run one after another, not at the same time, so that idle guests do
//!   not take CPU from the measured ones; the reference and the modes are therefore
//!   measured minutes apart, and a host whose load changes in between skews the ratios.
//! - Under TCG every guest's vCPU is a host thread, and iperf3, the bridges of the master
//!   and QEMU's netdevs compete for the host's cores: on a two-core host the figures
//!   measure CPU contention as much as the networks. In the four-node clusters the nodes
//!   that are not measured also use CPU (the master forwards in the star and the tree;
//!   every node sees every frame of the multicast hub).
//! - In a four-node tree, nodes 1 and 2 are both children of the master, so the measured
//!   pair crosses the same two links as in the star; star and tree differ only where
//!   node 3 hangs (below the master or below node 1), which shows in the all-to-all
//!   times and in the load on the master, not in the path measured.
//! - All-to-all starts are told to each node over an SSH session opened beforehand; the
//!   nodes start within a few milliseconds of each other, not at the same instant, and
//!   the time includes one SSH round trip back to the benchmark.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bee_core::config::NetworkMode;
use bee_vm::qemu::Accel;
use serde_json::{json, Value};

use crate::bee::{
    choose_accel, free_port, node_addr, require_host_tool, BeeState, Cluster, Remote, Tools,
    Tracked, COMMAND_DEADLINE,
};
use crate::results::{Better, Comparison, Metric, Results, Series, Target, TargetOn};
use crate::text::{fixed, heading, median_of, progress, secs, step, verdict, Align, Table};
use crate::{Common, Kind};

/// The modes measured, in report order.
const MODES: [NetworkMode; 3] =
    [NetworkMode::Multicast, NetworkMode::P2pStar, NetworkMode::P2pTree];

/// Nodes of each mode's cluster.
const NODES: u32 = 4;

/// The modes `--quick` measures: bee's default.
const QUICK_MODES: [NetworkMode; 1] = [NetworkMode::P2pTree];

/// Nodes of each mode's cluster with `--quick`: the measured pair is still two hops
/// apart, below the master.
const QUICK_NODES: u32 = 3;

/// The measured pair in each mode's cluster: sender, receiver.
const PAIR: (u32, u32) = (1, 2);

/// The reference: a two-node star is one direct link.
const REFERENCE_MODE: NetworkMode = NetworkMode::P2pStar;

/// Nodes of the reference cluster.
const REFERENCE_NODES: u32 = 2;

/// The measured pair of the reference cluster.
const REFERENCE_PAIR: (u32, u32) = (0, 1);

/// QEMU transport of the point-to-point links: bee's default.
const TRANSPORT: &str = "stream";

/// Guest memory, as `[hardware] memory` takes it.
const GUEST_MEMORY: &str = "1GiB";

/// The subject names of the reference and the host's loopback in the results.
const REFERENCE: &str = "reference";
/// See [`REFERENCE`].
const LOOPBACK: &str = "host loopback";

/// Port of the iperf3 server on the receiver of the measured pair.
const PAIR_PORT: u16 = 5201;

/// Port of the all-to-all iperf3 server for sender 0 on each node; sender `i` uses this
/// plus `i`, so that every node runs one server per peer.
const ALL_TO_ALL_PORT: u16 = 5300;

/// Seconds between pings (the least an ordinary user may ask for).
const PING_INTERVAL: f64 = 0.2;

/// Target for the point-to-point modes' bandwidth over the reference's.
const BANDWIDTH_TARGET: f64 = 0.5;

/// How long the data plane may take to answer the first ping after `bee up`, in seconds.
const FIRST_PING_WAIT: u32 = 30;

/// How long each measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    quick: bool,
    /// The modes measured, in report order.
    modes: &'static [NetworkMode],
    /// Nodes of each mode's cluster.
    nodes: u32,
    /// `iperf3 -t` of the bandwidth measurement.
    iperf_secs: u32,
    /// Pings of the latency measurement.
    pings: u32,
    /// MiB each node sends to each other node in the all-to-all exchange.
    all_to_all_mib: u32,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            let (modes, nodes) = (&QUICK_MODES[..], QUICK_NODES);
            Settings { quick, modes, nodes, iperf_secs: 3, pings: 5, all_to_all_mib: 8 }
        } else {
            let (modes, nodes) = (&MODES[..], NODES);
            Settings { quick, modes, nodes, iperf_secs: 10, pings: 20, all_to_all_mib: 32 }
        }
    }
}

/// A cluster to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setup {
    /// The cluster name.
    name: String,
    mode: NetworkMode,
    nodes: u32,
    /// Sender and receiver of the bandwidth and latency measurements.
    pair: (u32, u32),
    /// The all-to-all sizes measured: the first k nodes, for each k.
    all_to_all: Vec<u32>,
}

impl Setup {
    fn reference() -> Setup {
        Setup {
            name: "net-ref".to_owned(),
            mode: REFERENCE_MODE,
            nodes: REFERENCE_NODES,
            pair: REFERENCE_PAIR,
            all_to_all: vec![REFERENCE_NODES],
        }
    }

    fn of_mode(mode: NetworkMode, nodes: u32) -> Setup {
        Setup {
            name: format!("net-{}", mode.name()),
            mode,
            nodes,
            pair: PAIR,
            all_to_all: (2..=nodes).collect(),
        }
    }

    /// Hops between the measured pair.
    fn hops(&self) -> u32 {
        hops(self.mode, self.pair.0, self.pair.1)
    }

    /// The `bee.toml` of the cluster.
    fn config(&self) -> String {
        format!(
            "[cluster]\nname = \"{}\"\nnodes = {}\n\n[hardware]\nmemory = \"{GUEST_MEMORY}\"\n\n\
             [network]\nmode = \"{}\"\ntransport = \"{TRANSPORT}\"\n",
            self.name,
            self.nodes,
            self.mode.name()
        )
    }

    /// The iperf3 server ports of `node`: the pair's, and one per all-to-all peer.
    fn server_ports(&self, node: u32) -> Vec<u16> {
        let largest = self.all_to_all.iter().copied().max().unwrap_or(0);
        let pair = (node == self.pair.1).then_some(PAIR_PORT);
        let peers = all_to_all_flows(largest).into_iter().filter(|f| f.to == node).map(|f| f.port);
        pair.into_iter().chain(peers).collect()
    }
}

/// How many links a frame crosses between nodes `a` and `b` in `mode`, as bee-net lays
/// the topologies out: the multicast hub is one hop between any two nodes; the star and
/// the tree are trees in which node `i > 0` hangs below node 0 or `(i - 1) / 2`.
fn hops(mode: NetworkMode, a: u32, b: u32) -> u32 {
    let parent = |node: u32| match mode {
        NetworkMode::P2pStar => 0,
        _ => (node - 1) / 2,
    };
    let up_to_root = |mut node: u32| {
        let mut path = vec![node];
        while node > 0 {
            node = parent(node);
            path.push(node);
        }
        path
    };
    if a == b {
        return 0;
    }
    if mode == NetworkMode::Multicast {
        return 1;
    }
    let (from_a, from_b) = (up_to_root(a), up_to_root(b));
    let (up, meeting) =
        from_a.iter().enumerate().find(|(_, n)| from_b.contains(n)).expect("both reach node 0");
    let down = from_b.iter().position(|n| n == meeting).expect("found in both");
    (up + down) as u32
}

/// One transfer of the all-to-all exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    from: u32,
    to: u32,
    /// The port of the server on `to` that serves `from` alone.
    port: u16,
}

/// Every transfer among the first `k` nodes: each node to each other one.
fn all_to_all_flows(k: u32) -> Vec<Flow> {
    let port = |from: u32| ALL_TO_ALL_PORT + from as u16;
    (0..k)
        .flat_map(|from| {
            (0..k).filter(move |&to| to != from).map(move |to| Flow { from, to, port: port(from) })
        })
        .collect()
}

/// The shell command that starts iperf3 servers on `ports` and waits until they listen.
fn servers_script(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let list = list.join(" ");
    format!(
        "for p in {list}; do iperf3 -s -D -p $p || exit 1; done; \
         for p in {list}; do n=0; until ss -Hltn \"sport = :$p\" | grep -q .; do \
         n=$((n+1)); [ $n -lt 100 ] || {{ echo \"no iperf3 server on port $p\" >&2; exit 1; }}; \
         sleep 0.1; done; done"
    )
}

/// The shell command of `node` in the all-to-all exchange `flows`: it says `ready`, waits
/// for a line on stdin, starts its transfers at once, and says `done 0` when all of them
/// succeeded (`done 1` otherwise, with the ends of their logs on stderr).
fn sender_script(node: u32, flows: &[Flow], mib: u32) -> String {
    let clients: Vec<String> = flows
        .iter()
        .filter(|flow| flow.from == node)
        .map(|flow| {
            format!(
                "iperf3 -c {} -p {} -n {mib}M </dev/null >/tmp/bee-bench-a2a-{}.log 2>&1 & \
                 pids=\"$pids $!\"; ",
                node_addr(flow.to),
                flow.port,
                flow.to
            )
        })
        .collect();
    format!(
        "echo ready; read go || exit 1; pids=; {}rc=0; for p in $pids; do wait $p || rc=1; done; \
         echo \"done $rc\"; [ $rc = 0 ] || tail -n 5 /tmp/bee-bench-a2a-*.log >&2; exit $rc",
        clients.concat()
    )
}

/// TCP bandwidth in bits per second from `iperf3 -J` output: the receiver's sum.
fn parse_iperf3_bps(output: &str) -> Result<f64> {
    let value: Value = serde_json::from_str(output)
        .with_context(|| format!("iperf3 printed no JSON: {}", output.trim()))?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3's JSON has no end.sum_received.bits_per_second")
}

/// The average round trip in ms from the summary of `ping -q`.
fn parse_ping_avg_ms(output: &str) -> Result<f64> {
    let summary = output
        .lines()
        .find(|line| line.contains("min/avg/max"))
        .with_context(|| format!("ping printed no round-trip times: {}", output.trim()))?;
    let average = summary
        .split_once('=')
        .and_then(|(_, values)| values.trim().split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok());
    average.with_context(|| format!("cannot read the average in ping's `{}`", summary.trim()))
}

/// The `ping` arguments of the latency measurement.
fn ping_args(settings: &Settings, addr: &str) -> String {
    format!("-c {} -i {PING_INTERVAL} -q {addr}", settings.pings)
}

/// What one path gave over the runs.
#[derive(Debug, Default, Clone, PartialEq)]
struct PathSamples {
    bandwidth_mbit_s: Vec<f64>,
    rtt_ms: Vec<f64>,
    /// Seconds of the all-to-all exchange, by number of nodes.
    all_to_all_s: BTreeMap<u32, Vec<f64>>,
}

impl PathSamples {
    fn bandwidth(&self) -> f64 {
        median_of(&self.bandwidth_mbit_s)
    }

    fn rtt(&self) -> f64 {
        median_of(&self.rtt_ms)
    }

    fn all_to_all(&self, k: u32) -> f64 {
        self.all_to_all_s.get(&k).map_or(f64::NAN, |s| median_of(s))
    }
}

/// Fixed and per-run time on a two-core TCG host: one boot of each cluster, then the
/// measurements of each.
pub(crate) fn expected(quick: bool) -> (Duration, Duration) {
    if quick {
        (Duration::from_secs(300), Duration::from_secs(60))
    } else {
        (Duration::from_secs(900), Duration::from_secs(240))
    }
}

/// Runs the network benchmark.
pub(crate) fn run(common: &Common) -> Result<Results> {
    let quick = common.quick;
    require_host_tool("iperf3", "iperf3")?;
    require_host_tool("ping", "iputils-ping")?;
    let tools = Tools::locate(common.bee.clone())?;
    let accel = choose_accel()?;
    let settings = Settings::new(quick);
    let runs = common.runs;

    progress(&format!("host loopback (accelerator for the guests: {})", accel.as_str()));
    let mut loopback = PathSamples::default();
    for run in 1..=runs {
        progress(&format!("host loopback: run {run} of {runs}"));
        let bandwidth = step("tcp bandwidth", || loopback_bandwidth(&settings), mbit_text)?;
        loopback.bandwidth_mbit_s.push(bandwidth);
        loopback.rtt_ms.push(step("round-trip latency", || loopback_rtt(&settings), ms_text)?);
    }

    let reference = measure(&tools, accel, &settings, runs, &Setup::reference())?;
    let mut modes = Vec::new();
    for &mode in settings.modes {
        let setup = Setup::of_mode(mode, settings.nodes);
        modes.push((mode, measure(&tools, accel, &settings, runs, &setup)?));
    }

    let report = Report { accel, runs, settings, loopback, reference, modes };
    Ok(report.results())
}

fn mbit_text(mbit: &f64) -> String {
    format!("{mbit:.1} Mbit/s")
}

fn ms_text(ms: &f64) -> String {
    format!("{ms:.3} ms")
}

fn secs_text(s: &f64) -> String {
    secs(&Duration::from_secs_f64(*s))
}

/// iperf3 over the host's loopback, in Mbit/s.
fn loopback_bandwidth(settings: &Settings) -> Result<f64> {
    let port = free_port()?;
    let _server = HostServer::start(port)?;
    let output = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J"])
        .args(["-t", &settings.iperf_secs.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("cannot run iperf3")?;
    let bps = parse_iperf3_bps(&String::from_utf8_lossy(&output.stdout))?;
    if !output.status.success() {
        bail!("iperf3 -c failed ({})", output.status);
    }
    Ok(bps / 1e6)
}

/// ping over the host's loopback, in ms.
fn loopback_rtt(settings: &Settings) -> Result<f64> {
    let args = ping_args(settings, "127.0.0.1");
    let output = Command::new("ping")
        .args(args.split(' '))
        .stdin(Stdio::null())
        .output()
        .context("cannot run ping")?;
    if !output.status.success() {
        bail!(
            "ping {args} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_ping_avg_ms(&String::from_utf8_lossy(&output.stdout))
}

/// An `iperf3 -s` on the host, serving one test; dropping it kills it.
struct HostServer {
    child: std::process::Child,
    _tracked: Tracked,
}

impl HostServer {
    /// Starts the server on `port` and waits until it says it listens.
    fn start(port: u16) -> Result<HostServer> {
        let mut child = Command::new("iperf3")
            // Without --forceflush, iperf3 keeps what it prints to a pipe until it exits.
            .args(["-s", "-1", "--forceflush", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run iperf3")?;
        let stdout = child.stdout.take().context("iperf3's stdout")?;
        let tracked = Tracked::new(&child);
        let server = HostServer { child, _tracked: tracked };
        let mut said = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line.contains("listening") {
                return Ok(server);
            }
            said += &line;
            said.push('\n');
        }
        bail!("iperf3 -s -p {port} exited without listening: {}", said.trim())
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the cluster of `setup`, measures it `runs` times and brings it down.
fn measure(
    tools: &Tools,
    accel: Accel,
    settings: &Settings,
    runs: u32,
    setup: &Setup,
) -> Result<PathSamples> {
    let label = format!("{} ({} nodes)", setup.mode.name(), setup.nodes);
    let label = if setup.nodes == REFERENCE_NODES { format!("reference {label}") } else { label };
    let state = BeeState::new(tools)?;
    progress(&format!("{label}: cluster {} in {}", setup.name, state.path().display()));
    let cluster = Cluster::up_step(tools, accel, state, &setup.name, &setup.config())?;
    step("starting iperf3 servers", || start_servers(&cluster, setup), |_| "done".to_owned())?;
    let (from, to) = setup.pair;
    let first_ping = || first_ping(&cluster, from, to);
    step(&format!("first ping node {from} -> node {to}"), first_ping, |_| "answered".to_owned())?;

    let mut samples = PathSamples::default();
    for run in 1..=runs {
        progress(&format!("{label}: run {run} of {runs}"));
        let what = format!("tcp bandwidth node {from} -> node {to}");
        let bandwidth = step(&what, || bandwidth(&cluster, setup, settings), mbit_text)?;
        samples.bandwidth_mbit_s.push(bandwidth);
        let what = format!("round-trip latency node {from} -> node {to}");
        samples.rtt_ms.push(step(&what, || rtt(&cluster, setup, settings), ms_text)?);
        for &k in &setup.all_to_all {
            let what = format!("all-to-all of {k} nodes, {} MiB each way", settings.all_to_all_mib);
            let exchange = || all_to_all(&cluster, k, settings).map(|d| d.as_secs_f64());
            samples.all_to_all_s.entry(k).or_default().push(step(&what, exchange, secs_text)?);
        }
    }

    cluster.down_step()?;
    Ok(samples)
}

/// Starts every node's iperf3 servers.
fn start_servers(cluster: &Cluster<'_>, setup: &Setup) -> Result<()> {
    for node in 0..setup.nodes {
        let ports = setup.server_ports(node);
        if !ports.is_empty() {
            cluster.ssh(node, &servers_script(&ports))?;
        }
    }
    Ok(())
}

/// Waits until `to` answers a ping from `from`, so that no measurement pays for ARP.
fn first_ping(cluster: &Cluster<'_>, from: u32, to: u32) -> Result<()> {
    let addr = node_addr(to);
    cluster.ssh(from, &format!("ping -c 1 -w {FIRST_PING_WAIT} -q {addr}")).map(drop)
}

/// TCP bandwidth of the measured pair, in Mbit/s.
fn bandwidth(cluster: &Cluster<'_>, setup: &Setup, settings: &Settings) -> Result<f64> {
    let (from, to) = setup.pair;
    let command =
        format!("iperf3 -c {} -p {PAIR_PORT} -t {} -J", node_addr(to), settings.iperf_secs);
    Ok(parse_iperf3_bps(&cluster.ssh(from, &command)?)? / 1e6)
}

/// Average round trip of the measured pair, in ms.
fn rtt(cluster: &Cluster<'_>, setup: &Setup, settings: &Settings) -> Result<f64> {
    let (from, to) = setup.pair;
    let output =
        cluster.ssh(from, &format!("ping {}", ping_args(settings, &node_addr(to).to_string())))?;
    parse_ping_avg_ms(&output)
}

/// What a node's all-to-all command printed, and when the benchmark read it.
type Said = (u32, String, Instant);

/// Runs the all-to-all exchange among the first `k` nodes and times it.
fn all_to_all(cluster: &Cluster<'_>, k: u32, settings: &Settings) -> Result<Duration> {
    let flows = all_to_all_flows(k);
    let (lines, said) = mpsc::channel::<Said>();
    let mut remotes = Vec::new();
    for node in 0..k {
        let mut remote =
            cluster.spawn(node, &sender_script(node, &flows, settings.all_to_all_mib))?;
        let stdout = remote.take_stdout().context("no stdout of bee ssh")?;
        let lines = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send((node, line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        remotes.push(remote);
    }
    drop(lines);
    let deadline = Instant::now() + COMMAND_DEADLINE;

    if let Err(err) = await_word(&said, k, "ready", deadline) {
        return Err(with_stderr(err, remotes));
    }
    let start = Instant::now();
    let stdins: Vec<_> = remotes.iter_mut().map(Remote::take_stdin).collect();
    for mut stdin in stdins.into_iter().flatten() {
        writeln!(stdin, "go").context("cannot tell a node to start")?;
    }
    let done = match await_word(&said, k, "done", deadline) {
        Ok(done) => done,
        Err(err) => return Err(with_stderr(err, remotes)),
    };
    if let Some((node, line, _)) = done.iter().find(|(_, line, _)| line != "done 0") {
        let err = anyhow::anyhow!("node {node}'s transfers failed (it said `{line}`)");
        return Err(with_stderr(err, remotes));
    }
    let finished = done.iter().map(|(_, _, at)| *at).max().unwrap_or(start);
    for (node, remote) in remotes.into_iter().enumerate() {
        remote.finish(&format!("node {node}'s all-to-all command"))?;
    }
    Ok(finished.duration_since(start))
}

/// Reads until each of `k` nodes printed a line that starts with `word`, and returns
/// those lines; fails when a node's output ends first or at `deadline`.
fn await_word(said: &Receiver<Said>, k: u32, word: &str, deadline: Instant) -> Result<Vec<Said>> {
    let mut found: Vec<Said> = Vec::new();
    while found.len() < k as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok((node, line, at)) if line.starts_with(word) => {
                if !found.iter().any(|(n, _, _)| *n == node) {
                    found.push((node, line, at));
                }
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                bail!("not every node said `{word}` within {}s", COMMAND_DEADLINE.as_secs())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let missing: Vec<String> = (0..k)
                    .filter(|node| !found.iter().any(|(n, _, _)| n == node))
                    .map(|node| node.to_string())
                    .collect();
                bail!("node(s) {} stopped before saying `{word}`", missing.join(", "))
            }
        }
    }
    Ok(found)
}

/// `err`, with what the nodes' commands printed on stderr; stops them.
fn with_stderr(err: anyhow::Error, remotes: Vec<Remote>) -> anyhow::Error {
    let printed: Vec<String> = remotes
        .into_iter()
        .enumerate()
        .map(|(node, remote)| format!("node {node}: {}", remote.abandon()))
        .collect();
    err.context(printed.join("\n"))
}

/// Everything the network benchmark reports.
struct Report {
    accel: Accel,
    runs: u32,
    settings: Settings,
    loopback: PathSamples,
    reference: PathSamples,
    modes: Vec<(NetworkMode, PathSamples)>,
}

/// The target of `mode`'s bandwidth ratio, if it has one.
fn bandwidth_target(mode: NetworkMode) -> Option<f64> {
    (mode != NetworkMode::Multicast).then_some(BANDWIDTH_TARGET)
}

impl Report {
    fn bandwidth_ratio(&self, samples: &PathSamples) -> f64 {
        samples.bandwidth() / self.reference.bandwidth()
    }

    fn rtt_ratio(&self, samples: &PathSamples) -> f64 {
        samples.rtt() / self.reference.rtt()
    }

    /// Whether `mode` met its bandwidth target, if it has one.
    fn met(&self, mode: NetworkMode, samples: &PathSamples) -> Option<bool> {
        bandwidth_target(mode).map(|target| self.bandwidth_ratio(samples) >= target)
    }

    /// The human-readable table.
    fn table(&self) -> String {
        let settings = &self.settings;
        let quick: &[&str] = if settings.quick { &["quick"] } else { &[] };
        let mut out = heading("network benchmark", self.accel, self.runs, quick);
        let mut columns = vec![("path", Align::Left), ("hops", Align::Right)];
        columns.extend([("Mbit/s", Align::Right), ("x ref", Align::Right)]);
        columns.extend([("rtt ms", Align::Right), ("x ref", Align::Right)]);
        let nodes = settings.nodes;
        let a2a: Vec<String> = (2..=nodes)
            .map(|k| if k == 2 { format!("a2a k={k}") } else { format!("k={k}") })
            .collect();
        columns.extend(a2a.iter().map(|name| (name.as_str(), Align::Right)));
        columns.push(("target", Align::Left));
        let mut table = Table::new(&columns);

        let dash = || "-".to_owned();
        let all_to_all = |samples: &PathSamples| -> Vec<String> {
            (2..=nodes).map(|k| fixed(samples.all_to_all(k), 1)).collect()
        };
        let loopback = &self.loopback;
        table.push(vec![
            "host loopback".to_owned(),
            dash(),
            fixed(loopback.bandwidth(), 1),
            dash(),
            fixed(loopback.rtt(), 3),
            dash(),
        ]);
        let reference = Setup::reference();
        let mut cells = vec![
            "reference".to_owned(),
            reference.hops().to_string(),
            fixed(self.reference.bandwidth(), 1),
            fixed(self.bandwidth_ratio(&self.reference), 2),
            fixed(self.reference.rtt(), 3),
            fixed(self.rtt_ratio(&self.reference), 2),
        ];
        cells.extend(all_to_all(&self.reference));
        table.push(cells);
        for (mode, samples) in &self.modes {
            let setup = Setup::of_mode(*mode, nodes);
            let mut cells = vec![
                mode.name().to_owned(),
                setup.hops().to_string(),
                fixed(samples.bandwidth(), 1),
                fixed(self.bandwidth_ratio(samples), 2),
                fixed(samples.rtt(), 3),
                fixed(self.rtt_ratio(samples), 2),
            ];
            cells.extend(all_to_all(samples));
            cells.push(match (bandwidth_target(*mode), self.met(*mode, samples)) {
                (Some(target), Some(met)) => format!(">= {target}x: {}", verdict(met)),
                _ => "none".to_owned(),
            });
            table.push(cells);
        }
        out += &table.render();

        let of = if self.runs > 1 { format!(", median of {}", self.runs) } else { String::new() };
        let (from, to) = PAIR;
        let (ref_from, ref_to) = REFERENCE_PAIR;
        out += &format!(
            "modes: {nodes} nodes, node {from} to {to}; reference: {REFERENCE_NODES} nodes on one \
             direct link, node {ref_from} to {ref_to}\n"
        );
        out += &format!(
            "Mbit/s: iperf3 TCP for {} s{of}; target: bandwidth of the p2p modes over the \
             reference's\n",
            settings.iperf_secs
        );
        out += &format!(
            "rtt ms: average of {} pings {PING_INTERVAL} s apart; x ref: ratio to the reference\n",
            settings.pings
        );
        out += &format!(
            "a2a k=N: seconds until each of the first N nodes sent {} MiB to every other one, \
             all at once\n",
            settings.all_to_all_mib
        );
        out
    }

    /// The results for `report.json`: every path's samples, the modes against the
    /// reference.
    fn results(&self) -> Results {
        let settings = &self.settings;
        let metrics = vec![
            Metric {
                id: "bandwidth",
                title: format!("TCP bandwidth, node {} to {} (iperf3)", PAIR.0, PAIR.1),
                unit: "Mbit/s",
                better: Better::Higher,
                x_label: None,
            },
            Metric {
                id: "rtt",
                title: format!("round trip, node {} to {} (ping)", PAIR.0, PAIR.1),
                unit: "ms",
                better: Better::Lower,
                x_label: None,
            },
            Metric {
                id: "all_to_all",
                title: format!("all-to-all of {} MiB per pair", settings.all_to_all_mib),
                unit: "s",
                better: Better::Lower,
                x_label: Some("nodes"),
            },
        ];
        let mut series = Vec::new();
        let mut comparisons = Vec::new();
        let mut add = |subject: &str, samples: &PathSamples, compare: Option<NetworkMode>| {
            let one = |metric, samples: &[f64]| Series {
                metric,
                subject: subject.to_owned(),
                x: None,
                samples: samples.to_vec(),
            };
            series.push(one("bandwidth", &samples.bandwidth_mbit_s));
            series.push(one("rtt", &samples.rtt_ms));
            for (k, times) in &samples.all_to_all_s {
                series.push(Series { x: Some(f64::from(*k)), ..one("all_to_all", times) });
            }
            let Some(mode) = compare else { return };
            for metric in ["bandwidth", "rtt"] {
                let target = bandwidth_target(mode)
                    .filter(|_| metric == "bandwidth")
                    .map(|value| Target { on: TargetOn::Ratio, at_least: true, value });
                comparisons.push(Comparison {
                    metric,
                    subject: subject.to_owned(),
                    x: None,
                    reference: Some(REFERENCE.to_owned()),
                    target,
                });
            }
        };
        add(LOOPBACK, &self.loopback, None);
        add(REFERENCE, &self.reference, None);
        for (mode, samples) in &self.modes {
            add(mode.name(), samples, Some(*mode));
        }

        let reference = Setup::reference();
        let modes: Vec<Value> = self
            .modes
            .iter()
            .map(|(mode, _)| {
                let setup = Setup::of_mode(*mode, settings.nodes);
                json!({ "mode": mode.name(), "nodes": setup.nodes, "hops": setup.hops() })
            })
            .collect();
        Results {
            kind: Kind::Network,
            accel: self.accel,
            quick: settings.quick,
            runs: self.runs,
            settings: json!({
                "iperf3_seconds": settings.iperf_secs,
                "pings": settings.pings,
                "ping_interval_s": PING_INTERVAL,
                "all_to_all_mib": settings.all_to_all_mib,
                "transport": TRANSPORT,
                "guest_memory": GUEST_MEMORY,
                "pair": [PAIR.0, PAIR.1],
                "modes": modes,
                "reference": {
                    "mode": reference.mode.name(),
                    "nodes": reference.nodes,
                    "pair": [reference.pair.0, reference.pair.1],
                    "hops": reference.hops(),
                },
            }),
            metrics,
            series,
            comparisons,
            notes: vec![
                format!(
                    "reference: {REFERENCE_NODES} guests on one direct -netdev {TRANSPORT} link; \
                     host loopback: iperf3 and ping on 127.0.0.1, what no guest can beat"
                ),
                "the clusters run one after another, minutes apart".to_owned(),
            ],
            table: self.table(),
            recommendations: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of `iperf3 -c -J` output of iperf 3.12, cut down to what is read.
    const IPERF3_JSON: &str = r#"{
        "start": { "version": "iperf 3.12" },
        "intervals": [],
        "end": {
            "sum_sent": { "bytes": 78643200, "bits_per_second": 209715200.5 },
            "sum_received": { "bytes": 78381056, "bits_per_second": 208999999.25 }
        }
    }"#;

    #[test]
    fn iperf3_bandwidth_is_the_receivers_sum() {
        assert_eq!(parse_iperf3_bps(IPERF3_JSON).unwrap(), 208_999_999.25);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let failed = r#"{"start": {}, "intervals": [], "end": {},
            "error": "unable to connect to server: Connection refused"}"#;
        let err = parse_iperf3_bps(failed).unwrap_err().to_string();
        assert_eq!(err, "iperf3: unable to connect to server: Connection refused");
        let err = parse_iperf3_bps("iperf3: error").unwrap_err().to_string();
        assert_eq!(err, "iperf3 printed no JSON: iperf3: error");
        let err = parse_iperf3_bps(r#"{"end": {}}"#).unwrap_err().to_string();
        assert_eq!(err, "iperf3's JSON has no end.sum_received.bits_per_second");
    }

    #[test]
    fn ping_average_is_read_from_the_summary() {
        let iputils = "PING 192.168.100.3 (192.168.100.3) 56(84) bytes of data.\n\n\
            --- 192.168.100.3 ping statistics ---\n\
            20 packets transmitted, 20 received, 0% packet loss, time 3812ms\n\
            rtt min/avg/max/mdev = 1.804/2.113/3.020/0.281 ms\n";
        assert_eq!(parse_ping_avg_ms(iputils).unwrap(), 2.113);
        let busybox = "round-trip min/avg/max = 0.058/0.061/0.070 ms\n";
        assert_eq!(parse_ping_avg_ms(busybox).unwrap(), 0.061);
        let lost = "--- 192.168.100.3 ping statistics ---\n\
            5 packets transmitted, 0 received, 100% packet loss, time 820ms\n";
        let err = parse_ping_avg_ms(lost).unwrap_err().to_string();
        assert!(err.starts_with("ping printed no round-trip times: --- 192.168.100.3"), "{err}");
    }

    #[test]
    fn hops_follow_bee_nets_topologies() {
        assert_eq!(hops(NetworkMode::Multicast, 1, 2), 1);
        assert_eq!(hops(NetworkMode::P2pStar, 1, 2), 2);
        assert_eq!(hops(NetworkMode::P2pStar, 0, 3), 1);
        assert_eq!(hops(NetworkMode::P2pTree, 1, 2), 2);
        assert_eq!(hops(NetworkMode::P2pTree, 3, 4), 2);
        assert_eq!(hops(NetworkMode::P2pTree, 3, 2), 3);
        assert_eq!(hops(NetworkMode::P2pTree, 0, 3), 2);
        assert_eq!(hops(NetworkMode::P2pTree, 5, 5), 0);
        assert_eq!(Setup::reference().hops(), 1);
    }

    #[test]
    fn all_to_all_gives_each_sender_its_own_port_on_each_peer() {
        let flows = all_to_all_flows(3);
        let pairs: Vec<(u32, u32, u16)> = flows.iter().map(|f| (f.from, f.to, f.port)).collect();
        assert_eq!(
            pairs,
            [(0, 1, 5300), (0, 2, 5300), (1, 0, 5301), (1, 2, 5301), (2, 0, 5302), (2, 1, 5302)]
        );
        assert!(all_to_all_flows(1).is_empty());

        let setup = Setup::of_mode(NetworkMode::P2pTree, NODES);
        assert_eq!(setup.server_ports(0), [5301, 5302, 5303]);
        assert_eq!(setup.server_ports(2), [5201, 5300, 5301, 5303]);
        let reference = Setup::reference();
        assert_eq!(reference.server_ports(0), [5301]);
        assert_eq!(reference.server_ports(1), [5201, 5300]);
    }

    #[test]
    fn sender_script_starts_one_client_per_peer() {
        let script = sender_script(1, &all_to_all_flows(3), 8);
        let expected = "echo ready; read go || exit 1; pids=; \
            iperf3 -c 192.168.100.1 -p 5301 -n 8M </dev/null >/tmp/bee-bench-a2a-0.log 2>&1 & \
            pids=\"$pids $!\"; \
            iperf3 -c 192.168.100.3 -p 5301 -n 8M </dev/null >/tmp/bee-bench-a2a-2.log 2>&1 & \
            pids=\"$pids $!\"; \
            rc=0; for p in $pids; do wait $p || rc=1; done; echo \"done $rc\"; \
            [ $rc = 0 ] || tail -n 5 /tmp/bee-bench-a2a-*.log >&2; exit $rc";
        assert_eq!(script, expected);
    }

    #[test]
    fn servers_script_waits_for_every_port() {
        let script = servers_script(&[5201, 5300]);
        assert!(script.starts_with("for p in 5201 5300; do iperf3 -s -D -p $p || exit 1; done;"));
        assert!(script.contains("until ss -Hltn \"sport = :$p\" | grep -q .; do"));
    }

    #[test]
    fn config_selects_mode_transport_and_memory() {
        let expected = "\
[cluster]
name = \"net-p2p-star\"
nodes = 4

[hardware]
memory = \"1GiB\"

[network]
mode = \"p2p-star\"
transport = \"stream\"
";
        assert_eq!(Setup::of_mode(NetworkMode::P2pStar, NODES).config(), expected);
    }

    fn samples(bandwidth: &[f64], rtt: &[f64], a2a: &[(u32, f64)]) -> PathSamples {
        let mut all_to_all_s = BTreeMap::new();
        for &(k, s) in a2a {
            all_to_all_s.entry(k).or_insert_with(Vec::new).push(s);
        }
        PathSamples { bandwidth_mbit_s: bandwidth.to_vec(), rtt_ms: rtt.to_vec(), all_to_all_s }
    }

    fn report() -> Report {
        let four = |s: f64| [(2, s), (3, 2.0 * s), (4, 3.0 * s)];
        Report {
            accel: Accel::Tcg,
            runs: 1,
            settings: Settings { modes: &MODES, nodes: NODES, ..Settings::new(true) },
            loopback: samples(&[40_000.0], &[0.035], &[]),
            reference: samples(&[200.0], &[2.0], &[(2, 1.5)]),
            modes: vec![
                (NetworkMode::Multicast, samples(&[150.0], &[3.0], &four(2.0))),
                (NetworkMode::P2pStar, samples(&[120.0], &[4.0], &four(2.5))),
                (NetworkMode::P2pTree, samples(&[90.0], &[4.2], &four(2.5))),
            ],
        }
    }

    #[test]
    fn table_shows_ratios_and_targets() {
        let expected = "\
network benchmark (accelerator: tcg, runs: 1, quick)
path           hops   Mbit/s  x ref  rtt ms  x ref  a2a k=2  k=3  k=4  target
host loopback     -  40000.0      -   0.035      -
reference         1    200.0   1.00   2.000   1.00      1.5    -    -
multicast         1    150.0   0.75   3.000   1.50      2.0  4.0  6.0  none
p2p-star          2    120.0   0.60   4.000   2.00      2.5  5.0  7.5  >= 0.5x: met
p2p-tree          2     90.0   0.45   4.200   2.10      2.5  5.0  7.5  >= 0.5x: missed
modes: 4 nodes, node 1 to 2; reference: 2 nodes on one direct link, node 0 to 1
Mbit/s: iperf3 TCP for 3 s; target: bandwidth of the p2p modes over the reference's
rtt ms: average of 5 pings 0.2 s apart; x ref: ratio to the reference
a2a k=N: seconds until each of the first N nodes sent 8 MiB to every other one, all at once
";
        assert_eq!(report().table(), expected);
    }

    #[test]
    fn results_hold_every_path_and_the_bandwidth_targets() {
        let results = report().results();
        let bandwidth = results.series_of("bandwidth", "host loopback", None).unwrap();
        assert_eq!(bandwidth.samples, [40000.0]);
        let a2a = results.series_of("all_to_all", "p2p-tree", Some(4.0)).unwrap();
        assert_eq!(a2a.median(), 7.5);
        let verdicts: Vec<(String, &str, Option<bool>)> = results
            .comparisons
            .iter()
            .map(|c| (c.subject.clone(), c.metric, results.met(c)))
            .collect();
        assert_eq!(verdicts[0], ("multicast".to_owned(), "bandwidth", None));
        assert_eq!(verdicts[2], ("p2p-star".to_owned(), "bandwidth", Some(true)));
        assert_eq!(verdicts[3], ("p2p-star".to_owned(), "rtt", None));
        assert_eq!(verdicts[4], ("p2p-tree".to_owned(), "bandwidth", Some(false)));
        assert_eq!(results.ratio(&results.comparisons[5]), 2.1);
        assert_eq!(results.settings["reference"]["hops"], 1);
    }

    #[test]
    fn quick_measures_the_default_mode_on_three_nodes() {
        let settings = Settings::new(true);
        assert_eq!((settings.modes, settings.nodes), (&QUICK_MODES[..], 3));
        assert_eq!(Setup::of_mode(NetworkMode::P2pTree, 3).hops(), 2);
    }
}
