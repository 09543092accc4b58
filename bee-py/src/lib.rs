//! The `bee` Python module: what the `bee` command line does, as functions.
//!
//! ```python
//! import bee
//! bee.check("bee.toml")              # the validated configuration, as a dict
//! code = bee.run("bee.toml")         # the application's exit code
//! bee.up("bee.toml")                 # the cluster's name
//! bee.ssh("hello", ["hostname"])     # a subprocess.CompletedProcess
//! bee.down("hello")
//! bee.status()                       # what `bee status --json` prints, as a dict
//! ```
//!
//! Every call blocks until bee is done, with the interpreter's lock released, so other
//! Python threads go on. Ctrl-C (`KeyboardInterrupt`) during `run` or `resume` tears the
//! cluster down, as it does for the command line, and `resume` continues later; during
//! `up` it tears down what had started. Progress goes to stderr as the command line
//! prints it, or to a callable given as `progress`; the application's output goes to
//! `sys.stdout` and `sys.stderr`, or to a callable given as `output`.
//!
//! Build it with `cargo build -p bee-py --release` and put
//! `target/release/libbee.so` on Python's path as `bee.so` (`scripts/python-module.sh`
//! does both). Python 3.8 or later (the stable ABI).

// pyo3's macros expand to the unsafe calls into Python's C API that they wrap.
#![allow(unsafe_code)]

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bee_cli::compose::{self, NoApplication, VmPlatforms};
use bee_cli::format_chain;
use bee_cli::progress::Progress;
use bee_core::config::{ConfigError as BadConfig, Hosts};
use bee_core::docker::OutputStream;
use bee_core::events::{Event, Events};
use bee_core::orchestrator::{Orchestrator, Platforms, RunOutcome};
use bee_core::{paths, Config, CoreError};
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

pyo3::create_exception!(bee, Error, PyException, "bee failed; the message says why.");
pyo3::create_exception!(
    bee,
    ConfigError,
    Error,
    "A bee.toml that bee cannot use; the message names the file and the entry."
);
pyo3::create_exception!(
    bee,
    Waiting,
    Error,
    "The application was checkpointed and no platform is left: `bee.resume(name)` continues."
);

/// How often a blocking call looks for a signal (Ctrl-C) sent to Python.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The async runtime every call runs on; made at the first call.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new_err(format!("cannot start the async runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Turns an error of the libraries into the Python exception of its kind.
fn to_py(err: anyhow::Error) -> PyErr {
    let message = format_chain(&err);
    let is_config = err.chain().any(|cause| {
        cause.is::<BadConfig>()
            || cause.is::<NoApplication>()
            || matches!(cause.downcast_ref::<CoreError>(), Some(CoreError::Config(_)))
    });
    if is_config {
        ConfigError::new_err(message)
    } else {
        Error::new_err(message)
    }
}

/// Runs `future` to its end with the interpreter's lock released.
fn block_on<T: Send>(py: Python<'_>, future: impl Future<Output = T> + Send) -> PyResult<T> {
    let runtime = runtime()?;
    Ok(py.detach(|| runtime.block_on(future)))
}

/// Runs `future` with the interpreter's lock released until it ends or Python reports a
/// signal (Ctrl-C raises `KeyboardInterrupt`, in bee's wait or in the output callable);
/// `Err` holds that exception.
fn block_on_interruptible<T: Send>(
    py: Python<'_>,
    hooks: &[Option<&Hook>],
    future: impl Future<Output = T> + Send,
) -> PyResult<Result<T, PyErr>> {
    let runtime = runtime()?;
    Ok(py.detach(|| {
        runtime.block_on(async {
            tokio::pin!(future);
            let mut ticks = tokio::time::interval(SIGNAL_POLL);
            loop {
                tokio::select! {
                    value = &mut future => return Ok(value),
                    _ = ticks.tick() => {
                        if let Some(err) = hooks.iter().flatten().find_map(|h| h.take_interrupt()) {
                            return Err(err);
                        }
                        Python::attach(|py| py.check_signals())?;
                    }
                }
            }
        })
    }))
}

/// What a Python callable that bee calls while it works raised: the first exception is
/// kept, the callable not called again, and the exception raised once bee is done.
#[derive(Default)]
struct Hook {
    failed: Mutex<Option<PyErr>>,
}

impl Hook {
    /// Runs `call` with the interpreter's lock, unless an earlier call failed.
    fn call(&self, call: impl FnOnce(Python<'_>) -> PyResult<()>) {
        let Ok(mut failed) = self.failed.lock() else { return };
        if failed.is_none() {
            *failed = Python::attach(call).err();
        }
    }

    /// The exception a call raised, if one did.
    fn take_failure(&self) -> Option<PyErr> {
        self.failed.lock().ok().and_then(|mut failed| failed.take())
    }

    /// The `KeyboardInterrupt` that Ctrl-C raised inside a call, if it did: Python runs
    /// its signal handlers wherever its code runs, so the interrupt can land there.
    fn take_interrupt(&self) -> Option<PyErr> {
        let mut failed = self.failed.lock().ok()?;
        let interrupted = Python::attach(|py| {
            failed.as_ref().is_some_and(|err| err.is_instance_of::<PyKeyboardInterrupt>(py))
        });
        interrupted.then(|| failed.take()).flatten()
    }
}

/// Where the application's output goes: `output(stream, data)`, or `sys.stdout` and
/// `sys.stderr`.
struct Output {
    callback: Option<Py<PyAny>>,
    hook: Hook,
}

impl Output {
    fn new(callback: Option<Py<PyAny>>) -> Output {
        Output { callback, hook: Hook::default() }
    }

    fn write(&self, stream: OutputStream, bytes: &[u8]) {
        let name = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        self.hook.call(|py| {
            match &self.callback {
                Some(callback) => {
                    callback.call1(py, (name, PyBytes::new(py, bytes)))?;
                }
                None => {
                    let file = py.import("sys")?.getattr(name)?;
                    file.call_method1("write", (String::from_utf8_lossy(bytes),))?;
                    file.call_method0("flush")?;
                }
            }
            Ok(())
        });
    }
}

/// Where bee's progress goes: `progress(kind, text)`, or stderr as the command prints it.
enum Reporter {
    Stderr(Progress),
    Python { callback: Py<PyAny>, hook: Hook },
}

impl Reporter {
    fn new(callback: Option<Py<PyAny>>) -> Reporter {
        match callback {
            Some(callback) => Reporter::Python { callback, hook: Hook::default() },
            None => Reporter::Stderr(Progress::new()),
        }
    }

    fn hook(&self) -> Option<&Hook> {
        match self {
            Reporter::Stderr(_) => None,
            Reporter::Python { hook, .. } => Some(hook),
        }
    }
}

impl Events for Reporter {
    fn event(&self, event: Event) {
        let (callback, hook) = match self {
            Reporter::Stderr(progress) => return progress.event(event),
            Reporter::Python { callback, hook } => (callback, hook),
        };
        let (kind, text) = match event {
            Event::Started { step } => ("started", step),
            Event::Detail { line } => ("detail", line),
            Event::Finished { step, elapsed } => {
                ("finished", format!("{step}: done in {:.1}s", elapsed.as_secs_f64()))
            }
            Event::Message { line } => ("message", line),
            Event::Warning { message } => ("warning", message),
            _ => return,
        };
        hook.call(|py| callback.call1(py, (kind, text)).map(drop));
    }
}

/// The first exception of the hooks that have one.
fn failure<'a>(hooks: impl IntoIterator<Item = Option<&'a Hook>>) -> Option<PyErr> {
    hooks.into_iter().flatten().find_map(Hook::take_failure)
}

/// Reads and validates a bee.toml without starting anything.
///
/// Returns the configuration as a dict: name, nodes, cpus, memory_mib, network, storage
/// (None without [storage]), image (None without [application]) and platforms (backend,
/// hosts and time_slot_s of each, highest priority first). Raises bee.ConfigError naming
/// the file and entry that are wrong, bee.Error for a platform whose backend this bee
/// lacks.
#[pyfunction]
fn check(py: Python<'_>, config: PathBuf) -> PyResult<Py<PyDict>> {
    let config = Config::load(&config).map_err(|e| to_py(e.into()))?;
    for index in 0..config.platforms.len() {
        VmPlatforms.supports(&config, index).map_err(|e| to_py(e.into()))?;
    }
    let dict = PyDict::new(py);
    dict.set_item("name", &config.name)?;
    dict.set_item("nodes", config.nodes)?;
    dict.set_item("cpus", config.hardware.cpus)?;
    dict.set_item("memory_mib", config.hardware.memory_mib)?;
    dict.set_item("network", config.network.mode.name())?;
    dict.set_item("storage", config.storage.as_ref().map(|s| s.mode.name()))?;
    dict.set_item("image", config.application.as_ref().map(|a| a.image.clone()))?;
    let mut platforms = Vec::new();
    for platform in &config.platforms {
        let entry = PyDict::new(py);
        entry.set_item("backend", platform.backend.name())?;
        match &platform.hosts {
            Hosts::Local => entry.set_item("hosts", "local")?,
            Hosts::Slurm => entry.set_item("hosts", "slurm")?,
            Hosts::List(names) => entry.set_item("hosts", names.clone())?,
        }
        entry.set_item("time_slot_s", platform.time_slot.map(|slot| slot.as_secs_f64()))?;
        platforms.push(entry);
    }
    dict.set_item("platforms", platforms)?;
    Ok(dict.unbind())
}

/// Starts the cluster a bee.toml describes on its first platform and leaves it running.
///
/// Returns the cluster's name, for `bee.down` (or `bee ssh NAME` on the command line).
/// `progress(kind, text)`, if given, receives bee's progress instead of stderr: kind is
/// "started", "detail", "finished", "message" or "warning". Ctrl-C tears down what had
/// started and raises KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (config, progress = None))]
fn up(py: Python<'_>, config: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<String> {
    let config = Config::load(&config).map_err(|e| to_py(e.into()))?;
    VmPlatforms.supports(&config, 0).map_err(|e| to_py(e.into()))?;
    let progress = Reporter::new(progress);
    let up = compose::Up::new(&config).map_err(to_py)?;
    let name = match block_on_interruptible(py, &[progress.hook()], up.start(&config, &progress))? {
        Ok(name) => name.map_err(to_py)?,
        Err(interrupt) => {
            block_on(py, up.interrupted(&progress))?.map_err(to_py)?;
            return Err(interrupt);
        }
    };
    failure([progress.hook()]).map_or(Ok(name), Err)
}

/// Starts the cluster, runs the application through the platforms of the bee.toml, and
/// tears the cluster down.
///
/// Returns the application's exit code. `output(stream, data)`, if given, receives the
/// application's output ("stdout" or "stderr", bytes) as it comes; `progress` is as for
/// `up`. Raises bee.Waiting when the application was checkpointed and no platform is left,
/// KeyboardInterrupt after tearing the cluster down on Ctrl-C.
#[pyfunction]
#[pyo3(signature = (config, output = None, progress = None))]
fn run(
    py: Python<'_>,
    config: PathBuf,
    output: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<i64> {
    let config = compose::load_for_run(&config).map_err(to_py)?;
    let name = config.name.clone();
    drive(py, &name, output, progress, |orchestrator, sink| {
        Box::pin(async move { orchestrator.start(&config, sink).await })
    })
}

/// Continues a run from its last completed step: after a crash, a Ctrl-C, or a checkpoint
/// that found no platform left. Returns and raises as `run` does.
#[pyfunction]
#[pyo3(signature = (name, output = None, progress = None))]
fn resume(
    py: Python<'_>,
    name: String,
    output: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<i64> {
    let run_name = name.clone();
    drive(py, &name, output, progress, |orchestrator, sink| {
        Box::pin(async move { orchestrator.resume(&run_name, sink).await })
    })
}

/// A run's future, borrowing the orchestrator and the output sink.
type RunFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<RunOutcome, CoreError>> + Send + 'a>>;

/// The output sink the orchestrator writes the application's output into.
type Sink<'a> = &'a mut (dyn FnMut(OutputStream, &[u8]) + Send);

/// Runs `start` (a run or a resume) under an orchestrator of this bee, watching for
/// Ctrl-C, and turns its outcome into the exit code or the exception.
fn drive(
    py: Python<'_>,
    name: &str,
    output: Option<Py<PyAny>>,
    progress: Option<Py<PyAny>>,
    start: impl for<'a> FnOnce(&'a Orchestrator<'a>, Sink<'a>) -> RunFuture<'a> + Send,
) -> PyResult<i64> {
    let output = Output::new(output);
    let progress = Reporter::new(progress);
    let hooks = [Some(&output.hook), progress.hook()];
    let orchestrator =
        Orchestrator::new(&VmPlatforms, &paths::state_dir(), paths::clusters_dir(), &progress)
            .map_err(|e| to_py(e.into()))?;
    let mut sink = |stream: OutputStream, bytes: &[u8]| output.write(stream, bytes);
    let outcome = block_on_interruptible(py, &hooks, start(&orchestrator, &mut sink))?;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(interrupt) => {
            block_on(py, orchestrator.interrupted(name))?.map_err(|e| to_py(e.into()))?;
            return Err(interrupt);
        }
    };
    if let Some(err) = failure(hooks) {
        return Err(err);
    }
    match outcome.map_err(|e| to_py(e.into()))? {
        RunOutcome::Completed(code) => Ok(code),
        RunOutcome::Waiting { data } => Err(Waiting::new_err(format!(
            "run {name} was checkpointed and no platform is left: its checkpoint is in {}; \
             bee.resume({name:?}) continues",
            data.display()
        ))),
    }
}

/// Deletes a run that has not completed, its checkpoint and any cluster it left.
/// `progress` is as for `up`.
#[pyfunction]
#[pyo3(signature = (name, progress = None))]
fn discard(py: Python<'_>, name: String, progress: Option<Py<PyAny>>) -> PyResult<()> {
    let progress = Reporter::new(progress);
    let orchestrator =
        Orchestrator::new(&VmPlatforms, &paths::state_dir(), paths::clusters_dir(), &progress)
            .map_err(|e| to_py(e.into()))?;
    block_on(py, orchestrator.discard(&name))?.map_err(|e| to_py(e.into()))?;
    failure([progress.hook()]).map_or(Ok(()), Err)
}

/// Stops a cluster and removes everything it left on this host.
/// `progress` is as for `up`.
#[pyfunction]
#[pyo3(signature = (name, progress = None))]
fn down(py: Python<'_>, name: String, progress: Option<Py<PyAny>>) -> PyResult<()> {
    let progress = Reporter::new(progress);
    block_on(py, compose::tear_down(&name, &progress))?.map_err(to_py)?;
    failure([progress.hook()]).map_or(Ok(()), Err)
}

/// Runs `command` (a list of strings, one argument each, as with `subprocess`) on `node` of
/// cluster `name` over SSH, and returns a `subprocess.CompletedProcess` with its exit
/// code and output (bytes); the exit code is minus the signal that killed it, as with
/// `subprocess`. `node` is a node name or index (default: the master, node 0). Raises
/// bee.Error for a cluster or node that does not exist.
#[pyfunction]
#[pyo3(signature = (name, command, node = None))]
fn ssh(
    py: Python<'_>,
    name: String,
    command: Bound<'_, PyAny>,
    node: Option<String>,
) -> PyResult<Py<PyAny>> {
    let list = "bee.ssh: command must be a list of strings, such as [\"hostname\"]";
    if command.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{list}, not a str")));
    }
    let command: Vec<String> =
        command.extract().map_err(|e| PyTypeError::new_err(format!("{list}: {e}")))?;
    if command.is_empty() {
        return Err(PyValueError::new_err(
            "bee.ssh needs a command to run, such as [\"hostname\"] (`bee ssh NAME` opens \
             a shell)",
        ));
    }
    let mut ssh = compose::ssh_command(&name, node.as_deref()).map_err(to_py)?;
    // One argument a string, as with subprocess: quoted for the node's shell, which ssh
    // hands the words joined by spaces.
    let words: Vec<String> = command.iter().map(|word| bee_vm::qemu::shell_quote(word)).collect();
    ssh.arg(words.join(" ")).stdin(std::process::Stdio::null());
    let output = py
        .detach(|| ssh.output())
        .map_err(|e| Error::new_err(format!("cannot run ssh ({e}); install openssh-client")))?;
    let code = output.status.code().or(output.status.signal().map(|signal| -signal));
    let completed = py.import("subprocess")?.getattr("CompletedProcess")?.call1((
        command,
        code.unwrap_or(-1),
        PyBytes::new(py, &output.stdout),
        PyBytes::new(py, &output.stderr),
    ))?;
    Ok(completed.unbind())
}

/// Every cluster with its nodes' health and every run with its phase: the dict that
/// `bee status --json` prints (key "version" = 1, "clusters", "runs").
#[pyfunction]
fn status(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let report = block_on(py, compose::status())?.map_err(to_py)?;
    let text = serde_json::to_string(&report.to_json())
        .map_err(|e| Error::new_err(format!("cannot encode the status: {e}")))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// The `bee` module.
#[pymodule]
#[pyo3(name = "bee")]
fn bee_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("Waiting", py.get_type::<Waiting>())?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(up, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(resume, m)?)?;
    m.add_function(wrap_pyfunction!(discard, m)?)?;
    m.add_function(wrap_pyfunction!(ssh, m)?)?;
    m.add_function(wrap_pyfunction!(down, m)?)?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    Ok(())
}
