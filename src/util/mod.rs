//! Small shared helpers: atomic file writes and progress bars.

pub mod fsx;
pub mod progress;
