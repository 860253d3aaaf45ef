//! Small shared helpers: durable file writes and locks, progress, parallel jobs, thread
//! set-up, the machine's memory.

pub mod fsx;
pub mod parallel;
pub mod progress;
pub mod sysmem;
pub mod threads;
