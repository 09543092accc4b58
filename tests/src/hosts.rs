//! Hosts reached over SSH, for tests: network namespaces on a bridge of their own, each
//! with its own address and its own `sshd`, and an SSH configuration (given to bee
//! through `BEE_SSH_CONFIG`) that logs in to them as root with a key made for the test.
//! Needs root (`ip netns`) and Debian's openssh-server and iproute2. Everything is
//! removed when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ip;

/// Namespace hosts; removed when dropped.
pub struct SshHosts {
    dir: tempfile::TempDir,
    addresses: Vec<String>,
    sshds: Vec<Child>,
    namespaces: Vec<String>,
    bridge: Option<String>,
}

impl SshHosts {
    /// Starts `count` hosts, named by their addresses 10.77.T.2, 10.77.T.3, ... with T
    /// from [`crate::subnet`] (so that tests in parallel get separate subnets).
    pub fn start(count: usize) -> SshHosts {
        for program in ["ip", "/usr/sbin/sshd", "ssh-keygen"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "{program} is missing: install Debian's openssh-server and iproute2");
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "SSH host tests make network namespaces and need root"
        );
        let subnet = crate::subnet();
        let tag = format!("b{subnet}");
        let dir = tempfile::Builder::new().prefix("bee-hosts-").tempdir_in("/tmp").unwrap();
        let mut hosts = SshHosts {
            dir,
            addresses: Vec::new(),
            sshds: Vec::new(),
            namespaces: Vec::new(),
            bridge: None,
        };
        let root = hosts.dir.path().to_path_buf();
        keygen(&root.join("host_key"));
        keygen(&root.join("client_key"));
        std::fs::copy(root.join("client_key.pub"), root.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();

        let bridge = format!("{tag}br");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        hosts.bridge = Some(bridge.clone());
        ip(&["addr", "add", &format!("10.77.{subnet}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let host_pub = std::fs::read_to_string(root.join("host_key.pub")).unwrap();
        let mut known = String::new();
        for index in 0..count {
            let ns = format!("{tag}h{index}");
            let addr = format!("10.77.{subnet}.{}", index + 2);
            let (outer, inner) = (format!("{tag}v{index}"), format!("{tag}i{index}"));
            crate::add_namespace(&ns, &bridge, (&outer, &inner), &addr);
            hosts.namespaces.push(ns.clone());
            let log = std::fs::File::create(root.join(format!("sshd-{index}.log"))).unwrap();
            let sshd = Command::new("ip")
                .args(["netns", "exec", &ns, "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null"])
                .args(sshd_options(&root, &addr))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("sshd starts");
            hosts.sshds.push(sshd);
            known.push_str(&format!("{addr} {host_pub}"));
            hosts.addresses.push(addr);
        }
        std::fs::write(root.join("known_hosts"), known).unwrap();
        std::fs::write(
            hosts.ssh_config(),
            format!(
                "Host 10.77.{subnet}.*\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n",
                key = root.join("client_key").display(),
                known = root.join("known_hosts").display(),
            ),
        )
        .unwrap();
        for addr in hosts.addresses.clone() {
            let answers = || {
                Command::new("ssh")
                    .arg("-F")
                    .arg(hosts.ssh_config())
                    .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=2", &addr, "true"])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            crate::wait_until(
                &format!("sshd on {addr} to answer"),
                Duration::from_secs(30),
                answers,
            );
        }
        hosts
    }

    /// The hosts' addresses, as `hosts = [...]` entries.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The SSH configuration that reaches them (`BEE_SSH_CONFIG`).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The `hosts = [...]` value of a platform on these hosts.
    pub fn toml_list(&self) -> String {
        let quoted: Vec<String> = self.addresses.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        for sshd in &mut self.sshds {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        for ns in &self.namespaces {
            crate::remove_namespace(ns);
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
        }
    }
}

fn sshd_options(root: &Path, addr: &str) -> Vec<String> {
    let option = |text: String| ["-o".to_string(), text];
    [
        format!("ListenAddress={addr}"),
        format!("HostKey={}", root.join("host_key").display()),
        format!("AuthorizedKeysFile={}", root.join("authorized_keys").display()),
        "PidFile=none".to_string(),
        "StrictModes=no".to_string(),
        "PermitRootLogin=prohibit-password".to_string(),
        "PasswordAuthentication=no".to_string(),
        "KbdInteractiveAuthentication=no".to_string(),
        "UsePAM=no".to_string(),
    ]
    .into_iter()
    .flat_map(option)
    .collect()
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_answers_over_ssh_from_its_own_namespace() {
        let hosts = SshHosts::start(2);
        for addr in hosts.addresses() {
            let output = Command::new("ssh")
                .arg("-F")
                .arg(hosts.ssh_config())
                .args(["-o", "BatchMode=yes", addr, "ip", "-o", "-4", "addr", "show"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            assert!(text.contains(&format!("inet {addr}/24")), "{text}");
            let others = hosts.addresses().iter().filter(|a| *a != addr);
            for other in others {
                assert!(!text.contains(&format!("inet {other}/")), "{text}");
            }
        }
        assert!(hosts.toml_list().starts_with("[\"10.77."), "{}", hosts.toml_list());
    }
}
