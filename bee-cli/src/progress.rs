//! What the user sees while bee works: a spinner per step on a terminal, plain lines
//! otherwise (CI logs, pipes). Diagnostics (`-v`) go through `tracing` instead.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use bee_core::events::{Event, Events};
use indicatif::{ProgressBar, ProgressStyle};

/// Draws [`Event`]s on stderr.
pub struct Progress {
    terminal: bool,
    current: Mutex<Option<ProgressBar>>,
}

impl Progress {
    /// A progress display for stderr.
    pub fn new() -> Progress {
        Progress { terminal: std::io::stderr().is_terminal(), current: Mutex::new(None) }
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Events for Progress {
    fn event(&self, event: Event) {
        let Ok(mut current) = self.current.lock() else { return };
        match event {
            Event::Started { step } => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
                if self.terminal {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(step);
                    bar.enable_steady_tick(Duration::from_millis(120));
                    *current = Some(bar);
                } else {
                    eprintln!("bee: {step} ...");
                }
            }
            Event::Detail { line } => match current.as_ref() {
                Some(bar) => bar.set_message(line),
                None if !self.terminal => tracing::info!("{line}"),
                None => {}
            },
            Event::Finished { step, elapsed } => {
                let line = format!("bee: {step}: done in {:.1}s", elapsed.as_secs_f64());
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
                eprintln!("{line}");
            }
            Event::Message { line } => match current.as_ref() {
                Some(bar) => bar.println(format!("bee: {line}")),
                None => eprintln!("bee: {line}"),
            },
            Event::Warning { message } => match current.as_ref() {
                Some(bar) => bar.println(format!("bee: warning: {message}")),
                None => eprintln!("bee: warning: {message}"),
            },
            _ => {}
        }
    }
}
