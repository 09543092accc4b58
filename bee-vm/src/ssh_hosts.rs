//! Hosts reached over SSH as VM hosts (`hosts = ["h1", "h2", ...]`).
//!
//! Each entry is an SSH destination (`host`, `user@host`, or a `Host` alias of the SSH
//! configuration). bee runs `ssh` with `BatchMode`, so keys or an agent must let it in
//! without a prompt; `BEE_SSH_CONFIG` names an SSH configuration file to use instead of
//! `~/.ssh/config`. A guest's QEMU runs in the foreground of its own SSH session with a
//! pseudo-terminal: the local `ssh` process is what bee records and watches, it exits when
//! QEMU does, and when it ends (SIGTERM from bee) the remote side hangs up and QEMU quits.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use bee_core::CoreError;
use tokio::process::Command;

/// The variable naming an SSH configuration file for reaching the hosts.
pub const SSH_CONFIG_VAR: &str = "BEE_SSH_CONFIG";
/// How long connecting to a host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One host of a platform's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// The entry as written in `hosts`.
    pub destination: String,
    /// The host's IPv4 address: socket links between guests on different hosts meet
    /// there, and the guest's SSH is forwarded there.
    pub addr: Ipv4Addr,
}

/// An `ssh` command with bee's options and no destination yet.
pub fn ssh() -> Command {
    let mut command = Command::new("ssh");
    if let Some(config) = std::env::var_os(SSH_CONFIG_VAR) {
        command.arg("-F").arg(config);
    }
    command
        .args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()))
        .args(["-o", "ServerAliveInterval=15"]);
    command
}

/// The hosts of `entries`, after checking that each answers over SSH (all at once); the
/// error names the entry that does not.
pub async fn reach(entries: &[String]) -> Result<Vec<SshHost>, CoreError> {
    let checks = entries.iter().enumerate().map(|(index, entry)| reach_one(index, entry));
    futures_util::future::try_join_all(checks).await
}

async fn reach_one(index: usize, destination: &str) -> Result<SshHost, CoreError> {
    let entry = format!("hosts[{index}] = {destination:?}");
    let output = ssh()
        .arg(destination)
        .arg("--")
        .arg("true")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            host_error(format!("{entry}: cannot run ssh ({e}); install openssh-client"))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(host_error(format!(
            "{entry}: cannot reach it over SSH ({}): {}",
            output.status,
            bee_core::ssh::tail(&stderr, 3)
        )));
    }
    let addr = address_of(destination).await.map_err(|e| host_error(format!("{entry}: {e}")))?;
    Ok(SshHost { destination: destination.to_string(), addr })
}

/// The IPv4 address SSH connects to for `destination`, from `ssh -G` (which applies the
/// configuration's `HostName`), resolved when it is a name.
async fn address_of(destination: &str) -> Result<Ipv4Addr, String> {
    let output = ssh()
        .arg("-G")
        .arg(destination)
        .output()
        .await
        .map_err(|e| format!("cannot run ssh -G ({e})"))?;
    let shown = String::from_utf8_lossy(&output.stdout);
    let name = shown
        .lines()
        .find_map(|line| line.strip_prefix("hostname "))
        .ok_or_else(|| "ssh -G shows no host name".to_string())?
        .trim();
    resolve_ipv4(name)
}

fn resolve_ipv4(name: &str) -> Result<Ipv4Addr, String> {
    if let Ok(addr) = name.parse::<Ipv4Addr>() {
        return Ok(addr);
    }
    let addrs = (name, 0).to_socket_addrs().map_err(|e| format!("cannot resolve {name}: {e}"))?;
    addrs
        .into_iter()
        .find_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{name} has no IPv4 address"))
}

/// An `ssh` command that runs `program args...` on `host` in the foreground of a session
/// with a pseudo-terminal, so that the program gets a hang-up when the session ends. The
/// session forwards the Unix socket `forward.0` here to `forward.1` there (QEMU's QMP
/// socket), so that bee reaches QEMU's monitor on any host.
pub fn run_there(
    host: &SshHost,
    program: &Path,
    args: &[String],
    forward: (&Path, &Path),
) -> Command {
    let mut line = format!("exec {}", quote(&program.to_string_lossy()));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    let mut command = ssh();
    command
        .args(["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", "-L"])
        .arg(format!("{}:{}", forward.0.display(), forward.1.display()))
        .arg("-tt")
        .arg(&host.destination)
        .arg("--")
        .arg(line);
    command
}

/// Quotes `word` for a POSIX shell.
pub(crate) fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn host_error(detail: String) -> CoreError {
    CoreError::Backend { backend: "vm", detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &Command) -> Vec<String> {
        command.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn quoting_keeps_plain_words_and_wraps_the_rest() {
        assert_eq!(quote("-netdev"), "-netdev");
        assert_eq!(
            quote("user,id=ssh0,hostfwd=tcp:10.0.0.2:2222-:22"),
            "user,id=ssh0,hostfwd=tcp:10.0.0.2:2222-:22"
        );
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn qemu_runs_in_the_foreground_of_a_terminal_session() {
        let host = SshHost { destination: "root@h1".into(), addr: Ipv4Addr::new(10, 0, 0, 2) };
        let forward = (Path::new("/s/here.sock"), Path::new("/s/qmp.sock"));
        let qemu = Path::new("/usr/bin/qemu");
        let command = run_there(&host, qemu, &["-name".into(), "n 0".into()], forward);
        let args = args(&command);
        assert!(args.contains(&"/s/here.sock:/s/qmp.sock".to_string()), "{args:?}");
        let tail = &args[args.len() - 4..];
        assert_eq!(tail, ["-tt", "root@h1", "--", "exec /usr/bin/qemu -name 'n 0'"]);
        assert!(args.contains(&"BatchMode=yes".to_string()), "{args:?}");
    }

    #[test]
    fn addresses_resolve_to_ipv4() {
        assert_eq!(resolve_ipv4("10.1.2.3").unwrap(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(resolve_ipv4("localhost").unwrap(), Ipv4Addr::LOCALHOST);
        assert!(resolve_ipv4("no-such-host.invalid").unwrap_err().contains("cannot resolve"));
    }
}
