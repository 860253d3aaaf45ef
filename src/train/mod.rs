//! Training: tokenized batches, the masked cross-entropy loss, AdamW, learning-rate
//! schedules, the SFT loop with atomic checkpoints and exact resume, and DPO (`dpo`) on the
//! same machinery.

pub mod backprop;
pub mod batch;
pub mod dpo;
pub mod driver;
pub mod eval;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use sft::{train, TrainConfig, TrainRun, TrainSummary};
