//! The BEE framework's Algorithm 1: run an application across a priority list of
//! platforms, checkpointing it before each time slot ends and restoring it on the next.
//!
//! For each platform in turn the orchestrator deploys a cluster (with the input, or the
//! last checkpoint, staged into its shared storage), starts the application (or its
//! restore command), and monitors it. When the platform's time slot is about to end
//! (`checkpoint.margin` before), it asks for a checkpoint in the master's container,
//! waits for the application to save its state into the shared directory and exit, stops
//! the cluster and keeps the shared directory in the run's data directory: that is the
//! data that moves to the next platform. An application without `[checkpoint]` is
//! checkpointed at the VM level instead ([`VM_CHECKPOINT_MARGIN`] before the slot ends):
//! the backend saves the whole nodes, with the application still running in them, into
//! the data directory, and the next platform starts them from there and follows the
//! application on. When the application exits by itself, its shared directory goes to
//! `storage.output` and the run is complete. With no platform left, the checkpoint stays
//! and `bee resume` continues later.
//!
//! Every step is recorded in the run database ([`crate::runs`]) before it is taken, so
//! that [`Orchestrator::resume`] can continue after a crash or a `kill -9` of bee: a
//! cluster left behind is torn down (finishing the transfer it was in, if any) and the
//! run continues from its last checkpoint.
//!
//! The orchestrator depends on no backend: a [`Platforms`] given by the front end turns
//! each `[[platform]]` entry into a [`ClusterBuilder`].
//!
//! # Limitations
//!
//! - The time slot counts from the start of the application on a platform, not from the
//!   start of the allocation: deployment time is not charged to it.
//! - Files the application deleted between two checkpoints stay in the data directory,
//!   because collecting merges and never deletes.
//! - Work done since the last checkpoint is lost when bee or a node dies; the run then
//!   continues from that checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::{self, CheckpointAt, CheckpointHow, ClusterBuilder, RunEnd, VmCheckpoint};
use crate::config::{Application, Config, StorageSpec, VM_CHECKPOINT_MARGIN};
use crate::docker::OutputStream;
use crate::error::CoreError;
use crate::events::Events;
use crate::record::RecordStore;
use crate::runs::{Run, RunPhase, RunStore};
use crate::traits::{Backend, Storage};

/// Where a VM-level checkpoint is written, beside the run's data directory, which it
/// replaces once complete.
const PARTIAL_DIR: &str = "data.partial";

/// What the front end provides: the parts each platform is built from.
#[async_trait::async_trait]
pub trait Platforms: Send + Sync {
    /// A cluster builder for `config.platforms[index]`, with its network and storage.
    fn builder(&self, config: &Config, index: usize) -> Result<ClusterBuilder, CoreError>;

    /// Fails when this front end cannot build `config.platforms[index]` at all (a
    /// backend it lacks); checked for every platform before a run starts or resumes.
    fn supports(&self, _config: &Config, _index: usize) -> Result<(), CoreError> {
        Ok(())
    }

    /// Why `config.platforms[index]` cannot be used now (a Slurm platform outside an
    /// allocation, a host that does not answer), or `None` when it can; the orchestrator
    /// then tries the next one.
    async fn unavailable(&self, _config: &Config, _index: usize) -> Option<String> {
        None
    }

    /// The backend and storage that made a recorded cluster, to tear it down.
    #[allow(clippy::type_complexity)]
    fn recorded(
        &self,
        store: &RecordStore,
    ) -> Result<(Arc<dyn Backend>, Option<Box<dyn Storage>>), CoreError>;
}

/// How a run left the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The application completed with this exit code; its results are in
    /// `storage.output`.
    Completed(i64),
    /// Checkpointed with no platform left; the checkpoint is in `data`.
    Waiting {
        /// The run's data directory.
        data: PathBuf,
    },
}

/// Drives runs through the platform list.
pub struct Orchestrator<'a> {
    platforms: &'a dyn Platforms,
    runs: RunStore,
    clusters_dir: PathBuf,
    events: &'a dyn Events,
}

impl<'a> Orchestrator<'a> {
    /// An orchestrator keeping its runs in `state_dir` and its clusters in
    /// `clusters_dir`.
    pub fn new(
        platforms: &'a dyn Platforms,
        state_dir: &Path,
        clusters_dir: PathBuf,
        events: &'a dyn Events,
    ) -> Result<Orchestrator<'a>, CoreError> {
        Ok(Orchestrator { platforms, runs: RunStore::open(state_dir)?, clusters_dir, events })
    }

    /// The run database.
    pub fn runs(&self) -> &RunStore {
        &self.runs
    }

    /// Starts a new run of `config` from its first platform. A run of the same name that
    /// holds a checkpoint and has not completed is refused, so that the checkpoint is not
    /// lost; one without a checkpoint is replaced.
    pub async fn start(
        &self,
        config: &Config,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<RunOutcome, CoreError> {
        self.check_platforms(config)?;
        if let Some(run) = self.runs.get(&config.name)? {
            if run.checkpoints > 0 && !run.phase.is_final() {
                return Err(CoreError::RunUnfinished { name: run.name, phase: run.phase.name() });
            }
        }
        remove_dir(&self.runs.data_dir(&config.name))?;
        let mut run = self.runs.create(&config.name, &config.file)?;
        self.drive(config, &mut run, output).await
    }

    /// Continues the run `name` from its last completed step, reading its configuration
    /// file again (so that platforms can be changed in between).
    pub async fn resume(
        &self,
        name: &str,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<RunOutcome, CoreError> {
        let mut run =
            self.runs.get(name)?.ok_or_else(|| CoreError::NoSuchRun { name: name.into() })?;
        if run.phase == RunPhase::Completed {
            return Ok(RunOutcome::Completed(run.exit_code.unwrap_or_default()));
        }
        let config = Config::load(&run.config)?;
        if config.name != run.name {
            return Err(CoreError::Unsupported {
                what: format!(
                    "resuming run {} with {}, whose cluster.name is now {:?}",
                    run.name,
                    run.config.display(),
                    config.name
                ),
                instead: format!("set cluster.name = {:?} again", run.name),
            });
        }
        self.check_platforms(&config)?;
        self.events.message(&format!("resuming run {name} ({})", run.phase.name()));
        if let Some(outcome) = self.recover(&config, &mut run).await? {
            return Ok(outcome);
        }
        self.drive(&config, &mut run, output).await
    }

    /// Fails, before anything starts, when a platform of `config` cannot be built.
    fn check_platforms(&self, config: &Config) -> Result<(), CoreError> {
        (0..config.platforms.len()).try_for_each(|index| self.platforms.supports(config, index))
    }

    /// Deletes a run, its checkpoint and any cluster it left.
    pub async fn discard(&self, name: &str) -> Result<(), CoreError> {
        if self.runs.get(name)?.is_none() {
            return Err(CoreError::NoSuchRun { name: name.into() });
        }
        self.tear_down_leftover(name, false).await?;
        self.runs.remove(name)
    }

    /// Tears down the cluster of a run whose future was dropped (Ctrl-C), collecting what
    /// the record says, and records the run as failed so that `bee resume` retries it.
    pub async fn interrupted(&self, name: &str) -> Result<(), CoreError> {
        let transferring = self.runs.get(name)?.is_some_and(|r| r.phase == RunPhase::Transferring);
        self.tear_down_leftover(name, true).await?;
        if let (false, Some(mut run)) = (transferring, self.runs.get(name)?) {
            run.phase = RunPhase::Failed;
            run.detail = "interrupted".to_string();
            self.runs.save(&mut run)?;
        }
        Ok(())
    }

    /// Cleans up after an interrupted step: tears down a leftover cluster, finishing the
    /// transfer it was in. Returns an outcome when that completes the run.
    async fn recover(
        &self,
        config: &Config,
        run: &mut Run,
    ) -> Result<Option<RunOutcome>, CoreError> {
        let transferring = run.phase == RunPhase::Transferring;
        self.tear_down_leftover(&run.name, transferring).await?;
        // Killed between dropping the last checkpoint and moving a new VM-level one in.
        let data = self.runs.data_dir(&run.name);
        let partial = data.with_file_name(PARTIAL_DIR);
        if !data.exists() && VmCheckpoint::read(&partial)?.is_some() {
            std::fs::rename(&partial, &data)
                .map_err(|e| CoreError::io("cannot move the checkpoint to", &data, e))?;
        }
        match (run.phase, run.exit_code) {
            (RunPhase::Transferring, Some(code)) => {
                self.complete(run, code)?;
                Ok(Some(RunOutcome::Completed(code)))
            }
            (RunPhase::Transferring, None) => {
                self.checkpoint_kept(config, run)?;
                Ok(None)
            }
            (RunPhase::Waiting, _) => {
                run.platform = 0;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Tears down the cluster named `name` if its record is still there, collecting its
    /// shared directory where the record says only when `collect` is set.
    async fn tear_down_leftover(&self, name: &str, collect: bool) -> Result<(), CoreError> {
        if !RecordStore::list(&self.clusters_dir)?.iter().any(|n| n == name) {
            return Ok(());
        }
        let store = RecordStore::open(&self.clusters_dir, name)?;
        let (backend, storage) = self.platforms.recorded(&store)?;
        let storage = if collect { storage } else { None };
        self.events.message(&format!("tearing down cluster {name}, left by an earlier bee"));
        cluster::teardown(backend.as_ref(), store, storage.as_deref(), self.events).await
    }

    /// The platform loop of Algorithm 1, from `run.platform` on.
    async fn drive(
        &self,
        config: &Config,
        run: &mut Run,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<RunOutcome, CoreError> {
        let app = config.application.clone().ok_or_else(|| CoreError::Unsupported {
            what: format!("running {} without [application]", config.file.display()),
            instead: "add [application] with an image and a command".to_string(),
        })?;
        let mut skipped = Vec::new();
        loop {
            while run.platform < config.platforms.len() {
                let Some(reason) = self.platforms.unavailable(config, run.platform).await else {
                    break;
                };
                let platform = &config.platforms[run.platform];
                let line = format!("platform {} ({}): {reason}", run.platform, platform.describe());
                self.events.message(&format!("skipping {line}"));
                skipped.push(line);
                run.platform += 1;
            }
            if run.platform >= config.platforms.len() {
                if run.checkpoints == 0 && !skipped.is_empty() {
                    return Err(self.no_platform(run, &skipped));
                }
                return self.wait_for_platforms(run);
            }
            match self.on_platform(config, &app, run, output).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => self.checkpoint_kept(config, run)?,
                Err(err) => {
                    run.phase = RunPhase::Failed;
                    run.detail = format!("failed on platform {}: {err}", run.platform);
                    if let Err(save) = self.runs.save(run) {
                        tracing::warn!(error = %save, "cannot record the failure");
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Deploys, runs and stops one platform. Returns the outcome when the application
    /// completed, `None` when it was checkpointed (its state is in the data directory).
    async fn on_platform(
        &self,
        config: &Config,
        app: &Application,
        run: &mut Run,
        output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<Option<RunOutcome>, CoreError> {
        let index = run.platform;
        let platform = &config.platforms[index];
        let restoring = run.checkpoints > 0;
        let data = self.runs.data_dir(&run.name);
        let place = format!("platform {index} ({})", platform.describe());
        run.phase = RunPhase::Deploying;
        run.detail = match restoring {
            true => format!("restoring checkpoint {} on {place}", run.checkpoints),
            false => format!("starting on {place}"),
        };
        self.runs.save(run)?;
        self.events.message(&run.detail);
        if !restoring {
            remove_dir(&data)?;
        }
        // What the checkpoint holds, not what the configuration now asks for, says how to
        // restore it: `bee resume` reads a configuration that may have changed.
        let whole_vm = restoring && VmCheckpoint::read(&data)?.is_some();

        let builder = self.platforms.builder(config, index)?;
        let started = match whole_vm {
            true => builder.restore(config, &data, self.events).await,
            false => {
                let staged = staged_config(config, restoring.then_some(data.as_path()));
                builder.up(&staged, self.events).await
            }
        };
        let mut cluster = started.map_err(|err| CoreError::Step {
            step: format!("cannot start cluster {}", config.name),
            source: err.into(),
        })?;
        // Restored nodes have the image, and the application running.
        let delivered = match whole_vm {
            true => Ok(()),
            false => cluster.deliver(app, self.events).await,
        };
        if let Err(err) = delivered {
            self.stop_quietly(cluster).await;
            return Err(run_failed(run, err));
        }

        let mut here = app.clone();
        if let (true, false, Some(checkpoint)) = (restoring, whole_vm, &config.checkpoint) {
            here.command = checkpoint.restore.clone();
        }
        let partial = data.with_file_name(PARTIAL_DIR);
        let now = tokio::time::Instant::now();
        let checkpoint = match (platform.time_slot, &config.checkpoint) {
            (Some(slot), Some(checkpoint)) => Some(CheckpointAt {
                at: now + slot.saturating_sub(checkpoint.margin),
                how: CheckpointHow::Application {
                    request: checkpoint.request.clone(),
                    timeout: checkpoint.timeout,
                },
            }),
            // The new checkpoint is written beside the last one, which it replaces only
            // once complete.
            (Some(slot), None) => Some(CheckpointAt {
                at: now + slot.saturating_sub(VM_CHECKPOINT_MARGIN),
                how: CheckpointHow::Vm { into: partial.clone() },
            }),
            _ => None,
        };
        run.phase = RunPhase::Running;
        run.detail = format!("running {} on {place}", here.image);
        self.runs.save(run)?;
        self.events.message(&run.detail);

        let checkpoints = &self.runs;
        let name = run.name.clone();
        let mut on_checkpoint = || {
            let line = format!("checkpointing {name} before the time slot of {place} ends");
            if let Err(err) = mark(checkpoints, &name, RunPhase::Checkpointing, &line) {
                tracing::warn!(error = %err, "cannot record the checkpoint");
            }
            self.events.message(&line);
        };
        let ended = cluster
            .run_until(&here, output, checkpoint.as_ref(), &mut on_checkpoint, self.events)
            .await;
        match ended {
            Ok(RunEnd::Exited(code)) => {
                run.phase = RunPhase::Transferring;
                run.exit_code = Some(code);
                run.detail = format!("application exited with code {code}; collecting results");
                self.runs.save(run)?;
                cluster.down(self.events).await?;
                self.complete(run, code)?;
                Ok(Some(RunOutcome::Completed(code)))
            }
            Ok(RunEnd::Checkpointed)
                if matches!(checkpoint_how(&checkpoint), Some(CheckpointHow::Vm { .. })) =>
            {
                // The nodes are saved and gone; what is left of the cluster is not output.
                cluster.collect_into(None)?;
                remove_dir(&data)?;
                std::fs::rename(&partial, &data)
                    .map_err(|e| CoreError::io("cannot move the checkpoint to", &data, e))?;
                run.phase = RunPhase::Transferring;
                run.detail = format!(
                    "saved checkpoint {} of the whole nodes from {place} ({})",
                    run.checkpoints + 1,
                    describe_size(&data)
                );
                self.runs.save(run)?;
                self.events.message(&run.detail);
                cluster.down(self.events).await?;
                Ok(None)
            }
            Ok(RunEnd::Checkpointed) => {
                // The cluster record points at the data directory before the run says it
                // is transferring, so that a `bee resume` after a kill collects there.
                remove_dir(&data)?;
                cluster.keep_into(data)?;
                run.phase = RunPhase::Transferring;
                run.detail = format!("saving checkpoint {} from {place}", run.checkpoints + 1);
                self.runs.save(run)?;
                self.events.message(&run.detail);
                cluster.down(self.events).await?;
                Ok(None)
            }
            Err(err) => {
                // What the application wrote goes to the output, as without checkpoints;
                // the checkpoint in the data directory stays as it was.
                self.stop_quietly(cluster).await;
                remove_dir(&partial)?;
                Err(run_failed(run, err))
            }
        }
    }

    /// Tears down after a failure, keeping the first error: a teardown error is logged.
    async fn stop_quietly(&self, cluster: crate::Cluster) {
        if let Err(err) = cluster.down(self.events).await {
            tracing::warn!(error = %err, "teardown after a failure failed");
            self.events.warning(&format!("teardown failed: {err}; `bee down` retries it"));
        }
    }

    /// Records a checkpoint as saved and moves the run to the next platform.
    fn checkpoint_kept(&self, config: &Config, run: &mut Run) -> Result<(), CoreError> {
        run.checkpoints += 1;
        run.platform += 1;
        run.phase = RunPhase::Deploying;
        run.detail = match config.platforms.get(run.platform) {
            Some(next) => format!(
                "checkpoint {} saved; moving to platform {} ({})",
                run.checkpoints,
                run.platform,
                next.describe()
            ),
            None => format!("checkpoint {} saved", run.checkpoints),
        };
        self.runs.save(run)?;
        self.events.message(&run.detail);
        Ok(())
    }

    /// Algorithm 1's end: no platform left, so the checkpoint is stored for later.
    fn wait_for_platforms(&self, run: &mut Run) -> Result<RunOutcome, CoreError> {
        let data = self.runs.data_dir(&run.name);
        run.phase = RunPhase::Waiting;
        run.detail = format!(
            "no platform left: checkpoint {} kept in {}; `bee resume {}` continues from it",
            run.checkpoints,
            data.display(),
            run.name
        );
        self.runs.save(run)?;
        self.events.message(&run.detail);
        Ok(RunOutcome::Waiting { data })
    }

    /// The error of a run that never started because every platform was skipped; the
    /// run is recorded as failed.
    fn no_platform(&self, run: &mut Run, skipped: &[String]) -> CoreError {
        run.phase = RunPhase::Failed;
        run.detail = "no platform could run it".to_string();
        if let Err(err) = self.runs.save(run) {
            tracing::warn!(error = %err, "cannot record the failure");
        }
        CoreError::NoPlatform { run: run.name.clone(), skipped: skipped.join("; ") }
    }

    /// Records the run as complete and drops its checkpoint, which the results replace.
    fn complete(&self, run: &mut Run, code: i64) -> Result<(), CoreError> {
        remove_dir(&self.runs.data_dir(&run.name))?;
        run.phase = RunPhase::Completed;
        run.exit_code = Some(code);
        run.detail =
            format!("completed with exit code {code} after {} checkpoint(s)", run.checkpoints);
        self.runs.save(run)
    }
}

/// The error of a run that failed after its cluster came up, which is torn down by then.
fn run_failed(run: &Run, err: CoreError) -> CoreError {
    let step = match run.checkpoints {
        0 => "the run failed; the cluster was torn down".to_string(),
        n => format!(
            "the run failed; the cluster was torn down; `bee resume {}` retries from \
             checkpoint {n}",
            run.name
        ),
    };
    CoreError::Step { step, source: Box::new(err) }
}

/// How `checkpoint`, if any, is taken.
fn checkpoint_how(checkpoint: &Option<CheckpointAt>) -> Option<&CheckpointHow> {
    checkpoint.as_ref().map(|c| &c.how)
}

/// The size of the files under `dir` on disk, such as `812 MiB on disk`.
fn describe_size(dir: &Path) -> String {
    fn on_disk(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
                .map(|entries| entries.flatten().map(|e| on_disk(&e.path())).sum())
                .unwrap_or(0),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        }
    }
    format!("{} MiB on disk", on_disk(dir).div_ceil(1 << 20))
}

/// Sets a run's phase from within a running step.
fn mark(runs: &RunStore, name: &str, phase: RunPhase, detail: &str) -> Result<(), CoreError> {
    let mut run = runs.get(name)?.ok_or_else(|| CoreError::NoSuchRun { name: name.into() })?;
    run.phase = phase;
    run.detail = detail.to_string();
    runs.save(&mut run)
}

/// `config` with its storage's input replaced by the checkpoint in `restore_from`.
fn staged_config(config: &Config, restore_from: Option<&Path>) -> Config {
    let mut staged = config.clone();
    if let (Some(from), Some(spec)) = (restore_from, staged.storage.as_mut()) {
        *spec = StorageSpec { input: Some(from.to_path_buf()), ..spec.clone() };
    }
    staged
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(dir: &Path) -> Result<(), CoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("cannot remove", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    #[test]
    fn restoring_stages_the_checkpoint_instead_of_the_input() {
        let file = Path::new("/cfg/bee.toml");
        let text = "[cluster]\nname = \"a\"\nnodes = 1\n[storage]\nmode = \"virtio-9p\"\n\
                    output = \"out\"\n";
        let config = RawConfig::parse(file, text).unwrap().validate(file).unwrap();
        assert_eq!(staged_config(&config, None), config);
        let staged = staged_config(&config, Some(Path::new("/state/runs/a/data")));
        let spec = staged.storage.unwrap();
        assert_eq!(spec.input, Some(PathBuf::from("/state/runs/a/data")));
        assert_eq!(spec.output, Some(PathBuf::from("/cfg/out")));
    }
}
