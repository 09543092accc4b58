//! What bee's front ends share: the composition of backend, network and storage for a
//! configuration's platforms, the backend and storage of a recorded cluster, the status
//! report, and the progress display. The `bee` command line and the Python module
//! (`bee-py`) are both thin layers over it.

pub mod compose;
pub mod progress;

/// An error with its causes, each once: a cause whose message an earlier one already holds
/// is left out.
pub fn format_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}
