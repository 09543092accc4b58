//! `bee-bench`: bee's benchmarks, each measured side by side with its reference in one run
//! and reported as a ratio.
//!
//! # Limitations
//!
//! No benchmark is implemented yet.

fn main() {
    eprintln!("bee-bench: no benchmark is implemented yet");
    std::process::exit(2);
}
