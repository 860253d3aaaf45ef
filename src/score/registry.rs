//! The scorer registry: a [`ScorerSpec`] (a TOML table in experiment configs, tagged by
//! `kind`) built into a boxed [`Scorer`]. Unknown kinds get an error listing the valid ones.
//!
//! ```toml
//! [scorer]
//! kind = "classifier"          # or "keywords", "world-sentiment", "world-safety", "cost-model"
//! path = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"  # dir or cached hub id
//! label = "POSITIVE"
//! max_length = 512             # optional; default: the model's positions
//! ```

use crate::score::classifier::{ClassifierInput, ClassifierOptions, ClassifierScorer};
use crate::score::keywords::KeywordScorer;
use crate::score::Scorer;
use anyhow::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every registered scorer kind, as written in `kind = "..."`.
pub const KINDS: &[&str] = &[
    "classifier",
    "keywords",
    "world-sentiment",
    "world-safety",
    "cost-model",
];

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScorerSpec {
    /// A Hugging Face sequence classifier; score = P(`label`).
    Classifier {
        /// Checkpoint directory, or a hub model id in the offline cache.
        path: String,
        /// An `id2label` name, e.g. "POSITIVE".
        label: String,
        max_length: Option<usize>,
        #[serde(default = "default_batch_size")]
        batch_size: usize,
        /// `"response"` (default) or `"prompt+response"`.
        #[serde(default)]
        input: ClassifierInput,
        #[serde(default = "yes")]
        higher_is_aligned: bool,
    },
    /// Refusal keyword matcher; `path` replaces the built-in list.
    Keywords { path: Option<PathBuf> },
    /// The synthetic world's exact sentiment rule (`crate::score::world`).
    WorldSentiment,
    /// The synthetic world's exact safety rule (`crate::score::world`).
    WorldSafety,
    /// A safe-rlhf score model (`LlamaForScore`: Llama backbone + `score_head`), e.g.
    /// PKU-Alignment's beaver-7b cost model, on prompt + response in the safe-rlhf template.
    CostModel {
        path: String,
        #[serde(default = "default_cost_max_length")]
        max_length: usize,
    },
}

fn default_batch_size() -> usize {
    16
}
fn default_cost_max_length() -> usize {
    512
}
fn yes() -> bool {
    true
}

impl ScorerSpec {
    /// The `kind` this spec was written with.
    pub fn kind(&self) -> &'static str {
        match self {
            ScorerSpec::Classifier { .. } => "classifier",
            ScorerSpec::Keywords { .. } => "keywords",
            ScorerSpec::WorldSentiment => "world-sentiment",
            ScorerSpec::WorldSafety => "world-safety",
            ScorerSpec::CostModel { .. } => "cost-model",
        }
    }
}

/// Build the scorer a spec names; model-backed scorers load onto `device`.
pub fn build(spec: &ScorerSpec, device: &Device) -> Result<Box<dyn Scorer>> {
    Ok(match spec {
        ScorerSpec::Classifier {
            path,
            label,
            max_length,
            batch_size,
            input,
            higher_is_aligned,
        } => {
            let opts = ClassifierOptions {
                label: label.clone(),
                max_length: *max_length,
                batch_size: *batch_size,
                input: *input,
                higher_is_aligned: *higher_is_aligned,
            };
            Box::new(ClassifierScorer::load(path, opts, device)?)
        }
        ScorerSpec::Keywords { path: None } => Box::new(KeywordScorer::builtin()),
        ScorerSpec::Keywords { path: Some(p) } => Box::new(KeywordScorer::from_file(p)?),
        ScorerSpec::WorldSentiment | ScorerSpec::WorldSafety => {
            crate::score::world::by_name(spec.kind())?
        }
        ScorerSpec::CostModel { path, max_length } => Box::new(
            crate::score::cost_model::CostModelScorer::load(path, *max_length, device)?,
        ),
    })
}

/// Build from a TOML table's text; errors name the valid kinds.
pub fn parse_spec(toml_text: &str) -> Result<ScorerSpec> {
    toml::from_str(toml_text)
        .map_err(|e| anyhow::anyhow!("invalid scorer spec: {e}valid kinds: {}", KINDS.join(", ")))
}

/// A scorer spec as typed on the command line (`elastica score --scorer SPEC`): a kind that
/// needs no keys (`keywords`, `world-sentiment`, `world-safety`), the keys of a `[scorer]`
/// table inline (`kind = "cost-model", path = "DIR"`), or a TOML file holding them (at top
/// level or in a `[scorer]` table).
pub fn parse_cli_spec(arg: &str) -> Result<ScorerSpec> {
    let arg = arg.trim();
    let path = std::path::Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read scorer spec {}: {e}", path.display()))?;
        let v: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("scorer spec {} is not TOML: {e}", path.display()))?;
        let table = match v.get("scorer") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => v,
        };
        return parse_spec(&toml::to_string(&table)?)
            .map_err(|e| anyhow::anyhow!("in {}: {e:#}", path.display()));
    }
    if arg.contains('=') {
        let text = format!("scorer = {{ {arg} }}");
        let v: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--scorer {arg:?} is not a list of TOML keys (e.g. kind = \"cost-model\", \
                 path = \"DIR\"): {e}"
            )
        })?;
        let Some(toml::Value::Table(t)) = v.get("scorer") else {
            unreachable!("the wrapper is a table")
        };
        return parse_spec(&toml::to_string(t)?);
    }
    // A JSON string is a valid TOML basic string.
    parse_spec(&format!("kind = {}", serde_json::to_string(arg)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Sample;

    #[test]
    fn specs_from_toml_with_defaults() {
        let s = parse_spec("kind = \"classifier\"\npath = \"m\"\nlabel = \"POSITIVE\"").unwrap();
        assert_eq!(
            s,
            ScorerSpec::Classifier {
                path: "m".into(),
                label: "POSITIVE".into(),
                max_length: None,
                batch_size: 16,
                input: ClassifierInput::Response,
                higher_is_aligned: true
            }
        );
        let s = parse_spec("kind = \"classifier\"\npath = \"m\"\nlabel = \"X\"\ninput = \"prompt+response\"\nmax_length = 128").unwrap();
        let ScorerSpec::Classifier {
            input, max_length, ..
        } = &s
        else {
            panic!()
        };
        assert_eq!(
            (*input, *max_length),
            (ClassifierInput::PromptResponse, Some(128))
        );
        assert_eq!(
            parse_spec("kind = \"keywords\"").unwrap(),
            ScorerSpec::Keywords { path: None }
        );
        assert_eq!(
            parse_spec("kind = \"world-safety\"").unwrap(),
            ScorerSpec::WorldSafety
        );
        let back = toml::to_string(&s).unwrap();
        assert_eq!(parse_spec(&back).unwrap(), s);
    }

    #[test]
    fn command_line_specs_name_kind_inline_keys_or_a_file() {
        assert_eq!(
            parse_cli_spec("world-safety").unwrap(),
            ScorerSpec::WorldSafety
        );
        assert_eq!(
            parse_cli_spec("keywords").unwrap(),
            ScorerSpec::Keywords { path: None }
        );
        assert_eq!(
            parse_cli_spec("kind = \"cost-model\", path = \"m\"").unwrap(),
            ScorerSpec::CostModel {
                path: "m".into(),
                max_length: 512
            }
        );
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("s.toml");
        std::fs::write(&f, "[scorer]\nkind = \"keywords\"\npath = \"list.txt\"\n").unwrap();
        assert_eq!(
            parse_cli_spec(&f.to_string_lossy()).unwrap(),
            ScorerSpec::Keywords {
                path: Some("list.txt".into())
            }
        );
        std::fs::write(&f, "kind = \"world-sentiment\"\n").unwrap();
        assert_eq!(
            parse_cli_spec(&f.to_string_lossy()).unwrap(),
            ScorerSpec::WorldSentiment
        );
        let e = format!("{:#}", parse_cli_spec("sentiment").unwrap_err());
        assert!(
            e.contains("world-sentiment") && e.contains("cost-model"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse_cli_spec("kind = \"classifier\", path = ").unwrap_err()
        );
        assert!(e.contains("not a list of TOML keys"), "{e}");
        // A cost model needs its path.
        let e = format!("{:#}", parse_cli_spec("cost-model").unwrap_err());
        assert!(e.contains("path"), "{e}");
    }

    #[test]
    fn unknown_kinds_and_keys_are_errors_that_list_the_valid_ones() {
        let e = format!("{:#}", parse_spec("kind = \"sentiment\"").unwrap_err());
        for k in KINDS {
            assert!(e.contains(k), "{e}");
        }
        let e = format!(
            "{:#}",
            parse_spec("kind = \"keywords\"\nlist = \"x\"").unwrap_err()
        );
        assert!(e.contains("list"), "{e}");
        let e = format!(
            "{:#}",
            parse_spec("kind = \"classifier\"\npath = \"m\"").unwrap_err()
        );
        assert!(e.contains("label"), "{e}");
    }

    #[test]
    fn builds_keywords_and_classifier_and_explains_hooks() {
        let k = build(&ScorerSpec::Keywords { path: None }, &Device::Cpu).unwrap();
        let sample = Sample::new("p", "I'm sorry, I can't help.");
        assert_eq!(
            (k.name(), k.score_batch(&[sample]).unwrap()),
            ("keywords", vec![1.0])
        );

        let path = format!("{}/tests/fixtures/scorers/bert", env!("CARGO_MANIFEST_DIR"));
        let spec = parse_spec(&format!(
            "kind = \"classifier\"\npath = \"{path}\"\nlabel = \"POSITIVE\"\nbatch_size = 2"
        ))
        .unwrap();
        let c = build(&spec, &Device::Cpu).unwrap();
        let got = c
            .score_batch(&[Sample::new("", "This movie was wonderful!")])
            .unwrap();
        assert!(got[0] > 0.0 && got[0] < 1.0);

        let path = format!(
            "{}/tests/fixtures/scorers/cost-model",
            env!("CARGO_MANIFEST_DIR")
        );
        let spec = parse_spec(&format!("kind = \"cost-model\"\npath = \"{path}\"")).unwrap();
        let c = build(&spec, &Device::Cpu).unwrap();
        assert_eq!((c.name(), c.higher_is_aligned()), ("cost-model", false));
    }
}
