//! The data flags of the commands that read records (`train`, `eval-loss`, `rates`): the same
//! [`DataSpec`] the experiment configs use, given either as flags next to `--data PATH`
//! (`--schema imdb --select positive --files train`) or as a TOML file (`--data-config`).
//!
//! Without `--schema`, PATH is read as elastica's own JSONL records, as before; but a file
//! whose first row looks like a published schema (IMDb's `text` + `label`, BeaverTails'
//! `is_safe`, Alpaca's `instruction` + `output`, TruthfulQA's `question` + `best_answer`) is
//! refused with the flags to add, because reading it as generic records would silently train
//! on the wrong text or on both labels.
//!
//! A data-config file holds one spec at top level (`path = ...`, `schema = ...`), or named
//! specs as tables (`[safe]`, `[unsafe]`), which `rates` measures side by side.

use crate::data::records::Turns;
use crate::data::rows;
use crate::data::schemas::{self, DataSpec, Dataset, Select};
use crate::data::template::Template;
use anyhow::{anyhow, bail, Context, Result};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// `--data PATH` and the data flags: the one data set `train` and `eval-loss` read.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataSetArgs {
    /// Data: a file or directory, read with --schema (default: JSONL of
    /// {"prompt","response"} or {"text"} records).
    #[arg(
        long,
        required_unless_present = "data_config",
        conflicts_with = "data_config"
    )]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub flags: DataArgs,
}

impl DataSetArgs {
    /// The one spec `--data` and the flags (or `--data-config`) name.
    pub fn spec(&self) -> Result<DataSpec> {
        self.flags.spec(self.data.as_deref())
    }
}

/// The data flags, defined once and flattened into each command's arguments.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DataArgs {
    /// Schema of --data: imdb, beavertails, alpaca, truthfulqa, conversation (TRL's
    /// {"messages"} / {"prompt","completion"} message lists, with the chat template) or jsonl
    /// (default: records {"prompt","response"} / {"text"}). With --method dpo: jsonl,
    /// pku-saferlhf, hh-rlhf or conversation.
    #[arg(long, conflicts_with = "data_config")]
    pub schema: Option<String>,
    /// Which labelled rows to keep: positive|negative (imdb), safe|unsafe (beavertails).
    #[arg(long, value_enum, conflicts_with = "data_config")]
    pub select: Option<Select>,
    /// Inside a data directory: a split name (train, test) or a glob (*train*.parquet).
    #[arg(long, conflicts_with = "data_config")]
    pub files: Option<String>,
    /// Keep this many records (after --select); fewer is an error.
    #[arg(long, conflicts_with = "data_config")]
    pub limit: Option<usize>,
    /// Skip and count malformed rows instead of stopping at the first.
    #[arg(long, conflicts_with = "data_config")]
    pub skip_bad_rows: bool,
    /// With --schema conversation, which tokens the loss counts: last (the last assistant
    /// turn; TRL's prompt-completion), assistant (every assistant turn; TRL's
    /// assistant_only_loss) or all (every token; TRL's default for {"messages"} rows).
    #[arg(long, value_enum, conflicts_with = "data_config")]
    pub turns: Option<Turns>,
    /// A TOML data spec instead of --data and the flags above: `path`, `schema`, `select`,
    /// `files`, `limit`, `offset`, `shuffle_seed`, `skip_bad_rows`, `prompt_words`, `turns`
    /// (as in the experiment configs), at top level or as named tables.
    #[arg(long)]
    pub data_config: Option<PathBuf>,
}

/// The schema `jsonl` reads when no schema is named.
const DEFAULT_SCHEMA: &str = "jsonl";

impl DataArgs {
    /// The one spec `path` and these flags name (`train`, `eval-loss`).
    pub fn spec(&self, path: Option<&Path>) -> Result<DataSpec> {
        match (&self.data_config, path) {
            (Some(cfg), _) => {
                let mut named = read_data_config(cfg)?;
                if named.len() != 1 {
                    let names: Vec<&str> = named.iter().map(|n| n.0.as_str()).collect();
                    bail!(
                        "{} names {} data sets ({}); this command reads one: give its keys at \
                         top level or as a single table",
                        cfg.display(),
                        named.len(),
                        names.join(", ")
                    );
                }
                Ok(named.remove(0).1)
            }
            (None, Some(p)) => self.flags_spec(&p.to_string_lossy()),
            (None, None) => bail!("give --data PATH or --data-config SPEC.toml"),
        }
    }

    /// Named specs for `rates`: `NAME=PATH` entries read with these flags, or the data-config
    /// file's tables (a top-level spec is named after the file).
    pub fn named_specs(&self, entries: &[String]) -> Result<Vec<(String, DataSpec)>> {
        let named = match &self.data_config {
            Some(cfg) => read_data_config(cfg)?,
            None => rejoin_paths(entries)
                .iter()
                .map(|e| {
                    let (name, path) = e
                        .split_once('=')
                        .map(|(n, p)| (n.trim(), p.trim()))
                        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                        .ok_or_else(|| anyhow!("--data entry {e:?} is not NAME=PATH"))?;
                    Ok((name.to_string(), self.flags_spec(path)?))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if named.is_empty() {
            bail!("no data set given: --data NAME=PATH[,NAME=PATH...] or --data-config SPEC.toml");
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((n, _)) = named.iter().find(|(n, _)| !seen.insert(n.clone())) {
            bail!("the data set {n:?} is named twice");
        }
        Ok(named)
    }

    fn flags_spec(&self, path: &str) -> Result<DataSpec> {
        let mut spec = DataSpec::new(path, self.schema.as_deref().unwrap_or(DEFAULT_SCHEMA));
        spec.files = self.files.clone();
        spec.select = self.select.unwrap_or_default();
        spec.limit = self.limit;
        spec.skip_bad_rows = self.skip_bad_rows;
        spec.turns = self.turns.unwrap_or_default();
        if self.schema.is_none() {
            refuse_known_layouts(&spec)?;
        }
        Ok(spec)
    }
}

/// Load a spec's records, naming the spec's path in any error.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    schemas::load(spec).with_context(|| format!("loading data {}", spec.path))
}

/// The template to use: the one asked for, else the schema's default
/// ([`schemas::default_template`]: raw for IMDb, as in the paper).
pub fn template_for(asked: Option<Template>, spec: &DataSpec) -> Template {
    asked.unwrap_or_else(|| schemas::default_template(&spec.schema))
}

fn read_data_config(path: &Path) -> Result<Vec<(String, DataSpec)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read data config {}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let bad = |e: toml::de::Error| anyhow!("{}: not a data spec: {e}", path.display());
    if value.contains_key("path") {
        let spec: DataSpec = toml::from_str(&text).map_err(bad)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        return Ok(vec![(name, spec)]);
    }
    let mut out = Vec::new();
    for (name, v) in value {
        if !v.is_table() {
            bail!(
                "{}: key \"{name}\" is not a table; a data config holds one spec (`path`, \
                 `schema`, ...) at top level or named tables of them",
                path.display()
            );
        }
        let spec: DataSpec = v
            .try_into()
            .map_err(|e| anyhow!("{}: [{name}]: not a data spec: {e}", path.display()))?;
        out.push((name, spec));
    }
    if out.is_empty() {
        bail!("{} holds no data spec", path.display());
    }
    Ok(out)
}

/// A published schema recognised from a row's field names.
struct Layout {
    schema: &'static str,
    /// Fields that all must be present.
    fields: &'static [&'static str],
    flags: &'static str,
}

const LAYOUTS: &[Layout] = &[
    Layout {
        schema: "beavertails",
        fields: &["prompt", "response", "is_safe"],
        flags: "--schema beavertails --select safe (or unsafe); --schema jsonl uses every row, safe and unsafe alike",
    },
    Layout {
        schema: "imdb",
        fields: &["text", "label"],
        flags: "--schema imdb --select positive (or negative)",
    },
    Layout {
        schema: "alpaca",
        fields: &["instruction", "output"],
        flags: "--schema alpaca",
    },
    // Also the original CSV's "Question", "Best Answer" (keys are compared normalised).
    Layout {
        schema: "truthfulqa",
        fields: &["question", "best_answer"],
        flags: "--schema truthfulqa",
    },
];

/// With no schema named, refuse a file whose first row has a published schema's fields.
/// Files that cannot be read are left to the load, which says why.
fn refuse_known_layouts(spec: &DataSpec) -> Result<()> {
    let Ok(files) = crate::data::files::resolve(&spec.path, spec.files.as_deref()) else {
        return Ok(());
    };
    let Some(first) = files.first() else {
        return Ok(());
    };
    let mut keys: Option<Vec<String>> = None;
    // Any error here is the load's to report, with its usual detail.
    let _ = rows::for_each_row(first, &mut |_, row| {
        if let Ok(obj) = row {
            // "Best Answer" (a CSV header) reads as "best_answer".
            keys = Some(
                obj.keys()
                    .map(|k| k.to_lowercase().replace(' ', "_"))
                    .collect(),
            );
        }
        Ok(ControlFlow::Break(()))
    });
    let Some(keys) = keys else {
        return Ok(());
    };
    if let Some(l) = LAYOUTS
        .iter()
        .find(|l| l.fields.iter().all(|f| keys.iter().any(|k| k == f)))
    {
        bail!(
            "{} looks like {} data (fields {}), but no schema was named, so it would be read as \
             generic {{\"prompt\",\"response\"}} / {{\"text\"}} records; add {}",
            first.display(),
            l.schema,
            l.fields.join(", "),
            l.flags
        );
    }
    Ok(())
}

/// `NAME=PATH` entries as the comma-separated flag splits them, with the pieces of a path that
/// holds a comma joined again: a piece with no `=` cannot start an entry, so it continues the
/// one before it.
fn rejoin_paths(pieces: &[String]) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for p in pieces {
        match entries.last_mut() {
            Some(last) if !p.contains('=') => {
                last.push(',');
                last.push_str(p);
            }
            _ => entries.push(p.clone()),
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_path_with_a_comma_is_joined_again() {
        let pieces: Vec<String> = ["a=/d/x", "y/f.jsonl", "b=g.jsonl", "c=h,i=j"]
            .iter()
            .flat_map(|e| e.split(','))
            .map(String::from)
            .collect();
        assert_eq!(
            rejoin_paths(&pieces),
            ["a=/d/x,y/f.jsonl", "b=g.jsonl", "c=h", "i=j"]
        );
    }

    fn fixture(rel: &str) -> PathBuf {
        schemas::testing::fixture(rel).into()
    }

    #[test]
    fn flags_build_the_spec_and_known_layouts_need_a_schema() {
        let a = DataArgs {
            schema: Some("imdb".into()),
            select: Some(Select::Negative),
            files: Some("train".into()),
            limit: Some(2),
            ..DataArgs::default()
        };
        let spec = a.spec(Some(&fixture("imdb"))).unwrap();
        assert_eq!(
            (
                spec.schema.as_str(),
                spec.select,
                spec.files.as_deref(),
                spec.limit
            ),
            ("imdb", Select::Negative, Some("train"), Some(2))
        );
        let none = DataArgs::default();
        for (rel, hint) in [
            ("imdb", "--schema imdb --select positive"),
            ("alpaca/alpaca_data.json", "--schema alpaca"),
            ("beavertails", "--schema beavertails --select safe"),
            ("TruthfulQA.csv", "--schema truthfulqa"),
        ] {
            let e = format!("{:#}", none.spec(Some(&fixture(rel))).unwrap_err());
            assert!(e.contains(hint) && e.contains("looks like"), "{rel}: {e}");
        }
        // Generic records need no flag.
        let spec = none.spec(Some(&fixture("generic.jsonl"))).unwrap();
        assert_eq!(spec.schema, "jsonl");

        // rates' NAME=PATH entries.
        let g = fixture("generic.jsonl").to_string_lossy().into_owned();
        let named = none.named_specs(&[format!("align={g}")]).unwrap();
        assert_eq!(
            (named[0].0.as_str(), named[0].1.path.as_str()),
            ("align", g.as_str())
        );
        for bad in [g.clone(), format!("={g}"), "x=".into()] {
            let e = format!("{:#}", none.named_specs(&[bad]).unwrap_err());
            assert!(e.contains("NAME=PATH"), "{e}");
        }
        let e = format!(
            "{:#}",
            none.named_specs(&[format!("a={g}"), format!("a={g}")])
                .unwrap_err()
        );
        assert!(e.contains("named twice"), "{e}");
    }

    #[test]
    fn data_config_holds_one_spec_or_named_tables() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("pos.toml");
        let imdb = fixture("imdb").to_string_lossy().into_owned();
        std::fs::write(
            &one,
            format!("path = {imdb:?}\nschema = \"imdb\"\nselect = \"positive\"\n"),
        )
        .unwrap();
        let a = DataArgs {
            data_config: Some(one.clone()),
            ..DataArgs::default()
        };
        assert_eq!(a.spec(None).unwrap().select, Select::Positive);
        assert_eq!(a.named_specs(&[]).unwrap()[0].0, "pos");

        let two = dir.path().join("two.toml");
        std::fs::write(
            &two,
            format!("[pos]\npath = {imdb:?}\nschema = \"imdb\"\nselect = \"positive\"\n[neg]\npath = {imdb:?}\nschema = \"imdb\"\nselect = \"negative\"\n"),
        )
        .unwrap();
        let a = DataArgs {
            data_config: Some(two),
            ..DataArgs::default()
        };
        let named = a.named_specs(&[]).unwrap();
        assert_eq!(named.len(), 2);
        let e = format!("{:#}", a.spec(None).unwrap_err());
        assert!(e.contains("names 2 data sets"), "{e}");

        std::fs::write(
            &one,
            "path = \"x\"\nschema = \"imdb\"\nselct = \"positive\"\n",
        )
        .unwrap();
        let a = DataArgs {
            data_config: Some(one),
            ..DataArgs::default()
        };
        let e = format!("{:#}", a.spec(None).unwrap_err());
        assert!(e.contains("pos.toml") && e.contains("selct"), "{e}");
    }
}
