//! Data: SFT records and their JSONL files, prompt templates, loaders for the published
//! data-set schemas, and the synthetic world.

pub mod records;
