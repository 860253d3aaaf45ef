//! Data: SFT records and their JSONL files, DPO preference pairs (`prefs`), unpaired KTO
//! feedback (`feedback`), generation prompts (`prompts`), prompt templates, loaders for the published
//! data-set schemas, the data flags commands share (`source`), and the synthetic world.

pub mod feedback;
pub mod files;
pub mod hf_cache;
pub mod parquet_pages;
pub mod prefs;
pub mod prompts;
pub mod records;
pub mod rows;
pub mod schemas;
pub mod source;
pub mod template;
pub mod world;
