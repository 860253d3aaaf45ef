//! Training: tokenized batches, the masked cross-entropy loss, AdamW, learning-rate
//! schedules and the SFT loop with atomic checkpoints and exact resume.

pub mod backprop;
pub mod batch;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use sft::{train, TrainConfig, TrainRun, TrainSummary};
