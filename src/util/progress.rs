//! Progress bars for long work. They draw on stderr and hide themselves when stderr is not
//! a terminal (tests, CI, Slurm logs), so output stays clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` units of `unit` (e.g. "step", "tok") with a short message slot.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb
}
