//! Progress events: what a front end shows the user while a cluster comes up or goes down.
//!
//! Libraries report steps through [`Events`]; the CLI draws progress bars from them, the
//! Python module may log them, tests may ignore them. Diagnostics go to `tracing` instead.

use std::time::Duration;

/// One thing worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A long step began.
    Started {
        /// What the step does, such as "booting 2 nodes".
        step: String,
    },
    /// A line of detail within the current step.
    Detail {
        /// The line.
        line: String,
    },
    /// The current step ended well.
    Finished {
        /// What the step did.
        step: String,
        /// How long it took.
        elapsed: Duration,
    },
    /// A line for the user outside any step, such as a change of platform.
    Message {
        /// The line.
        line: String,
    },
    /// Degraded but going on, such as software emulation instead of KVM.
    Warning {
        /// What the user should know.
        message: String,
    },
}

/// Receives [`Event`]s.
pub trait Events: Send + Sync {
    /// Reports one event.
    fn event(&self, event: Event);

    /// Reports the start of a step.
    fn started(&self, step: &str) {
        self.event(Event::Started { step: step.to_string() });
    }

    /// Reports a line of detail.
    fn detail(&self, line: &str) {
        self.event(Event::Detail { line: line.to_string() });
    }

    /// Reports the end of a step.
    fn finished(&self, step: &str, elapsed: Duration) {
        self.event(Event::Finished { step: step.to_string(), elapsed });
    }

    /// Reports a line for the user.
    fn message(&self, line: &str) {
        self.event(Event::Message { line: line.to_string() });
    }

    /// Reports a warning.
    fn warning(&self, message: &str) {
        self.event(Event::Warning { message: message.to_string() });
    }
}

/// Drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Events for Quiet {
    fn event(&self, _event: Event) {}
}
