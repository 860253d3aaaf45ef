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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScorerSpec {
    /// A Hugging Face sequence classifier; score = P(`label`).
    Classifier {
        /// Checkpoint directory, or a hub model id in the offline cache.
        path: String,
        /// An `id2label` name, e.g. "POSITIVE".
        label: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
    Keywords {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
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
        let sample = Sample {
            prompt: "p",
            response: "I'm sorry, I can't help.",
        };
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
            .score_batch(&[Sample {
                prompt: "",
                response: "This movie was wonderful!",
            }])
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
