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

/// `lines` as a JSON-lines file `name` in `dir` (the data readers' unit tests).
#[cfg(test)]
pub(crate) fn write_jsonl(
    dir: &std::path::Path,
    name: &str,
    lines: &[serde_json::Value],
) -> String {
    let p = dir.join(name);
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p.to_string_lossy().into_owned()
}
