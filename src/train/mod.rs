//! Training: tokenized batches, the masked cross-entropy loss, AdamW, learning-rate
//! schedules, one training loop (`driver`) with atomic checkpoints and exact resume, and the
//! methods it runs: SFT (`sft`, which also holds the shared run settings), DPO on pairs
//! (`dpo`) and KTO on unpaired feedback (`kto`), the last two against a reference model whose
//! cached log-probs `reference` keeps. `recipe` resolves a run of any of the three from its
//! data and drives it: `train(lm, records | pairs | feedback, ..)`.

pub mod backprop;
pub mod batch;
pub mod config;
pub mod dpo;
pub mod driver;
pub mod eval;
pub mod fused;
pub mod kto;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod recipe;
pub mod reference;
pub mod run_dir;
pub mod schedule;
pub mod sft;

pub use config::TrainConfig;
pub use recipe::{resume_point, train};
pub use sft::{TrainRun, TrainSummary};
