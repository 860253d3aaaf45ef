//! Loaders for the published data-set schemas, behind one registry and one spec.
//!
//! A [`DataSpec`] (embedded in experiment configs as a TOML table) names the files, the
//! schema, which labelled half to keep (`select`), and how many rows; [`load`] resolves it
//! into SFT [`Record`]s. Each schema lives in its own file and says how one row becomes a
//! labelled record:
//! - `imdb`: IMDb reviews (`text`, `label`; 1 = positive), split into an opening and the rest;
//! - `beavertails`: BeaverTails QA pairs (`prompt`, `response`, `category`, `is_safe`);
//! - `alpaca`: Alpaca instructions (`instruction`, `input`, `output`);
//! - `truthfulqa`: TruthfulQA questions and best answers (hub `generation` parquet or CSV);
//! - `jsonl`: elastica's own `{"prompt", "response"}` / `{"text"}` records;
//! - `conversation`: TRL's conversational rows (`messages`, or `prompt` + `completion` lists
//!   of `{"role", "content"}`), rendered by the chat template;
//! - `world`: the synthetic world's data, provided by `crate::data::world`.
//!
//! Rows are kept in file order (files sorted by path), filtered by `select`, optionally
//! shuffled with `shuffle_seed`, then `offset` rows are dropped and `limit` kept. A malformed
//! row stops the load with its file and row number, unless `skip_bad_rows = true`, in which
//! case it is skipped and counted in [`ReadCounts::skipped_bad`].
//!
//! ```toml
//! [positive]
//! path = "stanfordnlp/imdb"   # a file, a directory of shards, or a hub data set id
//! files = "train"             # a split name or a glob (optional)
//! schema = "imdb"
//! select = "positive"
//! limit = 1000
//! shuffle_seed = 42
//! ```
//!
//! Each schema has a default prompt template ([`default_template`]: raw for IMDb), used
//! wherever data is trained on or prompted with and no template was set.

pub mod alpaca;
pub mod beavertails;
pub mod conversation;
pub mod imdb;
pub mod jsonl;
pub mod truthfulqa;

use crate::data::prompts::Prompt;
use crate::data::records::{Record, Turns};
use crate::data::rows::{self, json_kind, Object};
use crate::data::template::Template;
use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ops::ControlFlow;
use std::path::PathBuf;

/// The schema name served by the synthetic world (`crate::data::world`).
pub const WORLD_SCHEMA: &str = "world";

/// Words of a review used as its prompt when a schema splits texts (IMDb). Eight words give
/// the model a clear topic and tone to continue while leaving the rest of the review as the
/// response; `prompt_words` changes it.
pub const DEFAULT_PROMPT_WORDS: usize = 8;

/// Which data to load, as written in a config.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A file, a directory of shards, or a hub data set id in the offline cache.
    pub path: String,
    /// A registry name: `imdb`, `beavertails`, `alpaca`, `truthfulqa`, `jsonl`, or `world`.
    pub schema: String,
    /// Inside a directory: a split name (`train`) or a glob (`round0/30k/train*`).
    pub files: Option<String>,
    /// Which labelled half to keep.
    #[serde(default)]
    pub select: Select,
    /// Keep this many records (after `select`, shuffling and `offset`); fewer is an error, so a
    /// design never runs on less data than it names.
    pub limit: Option<usize>,
    /// Drop this many records first, e.g. to take evaluation prompts that training never saw.
    #[serde(default)]
    pub offset: usize,
    /// Shuffle the selected rows with this seed before `offset`/`limit`; unset keeps file order.
    pub shuffle_seed: Option<u64>,
    /// Skip and count malformed rows instead of stopping at the first.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Words in a prompt when a schema splits texts into prompt and response (IMDb).
    #[serde(default = "default_prompt_words")]
    pub prompt_words: usize,
    /// Which turns of a conversation the loss counts (`conversation` schema): `last`
    /// (default), `assistant` or `all`.
    #[serde(default, skip_serializing_if = "Turns::is_last")]
    pub turns: Turns,
}

fn default_prompt_words() -> usize {
    DEFAULT_PROMPT_WORDS
}

impl DataSpec {
    /// A spec with every optional key at its default.
    pub fn new(path: impl Into<String>, schema: impl Into<String>) -> Self {
        DataSpec {
            path: path.into(),
            schema: schema.into(),
            files: None,
            select: Select::All,
            limit: None,
            offset: 0,
            shuffle_seed: None,
            skip_bad_rows: false,
            prompt_words: DEFAULT_PROMPT_WORDS,
            turns: Turns::Last,
        }
    }

    /// Refuse `turns` on a schema without conversations.
    pub fn check_turns(&self) -> Result<()> {
        if !self.turns.is_last() && self.schema != conversation::SCHEMA.name {
            bail!(
                "turns = \"{}\" (--turns) applies to conversations (schema \"conversation\"), \
                 not to schema \"{}\"",
                self.turns.name(),
                self.schema
            );
        }
        Ok(())
    }
}

/// The labelled half of a data set to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    #[default]
    All,
    Positive,
    Negative,
    Safe,
    Unsafe,
}

impl Select {
    fn accepts(self, class: Class) -> bool {
        match self {
            Select::All => true,
            Select::Positive => class == Class::Positive,
            Select::Negative => class == Class::Negative,
            Select::Safe => class == Class::Safe,
            Select::Unsafe => class == Class::Unsafe,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Select::All => "all",
            Select::Positive => "positive",
            Select::Negative => "negative",
            Select::Safe => "safe",
            Select::Unsafe => "unsafe",
        }
    }
}

/// The label a schema gives a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Positive,
    Negative,
    Safe,
    Unsafe,
    /// Rows without a label (Alpaca, generic JSONL, IMDb's `unsupervised` split).
    Unlabeled,
}

/// Per-load settings a schema may use when turning a row into a record.
#[derive(Debug, Clone)]
pub struct RowOptions {
    pub prompt_words: usize,
    /// Which turns of a conversation count.
    pub turns: Turns,
}

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Row(Record, Class),
    /// A well-formed row that yields no record (an IMDb review too short to split).
    TooShort,
}

/// A registered schema: its name, the selections it supports, and its row parser.
pub struct Schema {
    pub name: &'static str,
    /// One line for listings and error messages.
    pub about: &'static str,
    /// Selections other than `all` this schema's labels support.
    pub selects: &'static [Select],
    pub parse: fn(&Object, &RowOptions) -> Result<Parsed>,
}

/// Every file-backed schema, in the order listings show them.
pub const SCHEMAS: &[Schema] = &[
    imdb::SCHEMA,
    beavertails::SCHEMA,
    alpaca::SCHEMA,
    truthfulqa::SCHEMA,
    jsonl::SCHEMA,
    conversation::SCHEMA,
];

/// All valid schema names, including `world`.
pub fn schema_names() -> Vec<&'static str> {
    SCHEMAS
        .iter()
        .map(|s| s.name)
        .chain([WORLD_SCHEMA])
        .collect()
}

/// The prompt template a schema's data is trained and prompted with when none is set: raw
/// text for IMDb reviews and the synthetic world (the paper trains IMDb without a template,
/// PAPER.md §5), the model's own chat template for conversations, the paper's safe-rlhf
/// conversation template for everything else.
pub fn default_template(schema: &str) -> Template {
    match schema {
        "imdb" | WORLD_SCHEMA => Template::Raw,
        "conversation" => Template::Chat,
        _ => Template::SafeRlhf,
    }
}

/// The default template shared by several data specs (an experiment's positive and negative
/// sets); an error, asking for `[train] template`, when their schemas' defaults differ.
pub fn default_template_of(specs: &[&DataSpec]) -> Result<Template> {
    let mut chosen: Option<(Template, &str)> = None;
    for s in specs {
        let t = default_template(&s.schema);
        match chosen {
            Some((c, first)) if c != t => bail!(
                "no `[train] template` is set, and the data's schemas default to different \
                 templates (\"{first}\" and \"{}\"); set `template` under [train] \
                 (raw, safe-rlhf or chat)",
                s.schema
            ),
            Some(_) => {}
            None => chosen = Some((t, &s.schema)),
        }
    }
    Ok(chosen.map(|c| c.0).unwrap_or(Template::SafeRlhf))
}

/// Look a file-backed schema up by name; unknown names get an error listing the valid ones.
pub fn schema(name: &str) -> Result<&'static Schema> {
    if let Some(s) = SCHEMAS.iter().find(|s| s.name == name) {
        return Ok(s);
    }
    if name == WORLD_SCHEMA {
        bail!(
            "schema \"world\" is the synthetic world's data; it is produced by the world \
             generator (crate::data::world), not read from files"
        );
    }
    bail!(
        "unknown data schema \"{name}\"; valid schemas: {}",
        schema_names().join(", ")
    )
}

/// Records loaded from a [`DataSpec`], with what was skipped and why.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub records: Vec<Record>,
    pub read: ReadCounts,
    /// The first few skipped rows, as "file: line N: reason".
    pub bad_examples: Vec<String>,
    /// Well-formed rows that gave no record (reviews shorter than `prompt_words` + 1 words).
    pub skipped_short: usize,
}

/// How many skipped rows [`Dataset::bad_examples`] keeps.
const BAD_EXAMPLES: usize = 5;

impl Dataset {
    /// The records' prompts (generation prompts for evaluation): a pair's prompt, a
    /// conversation's turns before its answer. Plain-text records have no prompt and are an
    /// error.
    pub fn prompts(&self) -> Result<Vec<Prompt>> {
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Prompt::of_record(r).ok_or_else(|| {
                    anyhow!(
                        "record {} is a plain {{\"text\"}} record with no prompt; evaluation \
                         prompts need {{\"prompt\", \"response\"}} records or conversations",
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// [`Dataset::prompts`] without repeats, in first-seen order (BeaverTails pairs one
    /// prompt with several responses).
    pub fn unique_prompts(&self) -> Result<Vec<Prompt>> {
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .prompts()?
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect())
    }

    /// One line for logs and reports: counts of kept and skipped rows.
    pub fn summary(&self) -> String {
        let mut s = self.read.summary("records", self.records.len());
        if self.read.skipped_bad > 0 {
            if let Some(first) = self.bad_examples.first() {
                s += &format!(" (first: {first})");
            }
        }
        if self.skipped_short > 0 {
            s += &format!("; {} rows too short to split", self.skipped_short);
        }
        s
    }
}

/// "N {what} from R rows in F file(s)[; skipped B malformed rows]": how a load went, for
/// [`Dataset::summary`] and the preference loader's.
/// What reading a spec's files gave before any row was kept or dropped: the same counts for
/// records ([`Dataset`]) and preference pairs ([`crate::data::prefs::PrefDataset`]).
#[derive(Debug, Clone)]
pub struct ReadCounts {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Rows seen in those files (before any filtering).
    pub rows_read: usize,
    /// Malformed rows skipped under `skip_bad_rows = true`.
    pub skipped_bad: usize,
}

impl ReadCounts {
    /// Nothing read yet from `files`.
    pub fn new(files: Vec<PathBuf>) -> Self {
        ReadCounts {
            files,
            rows_read: 0,
            skipped_bad: 0,
        }
    }

    /// "`kept` `what` from N rows in M file(s)", and the malformed rows skipped.
    pub fn summary(&self, what: &str, kept: usize) -> String {
        let mut s = format!(
            "{kept} {what} from {} rows in {} file(s)",
            self.rows_read,
            self.files.len()
        );
        if self.skipped_bad > 0 {
            s += &format!("; skipped {} malformed rows", self.skipped_bad);
        }
        s
    }
}

/// Resolve a spec into records. See the module doc for the order of operations.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    spec.check_turns()?;
    if spec.schema == WORLD_SCHEMA {
        return load_world(spec);
    }
    let files = crate::data::files::resolve(&spec.path, spec.files.as_deref())?;
    load_files(spec, files)
}

/// The world's sets by name, and the `select` value that names each labelled one.
const WORLD_SETS: &[(&str, Select)] = &[
    ("reviews_positive", Select::Positive),
    ("reviews_negative", Select::Negative),
    ("dialogue_safe", Select::Safe),
    ("dialogue_unsafe", Select::Unsafe),
    ("reviews_eval", Select::All),
    ("dialogue_eval", Select::All),
    ("pretrain", Select::All),
];

/// `schema = "world"`: `path` is a directory written by `elastica world` (checked against its
/// `world.json`), and the set is named by `files` (`reviews_positive`, `reviews_eval`,
/// `pretrain`, ...) or by `select` (`positive` / `negative` are the reviews, `safe` / `unsafe`
/// the dialogue answers). The chosen file is then read as generic JSONL with every other key
/// (`limit`, `offset`, `shuffle_seed`, `skip_bad_rows`) applying as usual.
fn load_world(spec: &DataSpec) -> Result<Dataset> {
    let dir = PathBuf::from(&spec.path);
    let dir = if dir.is_file() {
        dir.parent().map(PathBuf::from).unwrap_or_default()
    } else {
        dir
    };
    crate::data::world::World::load(&dir).with_context(|| {
        format!(
            "schema \"world\": {} is not a world directory (write one with `elastica world --out DIR`)",
            dir.display()
        )
    })?;
    let names: Vec<&str> = WORLD_SETS.iter().map(|s| s.0).collect();
    let set = match (spec.files.as_deref(), spec.select) {
        (Some(f), _) => {
            let f = f.trim_end_matches(".jsonl");
            if !names.contains(&f) {
                bail!(
                    "schema \"world\": no set \"{f}\" in a world; valid: {}",
                    names.join(", ")
                );
            }
            f
        }
        (None, Select::All) => bail!(
            "schema \"world\" needs the set: `files = \"reviews_positive\"` (one of {}) or `select = \"positive\"|\"negative\"|\"safe\"|\"unsafe\"`",
            names.join(", ")
        ),
        (None, sel) => WORLD_SETS
            .iter()
            .find(|s| s.1 == sel)
            .map(|s| s.0)
            .context("every labelled select names a world set")?,
    };
    if set.ends_with("_eval") {
        bail!(
            "schema \"world\": {set} holds evaluation prompts only (no responses); give the file {} as the evaluation prompts (e.g. `eval.prompts`) instead",
            dir.join(format!("{set}.jsonl")).display()
        );
    }
    let mut jsonl = spec.clone();
    jsonl.schema = "jsonl".into();
    jsonl.select = Select::All;
    jsonl.files = None;
    load_files(&jsonl, vec![dir.join(format!("{set}.jsonl"))])
}

/// [`load`] on files already resolved (the hub-cache lookup done by the caller).
pub fn load_files(spec: &DataSpec, files: Vec<PathBuf>) -> Result<Dataset> {
    let schema = schema(&spec.schema)?;
    if spec.select != Select::All && !schema.selects.contains(&spec.select) {
        let valid: Vec<&str> = [Select::All]
            .iter()
            .chain(schema.selects)
            .map(|s| s.name())
            .collect();
        bail!(
            "schema \"{}\" has no \"{}\" rows; valid `select` values for it: {}",
            schema.name,
            spec.select.name(),
            valid.join(", ")
        );
    }
    if spec.prompt_words == 0 {
        bail!("prompt_words must be at least 1");
    }
    if spec.limit == Some(0) {
        bail!("limit = 0 selects nothing; remove `limit` to keep every row");
    }
    let opts = RowOptions {
        prompt_words: spec.prompt_words,
        turns: spec.turns,
    };
    // Without shuffling, reading can stop as soon as offset + limit records are in hand.
    let enough = match (spec.shuffle_seed, spec.limit) {
        (None, Some(l)) => Some(spec.offset.saturating_add(l)),
        _ => None,
    };

    let mut ds = Dataset {
        records: Vec::new(),
        read: ReadCounts::new(files.clone()),
        bad_examples: Vec::new(),
        skipped_short: 0,
    };
    'files: for file in &files {
        let mut stop = false;
        rows::for_each_row(file, &mut |loc, row| {
            ds.read.rows_read += 1;
            match row.and_then(|obj| (schema.parse)(&obj, &opts)) {
                Ok(Parsed::Row(record, class)) => {
                    if spec.select.accepts(class) {
                        ds.records.push(record);
                    }
                }
                Ok(Parsed::TooShort) => ds.skipped_short += 1,
                Err(e) if spec.skip_bad_rows => {
                    ds.read.skipped_bad += 1;
                    if ds.bad_examples.len() < BAD_EXAMPLES {
                        ds.bad_examples
                            .push(format!("{}: {loc}: {e:#}", file.display()));
                    }
                }
                Err(e) => bail!(
                    "{}: {loc}: {e:#} (schema \"{}\"); fix the row, or set skip_bad_rows = \
                     true (--skip-bad-rows) to skip and count malformed rows",
                    file.display(),
                    schema.name
                ),
            }
            stop = enough.is_some_and(|n| ds.records.len() >= n);
            Ok(if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        if stop {
            break 'files;
        }
    }

    if ds.read.rows_read == 0 {
        bail!(
            "{} holds no records (no rows in {})",
            spec.path,
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let selected = ds.records.len();
    if let Some(seed) = spec.shuffle_seed {
        ds.records
            .shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let want = spec.offset.saturating_add(spec.limit.unwrap_or(0));
    if selected == 0 || selected < want || selected <= spec.offset {
        let asked = match spec.limit {
            Some(l) => format!("offset {} + limit {l} = {want}", spec.offset),
            None => format!("more than offset {}", spec.offset),
        };
        bail!(
            "{} selects too few records: {selected} match select = \"{}\" but the spec asks for \
             {asked}; {}",
            spec.path,
            spec.select.name(),
            ds.summary()
        );
    }
    ds.records.drain(..spec.offset);
    if let Some(l) = spec.limit {
        ds.records.truncate(l);
    }
    Ok(ds)
}

// Field accessors shared by the schema files; errors name the field and what was found.

fn field<'a>(obj: &'a Object, key: &str) -> Result<&'a Value> {
    match obj.get(key) {
        None => bail!("field \"{key}\" is missing"),
        Some(Value::Null) => bail!("field \"{key}\" is null"),
        Some(v) => Ok(v),
    }
}

pub(crate) fn str_field<'a>(obj: &'a Object, key: &str) -> Result<&'a str> {
    match field(obj, key)? {
        Value::String(s) => Ok(s),
        other => bail!(
            "field \"{key}\" must be a string, found {}",
            describe(other)
        ),
    }
}

pub(crate) fn bool_field(obj: &Object, key: &str) -> Result<bool> {
    match field(obj, key)? {
        Value::Bool(b) => Ok(*b),
        other => bail!(
            "field \"{key}\" must be a boolean, found {}",
            describe(other)
        ),
    }
}

pub(crate) fn int_field(obj: &Object, key: &str) -> Result<i64> {
    match field(obj, key)? {
        Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
        other => bail!(
            "field \"{key}\" must be an integer, found {}",
            describe(other)
        ),
    }
}

/// "a string (\"1\")": the kind plus a short excerpt of the value.
fn describe(v: &Value) -> String {
    let mut shown = v.to_string();
    if shown.len() > 40 {
        let cut = (0..=40)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    format!("{} ({shown})", json_kind(v))
}

/// What the schema files' tests share: fixture paths and the malformed-rows round.
#[cfg(test)]
pub(crate) mod testing {
    use super::{load, DataSpec, Dataset};

    /// A file or directory under tests/fixtures/data.
    pub fn fixture(rel: &str) -> String {
        format!("{}/tests/fixtures/data/{rel}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Load `spec`, expecting an error whose text holds each of `has`.
    pub fn load_fails(spec: &DataSpec, has: &[&str]) {
        let e = format!("{:#}", load(spec).unwrap_err());
        assert!(has.iter().all(|w| e.contains(w)), "{e}");
    }

    /// The `train` files of the fixture directory named after `schema`.
    pub fn train_split(schema: &str) -> DataSpec {
        let mut spec = DataSpec::new(fixture(schema), schema);
        spec.files = Some("train".into());
        spec
    }

    /// Load a fixture with malformed rows twice and check both outcomes: the default load
    /// stops with an error that holds each of `error_has`, and `skip_bad_rows = true` keeps
    /// and skips `(kept, skipped)` rows. Returns the second load's data set.
    pub fn bad_rows(
        rel: &str,
        schema: &str,
        error_has: &[&str],
        counts: (usize, usize),
    ) -> Dataset {
        let mut spec = DataSpec::new(fixture(rel), schema);
        load_fails(&spec, error_has);
        spec.skip_bad_rows = true;
        let ds = load(&spec).unwrap();
        assert_eq!((ds.records.len(), ds.read.skipped_bad), counts);
        ds
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{bad_rows, fixture, load_fails};
    use super::*;

    #[test]
    fn spec_from_toml_with_defaults_and_unknown_keys_rejected() {
        let spec: DataSpec = toml::from_str(
            "path = \"stanfordnlp/imdb\"\nschema = \"imdb\"\nfiles = \"train\"\nselect = \"positive\"\nlimit = 3",
        )
        .unwrap();
        assert_eq!(spec.select, Select::Positive);
        assert_eq!(spec.prompt_words, DEFAULT_PROMPT_WORDS);
        assert!(!spec.skip_bad_rows && spec.offset == 0 && spec.shuffle_seed.is_none());
        let back: DataSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let e =
            toml::from_str::<DataSpec>("path = \"x\"\nschema = \"imdb\"\nlimt = 3").unwrap_err();
        assert!(e.to_string().contains("limt"), "{e}");
        let e = toml::from_str::<DataSpec>("path = \"x\"\nschema = \"imdb\"\nselect = \"good\"")
            .unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
    }

    #[test]
    fn registry_lists_valid_names() {
        let e = format!("{:#}", schema("csv").err().unwrap());
        for name in [
            "imdb",
            "beavertails",
            "alpaca",
            "truthfulqa",
            "jsonl",
            "world",
        ] {
            assert!(e.contains(name), "{e}");
        }
        assert!(schema("world").is_err());
        assert!(load(&DataSpec::new("/nonexistent-world", "world"))
            .unwrap_err()
            .to_string()
            .contains("not a world directory"));
        assert_eq!(schema("alpaca").unwrap().name, "alpaca");
    }

    #[test]
    fn select_must_fit_the_schema() {
        let mut spec = DataSpec::new(fixture("alpaca/alpaca_data.json"), "alpaca");
        spec.select = Select::Positive;
        load_fails(&spec, &["no \"positive\" rows", "all"]);
    }

    #[test]
    fn shuffle_offset_limit_are_deterministic_and_disjoint() {
        let mut spec = DataSpec::new(fixture("imdb"), "imdb");
        spec.shuffle_seed = Some(7);
        spec.limit = Some(3);
        let a = load(&spec).unwrap();
        assert_eq!(
            a.records,
            load(&spec).unwrap().records,
            "same seed, same rows"
        );
        spec.offset = 3;
        spec.limit = Some(4);
        let b = load(&spec).unwrap();
        assert!(
            a.records.iter().all(|r| !b.records.contains(r)),
            "offset skips the first rows"
        );
        // 8 rows in imdb/, one too short: 7 usable; asking for 8 is an error that says so.
        spec.limit = Some(5);
        load_fails(&spec, &["too few records", "7 match"]);

        let mut unshuffled = DataSpec::new(fixture("imdb"), "imdb");
        unshuffled.limit = Some(2);
        let c = load(&unshuffled).unwrap();
        assert_eq!(c.records.len(), 2);
        assert!(c.read.rows_read == 2, "reading stops once the limit is met");
    }

    #[test]
    fn bad_rows_error_with_location_or_are_counted() {
        let ds = bad_rows(
            "generic_bad.jsonl",
            "jsonl",
            &["generic_bad.jsonl: line 2", "skip_bad_rows"],
            (2, 2),
        );
        assert!(
            ds.bad_examples[1].contains("line 3") && ds.bad_examples[1].contains("\"response\"")
        );
        assert!(
            ds.summary().contains("skipped 2 malformed rows"),
            "{}",
            ds.summary()
        );
    }
}

#[cfg(test)]
mod world_schema_tests {
    use super::*;
    use crate::data::world::{Task, World, WorldConfig};

    #[test]
    fn world_sets_load_by_select_or_name_with_the_usual_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WorldConfig {
            seed: 3,
            pretrain_tokens: 5_000,
            n_align: 12,
            n_perturb: 10,
            n_eval: 6,
            vocab_size: 400,
            tokenizer_records: 500,
            ..WorldConfig::default()
        };
        let w = World::generate(&cfg).unwrap();
        w.write(dir.path()).unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        let mut spec = DataSpec::new(&path, "world");
        spec.select = Select::Positive;
        assert_eq!(load(&spec).unwrap().records, w.align(Task::Reviews));
        spec.select = Select::Unsafe;
        assert_eq!(load(&spec).unwrap().records, w.perturb(Task::Dialogue));
        let mut spec = DataSpec::new(&path, "world");
        spec.files = Some("reviews_negative".into());
        spec.offset = 2;
        spec.limit = Some(3);
        assert_eq!(
            load(&spec).unwrap().records,
            w.perturb(Task::Reviews)[2..5].to_vec()
        );
        spec.files = Some("pretrain".into());
        spec.offset = 0;
        spec.limit = None;
        assert_eq!(load(&spec).unwrap().records, w.pretrain());
        spec.files = Some("reviews_eval".into());
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("evaluation prompts only"), "{e}");
        // The set must be named, and only real sets are.
        let e = load(&DataSpec::new(&path, "world"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs the set"), "{e}");
        spec.files = Some("nope".into());
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("no set \"nope\""), "{e}");
    }
}
