//! The run database: what each `bee run` has done so far, across platforms and processes.
//!
//! A run is one application on its way through the platform list (Algorithm 1). Its row
//! says which platform it is on, which phase it is in and how many checkpoints it has
//! taken; every change is also appended to its history. The database is SQLite, in
//! `$BEE_STATE_DIR/runs.db`; each change is one transaction, so a crash or a `kill -9` of
//! `bee` leaves the last completed step on disk and `bee resume` continues from there.
//!
//! This module only stores; deciding what to do next is [`crate::orchestrator`]'s job.
//!
//! # Limitations
//!
//! Two `bee` processes driving the same run at once are not prevented from doing so.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::CoreError;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunPhase {
    /// A cluster is being started on the current platform, with the input or the last
    /// checkpoint staged in.
    Deploying,
    /// The application runs on the current platform.
    Running,
    /// The checkpoint command was sent; the application is saving its state.
    Checkpointing,
    /// The cluster is stopping and the shared directory is being saved into the run's data
    /// directory, to move to the next platform (or to the output, once complete).
    Transferring,
    /// Checkpointed with no platform left: `bee resume` continues from the checkpoint.
    Waiting,
    /// The application completed; its exit code is recorded.
    Completed,
    /// The run failed; `bee resume` retries from the last checkpoint.
    Failed,
}

impl RunPhase {
    const ALL: [(RunPhase, &'static str); 7] = [
        (RunPhase::Deploying, "deploying"),
        (RunPhase::Running, "running"),
        (RunPhase::Checkpointing, "checkpointing"),
        (RunPhase::Transferring, "transferring"),
        (RunPhase::Waiting, "waiting"),
        (RunPhase::Completed, "completed"),
        (RunPhase::Failed, "failed"),
    ];

    /// The phase's name, as stored and shown.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(phase, _)| *phase == self).map(|(_, name)| *name).unwrap_or("")
    }

    fn from_name(name: &str) -> Option<RunPhase> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(phase, _)| *phase)
    }

    /// True when nothing more will happen without the user.
    pub fn is_final(self) -> bool {
        matches!(self, RunPhase::Completed)
    }
}

/// One run's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The run's name: its cluster's name.
    pub name: String,
    /// The configuration file it runs.
    pub config: PathBuf,
    /// Where it is.
    pub phase: RunPhase,
    /// Index of the platform it is on, or will start on, in the configuration's list.
    pub platform: usize,
    /// Checkpoints taken so far; more than zero means the data directory holds a state to
    /// restore from.
    pub checkpoints: u32,
    /// The application's exit code, once it completed.
    pub exit_code: Option<i64>,
    /// The last thing that happened, in words.
    pub detail: String,
    /// When the run was created, in seconds since the Unix epoch.
    pub created: u64,
    /// When it last changed.
    pub updated: u64,
}

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// The platform index.
    pub platform: usize,
    /// The phase entered.
    pub phase: RunPhase,
    /// What happened.
    pub detail: String,
}

/// The run database.
pub struct RunStore {
    db: Mutex<Connection>,
    path: PathBuf,
    runs_dir: PathBuf,
}

impl RunStore {
    /// Opens (or creates) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<RunStore, CoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| CoreError::io("cannot create", state_dir, e))?;
        let path = state_dir.join("runs.db");
        let db = Connection::open(&path).map_err(|e| db_error(&path, e))?;
        let store = RunStore { db: Mutex::new(db), path, runs_dir: state_dir.join("runs") };
        store.with(|db| {
            db.busy_timeout(std::time::Duration::from_secs(10))?;
            db.execute_batch(SCHEMA)
        })?;
        Ok(store)
    }

    /// Runs `work` on the connection, turning its errors into [`CoreError::RunDatabase`].
    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CoreError> {
        let mut db = self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut db).map_err(|e| db_error(&self.path, e))
    }

    fn damaged(&self, detail: String) -> CoreError {
        CoreError::RunDatabase { path: self.path.clone(), detail }
    }

    /// The directory that holds a run's data: its latest checkpoint.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.runs_dir.join(name).join("data")
    }

    /// Creates the row of a new run, replacing a completed one of the same name.
    pub fn create(&self, name: &str, config: &Path) -> Result<Run, CoreError> {
        let now = now();
        let run = Run {
            name: name.to_string(),
            config: config.to_path_buf(),
            phase: RunPhase::Deploying,
            platform: 0,
            checkpoints: 0,
            exit_code: None,
            detail: "created".to_string(),
            created: now,
            updated: now,
        };
        self.with(|db| {
            let tx = db.transaction()?;
            tx.execute("DELETE FROM history WHERE run = ?1", params![name])?;
            tx.execute(
                "INSERT OR REPLACE INTO runs VALUES (?1, ?2, ?3, 0, 0, NULL, ?4, ?5, ?5)",
                params![name, config.to_string_lossy(), run.phase.name(), run.detail, now as i64],
            )?;
            append_history(&tx, &run)?;
            tx.commit()
        })?;
        Ok(run)
    }

    /// Stores a run's new state and appends it to its history, in one transaction.
    pub fn save(&self, run: &mut Run) -> Result<(), CoreError> {
        run.updated = now();
        let changed = self.with(|db| {
            let tx = db.transaction()?;
            let changed = tx.execute(
                "UPDATE runs SET phase = ?2, platform = ?3, checkpoints = ?4, exit_code = ?5, \
                 detail = ?6, updated = ?7 WHERE name = ?1",
                params![
                    run.name,
                    run.phase.name(),
                    run.platform as i64,
                    run.checkpoints,
                    run.exit_code,
                    run.detail,
                    run.updated as i64
                ],
            )?;
            if changed > 0 {
                append_history(&tx, run)?;
            }
            tx.commit()?;
            Ok(changed)
        })?;
        match changed {
            0 => Err(CoreError::NoSuchRun { name: run.name.clone() }),
            _ => Ok(()),
        }
    }

    /// The run named `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<Run>, CoreError> {
        let row = self.with(|db| {
            db.query_row("SELECT * FROM runs WHERE name = ?1", params![name], read_run).optional()
        })?;
        row.transpose().map_err(|detail| self.damaged(detail))
    }

    /// Every run, oldest first.
    pub fn list(&self) -> Result<Vec<Run>, CoreError> {
        let rows = self.with(|db| {
            let mut query = db.prepare("SELECT * FROM runs ORDER BY created, name")?;
            let rows = query.query_map([], read_run)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|row| row.map_err(|detail| self.damaged(detail))).collect()
    }

    /// A run's history, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryEntry>, CoreError> {
        let rows = self.with(|db| {
            let mut query = db.prepare(
                "SELECT at, platform, phase, detail FROM history WHERE run = ?1 ORDER BY rowid",
            )?;
            let rows = query.query_map(params![name], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get(2)?, row.get(3)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<(i64, i64, String, String)>>>()
        })?;
        rows.into_iter()
            .map(|(at, platform, phase, detail)| {
                let phase = RunPhase::from_name(&phase).ok_or_else(|| {
                    self.damaged(format!("unknown phase {phase:?} in the history of {name}"))
                })?;
                Ok(HistoryEntry { at: at as u64, platform: platform as usize, phase, detail })
            })
            .collect()
    }

    /// Deletes a run's row, history and data directory.
    pub fn remove(&self, name: &str) -> Result<(), CoreError> {
        let dir = self.runs_dir.join(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io("cannot remove", dir, e)),
        }
        self.with(|db| {
            let tx = db.transaction()?;
            tx.execute("DELETE FROM history WHERE run = ?1", params![name])?;
            tx.execute("DELETE FROM runs WHERE name = ?1", params![name])?;
            tx.commit()
        })
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS runs (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        phase TEXT NOT NULL,
        platform INTEGER NOT NULL,
        checkpoints INTEGER NOT NULL,
        exit_code INTEGER,
        detail TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS history (
        run TEXT NOT NULL,
        at INTEGER NOT NULL,
        platform INTEGER NOT NULL,
        phase TEXT NOT NULL,
        detail TEXT NOT NULL
    );";

fn append_history(tx: &rusqlite::Transaction<'_>, run: &Run) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO history VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run.name, run.updated as i64, run.platform as i64, run.phase.name(), run.detail],
    )
    .map(|_| ())
}

/// Reads a row of `runs`; the inner error says what is wrong with a row SQLite read fine.
fn read_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Run, String>> {
    let name: String = row.get("name")?;
    let phase: String = row.get("phase")?;
    let Some(phase) = RunPhase::from_name(&phase) else {
        return Ok(Err(format!("run {name} has an unknown phase {phase:?}")));
    };
    Ok(Ok(Run {
        config: PathBuf::from(row.get::<_, String>("config")?),
        phase,
        platform: row.get::<_, i64>("platform")? as usize,
        checkpoints: row.get("checkpoints")?,
        exit_code: row.get("exit_code")?,
        detail: row.get("detail")?,
        created: row.get::<_, i64>("created")? as u64,
        updated: row.get::<_, i64>("updated")? as u64,
        name,
    }))
}

fn db_error(path: &Path, err: rusqlite::Error) -> CoreError {
    CoreError::RunDatabase { path: path.to_path_buf(), detail: err.to_string() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_survive_reopening_and_keep_their_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let mut run = store.create("ring", Path::new("/cfg/bee.toml")).unwrap();
        run.phase = RunPhase::Running;
        run.detail = "running on platform 0".to_string();
        store.save(&mut run).unwrap();
        run.phase = RunPhase::Completed;
        run.exit_code = Some(3);
        store.save(&mut run).unwrap();
        drop(store);

        let store = RunStore::open(dir.path()).unwrap();
        let found = store.get("ring").unwrap().unwrap();
        assert_eq!(found, run);
        let phases: Vec<RunPhase> =
            store.history("ring").unwrap().into_iter().map(|h| h.phase).collect();
        assert_eq!(phases, [RunPhase::Deploying, RunPhase::Running, RunPhase::Completed]);
        assert_eq!(store.list().unwrap(), vec![run]);
        assert_eq!(store.data_dir("ring"), dir.path().join("runs/ring/data"));
    }

    #[test]
    fn creating_again_replaces_and_removing_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let mut run = store.create("a", Path::new("/x.toml")).unwrap();
        run.phase = RunPhase::Completed;
        store.save(&mut run).unwrap();
        let run = store.create("a", Path::new("/y.toml")).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().config, PathBuf::from("/y.toml"));
        assert_eq!(store.history("a").unwrap().len(), 1);

        std::fs::create_dir_all(store.data_dir("a")).unwrap();
        store.remove("a").unwrap();
        assert_eq!(store.get("a").unwrap(), None);
        assert!(!dir.path().join("runs/a").exists());
        let mut gone = run;
        let err = store.save(&mut gone).unwrap_err().to_string();
        assert_eq!(err, "no run named \"a\": `bee status` lists the runs there are");
    }
}
