//! Experiment 1 of the paper (PAPER.md §3): models resist alignment. The base model is
//! fine-tuned on S slices of an SFT data set in sequence (theta_1 .. theta_S); each
//! checkpoint answers the same held-out prompts (gen_k); for every pair k < l, theta_k is
//! fine-tuned on gen_l ("forward") and theta_l on gen_k ("inverse") with the same samples,
//! hyper-parameters and seed. Resistance means the inverse run reaches the lower training
//! loss.
//!
//! - [`config`]: `resist.toml` and its validation;
//! - [`slices`]: the split into slices and held-out prompts;
//! - [`plan`]: the pairs, which own the sample count both directions share;
//! - [`cells`]: the cell kinds (slice fine-tune, generation, pair fine-tune);
//! - [`pipeline`]: planning the grid of cells, running it, and [`run`];
//! - [`results`]: the comparison, statistics, table, plots and report;
//! - [`instruments`]: KL by position, coherence and capability of each checkpoint, and
//!   the weight-space movement of each pair fine-tune, appended to the report.

pub mod cells;
pub mod config;
pub mod instruments;
pub mod pipeline;
pub mod plan;
pub mod results;
pub mod slices;

pub use config::ResistConfig;
pub use pipeline::{run, run_with};
pub use plan::{Direction, PairPlan};
pub use results::{markdown_summary, ResistResults};
