//! Small shared helpers: atomic file writes, progress bars, parallel jobs.

pub mod fsx;
pub mod parallel;
pub mod progress;
