//! A minimal client of QEMU's machine protocol (QMP) over a unix socket.
//!
//! It does what bee needs to supervise a guest: connect, run one command at a time
//! and read its reply. Every read is bounded by the timeout given to
//! [`Qmp::connect`], and a timeout error says what was awaited.
//!
//! # Limitations
//!
//! Asynchronous events (`SHUTDOWN`, `POWERDOWN`, ...) are logged at debug level and
//! dropped: watch the QEMU process to learn when a guest has stopped. Commands are
//! not pipelined; each call waits for its own reply. After any error other than
//! [`QmpError::Command`] the connection may be mid-message: drop it and reconnect.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{self, Instant};
use tracing::debug;

/// Interval between connection attempts while QEMU has not created its socket yet.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// Longest QMP message accepted, in bytes; replies bee asks for are far smaller.
const MAX_MESSAGE: u64 = 1 << 20;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket did not accept a connection before the timeout.
    #[error("cannot connect to qmp socket {path} within {waited:?}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// How long connecting was retried.
        waited: Duration,
        /// The last connection error.
        source: io::Error,
    },
    /// QEMU sent nothing in time.
    #[error("no qmp message within {timeout:?} while waiting for {awaited}")]
    Timeout {
        /// What was awaited, such as `the reply to query-status`.
        awaited: String,
        /// The timeout.
        timeout: Duration,
    },
    /// QEMU closed the connection.
    #[error("qmp connection closed while waiting for {awaited}")]
    Closed {
        /// What was awaited.
        awaited: String,
    },
    /// Reading or writing the socket failed.
    #[error("qmp i/o failed while {doing}")]
    Io {
        /// What the client was doing.
        doing: String,
        /// The failure.
        source: io::Error,
    },
    /// QEMU sent something that is not the QMP message expected.
    #[error("unexpected qmp message while waiting for {awaited}: {message}")]
    Protocol {
        /// What was awaited.
        awaited: String,
        /// The message, possibly shortened.
        message: String,
    },
    /// QEMU ran the command and reported an error.
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        /// The command sent.
        command: String,
        /// QMP's error class, such as `GenericError` or `CommandNotFound`.
        class: String,
        /// QMP's description of the error.
        desc: String,
    },
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and enters command mode.
    ///
    /// Connecting is retried until `timeout` passes, because QEMU creates the socket
    /// a moment after it starts. The same `timeout` then bounds every later read.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = connect_with_retry(path, timeout).await?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(reader), writer, timeout, next_id: 0 };

        let greeting = qmp.read_message("the qmp greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                awaited: "the qmp greeting".into(),
                message: shorten(&greeting.to_string()),
            });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with optional `args` and returns the `return` member of the
    /// reply; asynchronous events received meanwhile are skipped. An `error` reply
    /// becomes [`QmpError::Command`] with QMP's class and description.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = args {
            request["arguments"] = args;
        }
        self.send(command, &request).await?;

        let awaited = format!("the reply to {command}");
        loop {
            let message = self.read_message(&awaited).await?;
            if let Some(event) = message.get("event") {
                debug!(%event, "qmp event skipped");
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol { awaited, message: shorten(&message.to_string()) });
            }
            return reply_value(command, &awaited, message);
        }
    }

    /// The guest's run state as QMP names it: `running`, `paused`, `prelaunch`,
    /// `shutdown`, ...
    pub async fn query_status(&mut self) -> Result<String, QmpError> {
        let reply = self.execute("query-status", None).await?;
        match reply.get("status").and_then(Value::as_str) {
            Some(status) => Ok(status.to_string()),
            None => Err(QmpError::Protocol {
                awaited: "the reply to query-status".into(),
                message: shorten(&reply.to_string()),
            }),
        }
    }

    /// Presses the guest's ACPI power button; the guest decides when to stop.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Pauses the guest's CPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes a paused guest, also one that has just loaded an incoming migration.
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Starts migrating the guest to `uri`, such as `exec:cat > FILE`; QEMU works in the
    /// background, and [`Qmp::query_migrate`] says how far it got.
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri }))).await.map(drop)
    }

    /// The state of the outgoing or incoming migration, as `query-migrate` reports it.
    pub async fn query_migrate(&mut self) -> Result<Migration, QmpError> {
        let reply = self.execute("query-migrate", None).await?;
        Ok(Migration::from_reply(&reply))
    }

    /// Stops QEMU at once, without asking the guest.
    ///
    /// QEMU may close the socket before its reply arrives; that counts as success.
    pub async fn quit(mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn send(&mut self, command: &str, request: &Value) -> Result<(), QmpError> {
        let mut line = request.to_string();
        line.push('\n');
        debug!(%line, "qmp send");

        let doing = format!("sending {command}");
        let write = async {
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.flush().await
        };
        match time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(QmpError::Io { doing, source }),
            Err(_) => Err(QmpError::Timeout { awaited: doing, timeout: self.timeout }),
        }
    }

    /// Reads one message (QEMU ends each with a line break).
    async fn read_message(&mut self, awaited: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let mut limited = (&mut self.reader).take(MAX_MESSAGE);
        let read = match time::timeout(self.timeout, limited.read_line(&mut line)).await {
            Ok(read) => read,
            Err(_) => {
                return Err(QmpError::Timeout { awaited: awaited.into(), timeout: self.timeout })
            }
        };
        match read {
            Ok(0) => return Err(QmpError::Closed { awaited: awaited.into() }),
            Ok(_) => {}
            Err(source) => {
                return Err(QmpError::Io { doing: format!("waiting for {awaited}"), source })
            }
        }
        debug!(line = line.trim_end(), "qmp receive");

        match serde_json::from_str::<Value>(&line) {
            Ok(message) if message.is_object() => Ok(message),
            _ => Err(QmpError::Protocol { awaited: awaited.into(), message: shorten(&line) }),
        }
    }
}

/// How a migration stands, from `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// QEMU's status: `none` before any migration, `setup`, `active`, `completed`,
    /// `failed`, `cancelled`, ...
    pub status: String,
    /// Why it failed, when QEMU says.
    pub error: Option<String>,
    /// Bytes of guest memory sent or received so far.
    pub transferred: u64,
}

impl Migration {
    fn from_reply(reply: &Value) -> Migration {
        Migration {
            // An incoming migration that has not begun yet has an empty reply.
            status: reply.get("status").and_then(Value::as_str).unwrap_or("none").to_string(),
            error: reply.get("error-desc").and_then(Value::as_str).map(str::to_string),
            transferred: reply["ram"]["transferred"].as_u64().unwrap_or(0),
        }
    }

    /// True once the migration ended, well or not.
    pub fn is_over(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

async fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream, QmpError> {
    let start = Instant::now();
    loop {
        let error = match time::timeout_at(start + timeout, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect did not finish"),
        };
        let retry =
            matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused);
        if !retry || start.elapsed() + CONNECT_RETRY > timeout {
            return Err(QmpError::Connect {
                path: path.to_path_buf(),
                waited: start.elapsed(),
                source: error,
            });
        }
        time::sleep(CONNECT_RETRY).await;
    }
}

/// The `return` member of a reply, or its `error` as [`QmpError::Command`].
fn reply_value(command: &str, awaited: &str, mut message: Value) -> Result<Value, QmpError> {
    if let Some(value) = message.get_mut("return") {
        return Ok(value.take());
    }
    let error = message.get("error").and_then(Value::as_object);
    match error {
        Some(error) => Err(QmpError::Command {
            command: command.into(),
            class: string_member(error, "class"),
            desc: string_member(error, "desc"),
        }),
        None => Err(QmpError::Protocol {
            awaited: awaited.into(),
            message: shorten(&message.to_string()),
        }),
    }
}

fn string_member(object: &Map<String, Value>, key: &str) -> String {
    object.get(key).and_then(Value::as_str).unwrap_or("(none)").to_string()
}

/// Keeps error messages readable when QEMU sends something large.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim_end();
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::process::Stdio;

    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;
    use tokio::process::Command;

    const GREETING: &str = concat!(
        r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "#,
        r#""capabilities": []}}"#
    );

    /// A fake QEMU: sends the greeting, then answers each request line with the
    /// next canned reply, with `{id}` replaced by the request's id.
    pub(crate) fn fake_qemu(
        path: &Path,
        replies: Vec<&'static str>,
    ) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, mut writer) = stream.into_split();
            let mut lines = BufReader::new(reader).lines();
            writer.write_all(format!("{GREETING}\r\n").as_bytes()).await.unwrap();
            for reply in replies {
                let Some(request) = lines.next_line().await.unwrap() else { return };
                let request: Value = serde_json::from_str(&request).unwrap();
                let reply = reply.replace("{id}", &request["id"].to_string());
                writer.write_all(format!("{reply}\r\n").as_bytes()).await.unwrap();
            }
        })
    }

    pub(crate) const CAPABILITIES_OK: &str = r#"{"return": {}, "id": {id}}"#;

    #[tokio::test]
    async fn error_reply_carries_class_and_desc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let server = fake_qemu(
            &path,
            vec![
                CAPABILITIES_OK,
                concat!(
                    r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#,
                    "\r\n",
                    r#"{"error": {"class": "CommandNotFound", "#,
                    r#""desc": "The command frobnicate has not been found"}, "id": {id}}"#
                ),
            ],
        );

        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let err = qmp.execute("frobnicate", Some(json!({"x": 1}))).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "qmp command frobnicate failed: CommandNotFound: \
             The command frobnicate has not been found"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn silence_times_out_naming_what_was_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();

        let err = Qmp::connect(&path, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no qmp message within 100ms while waiting for the qmp greeting"
        );
    }

    #[tokio::test]
    async fn missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");

        let err = Qmp::connect(&path, Duration::from_millis(100)).await.unwrap_err();
        let QmpError::Connect { source, .. } = &err else { panic!("unexpected error {err:?}") };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        let message = err.to_string();
        let prefix = format!("cannot connect to qmp socket {} within ", path.display());
        assert!(message.starts_with(&prefix), "{message}");
    }

    #[tokio::test]
    async fn real_qemu_reports_status_and_quits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let qmp_arg = format!("unix:{},server=on,wait=off", path.display());
        let mut qemu = Command::new(crate::qemu::qemu_binary())
            .args(["-accel", "tcg", "-M", "q35", "-nodefaults", "-display", "none", "-S"])
            .args(["-qmp", &qmp_arg])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("qemu-system-x86_64 runs (set BEE_QEMU to use another binary)");

        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).await.unwrap();
        let status = qmp.query_status().await.unwrap();
        assert!(status == "prelaunch" || status == "paused", "status {status}");
        qmp.quit().await.unwrap();

        let exit = time::timeout(Duration::from_secs(10), qemu.wait()).await;
        let exit = exit.expect("qemu exits after quit").unwrap();
        assert!(exit.success(), "qemu exited with {exit}");
    }

    #[test]
    fn migration_status_is_read_from_query_migrate() {
        let done = json!({"status": "completed", "ram": {"transferred": 312258657}});
        let done = Migration::from_reply(&done);
        assert_eq!(
            (done.status.as_str(), done.transferred, done.is_over()),
            ("completed", 312258657, true)
        );
        let failed = json!({"status": "failed", "error-desc": "Unable to write to command"});
        let failed = Migration::from_reply(&failed);
        assert_eq!(failed.error.as_deref(), Some("Unable to write to command"));
        assert!(failed.is_over());
        let waiting = Migration::from_reply(&json!({}));
        assert_eq!((waiting.status.as_str(), waiting.is_over()), ("none", false));
    }

    #[test]
    fn shortens_long_messages() {
        assert_eq!(shorten("short\r\n"), "short");
        let long = "x".repeat(300);
        assert_eq!(shorten(&long), format!("{}...", "x".repeat(200)));
    }
}
