//! Small shared helpers: atomic file writes, progress bars, parallel jobs, thread set-up.

pub mod fsx;
pub mod parallel;
pub mod progress;
pub mod threads;
