//! Hugging Face sequence classifiers as scorers: score = P(label named in the config), e.g.
//! P(POSITIVE) from an IMDb/SST-2 sentiment model, the paper's IMDb metric.
//!
//! A checkpoint is a local directory (or a hub model id in the offline cache) holding
//! `config.json`, `model.safetensors` and `tokenizer.json`. The label is looked up in
//! `config.json`'s `id2label`. Texts are tokenized with the checkpoint's own tokenizer.json
//! (special tokens added, truncated on the right to `max_length`), sorted by length and run in
//! batches padded on the right with an attention mask, then put back in input order.
//!
//! The read-out follows transformers' text-classification pipeline: softmax over the labels;
//! sigmoid when `problem_type` is multi-label or there is one label; the raw logit for
//! `problem_type = "regression"`.

use crate::data::hf_cache::{self, RepoKind};
use crate::score::encoder::{self, Batch, SequenceClassifier};
use crate::score::{Sample, Scorer};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// Which text of a sample the classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClassifierInput {
    /// The response alone: what the model under test wrote.
    #[default]
    #[serde(rename = "response")]
    Response,
    /// Prompt and response concatenated verbatim (trl's IMDb sentiment example scores
    /// query + response this way).
    #[serde(rename = "prompt+response")]
    PromptResponse,
}

/// Settings of a classifier scorer (the registry's `kind = "classifier"` table).
#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    /// The `id2label` name whose probability is the score.
    pub label: String,
    /// Truncate inputs to this many tokens; default and upper bound: the model's positions.
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    pub batch_size: usize,
    pub input: ClassifierInput,
    /// Whether a higher P(label) is the aligned behaviour (true for POSITIVE, false for a
    /// toxicity label).
    pub higher_is_aligned: bool,
}

impl ClassifierOptions {
    pub fn new(label: impl Into<String>) -> Self {
        ClassifierOptions {
            label: label.into(),
            max_length: None,
            batch_size: 16,
            input: ClassifierInput::Response,
            higher_is_aligned: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Readout {
    Softmax,
    Sigmoid,
    Logit,
}

pub struct ClassifierScorer {
    model: Box<dyn SequenceClassifier>,
    tokenizer: Tokenizer,
    labels: Vec<String>,
    label_index: usize,
    readout: Readout,
    pad_id: u32,
    max_length: usize,
    opts: ClassifierOptions,
    device: Device,
    dir: PathBuf,
}

impl ClassifierScorer {
    /// Load from a checkpoint directory, or from a hub model id found in the offline cache.
    pub fn load(path: &str, opts: ClassifierOptions, device: &Device) -> Result<Self> {
        let p = Path::new(path);
        let dir = if p.is_dir() {
            p.to_path_buf()
        } else if !p.exists() && hf_cache::looks_like_repo_id(path) {
            hf_cache::resolve_hf_cache(RepoKind::Model, path).with_context(|| {
                format!("classifier path \"{path}\" is not a directory, so it was taken as a hub model id")
            })?
        } else {
            bail!(
                "classifier path {} is not a checkpoint directory",
                p.display()
            );
        };
        Self::load_dir(&dir, opts, device)
            .with_context(|| format!("loading the classifier checkpoint {}", dir.display()))
    }

    fn load_dir(dir: &Path, opts: ClassifierOptions, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", config_path.display()))?;

        let labels = labels(&config)?;
        let label_index = find_label(&labels, &opts.label)?;
        let readout = match config["problem_type"].as_str() {
            Some("regression") => Readout::Logit,
            Some("multi_label_classification") => Readout::Sigmoid,
            _ if labels.len() == 1 => Readout::Sigmoid,
            _ => Readout::Softmax,
        };

        let files = encoder::safetensors_files(dir)?;
        let vb = encoder::var_builder(&files, device)?;
        let model = encoder::load_classifier(&config, vb, labels.len())?;

        let max_length = match opts.max_length {
            None => model.max_positions(),
            Some(0) => bail!("max_length must be at least 1"),
            Some(m) if m > model.max_positions() => bail!(
                "max_length {m} exceeds the model's {} positions; use at most {}",
                model.max_positions(),
                model.max_positions()
            ),
            Some(m) => m,
        };
        if opts.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            bail!(
                "{} is missing; elastica reads the fast-tokenizer file. Create it with \
                 python -c \"from transformers import AutoTokenizer; \
                 AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')\"",
                tok_path.display(),
                d = dir.display()
            );
        }
        // As transformers reads it: BERT's and RoBERTa's classes rebuild it from
        // tokenizer_config.json's flags (`model::tokenizer_class`).
        let model_type = config.get("model_type").and_then(|t| t.as_str());
        let (mut tokenizer, _) = crate::model::tokenizer::read_as_transformers(dir, model_type)?;
        // Padding is done here, with the model's pad id; a padding config in the file (some
        // pad to a fixed 512) would only waste work.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("{}: cannot set truncation: {e}", tok_path.display()))?;
        let pad_id = match config.get("pad_token_id").and_then(|v| v.as_u64()) {
            Some(id) => u32::try_from(id).context("config.json: pad_token_id is too large")?,
            None => ["[PAD]", "<pad>"]
                .iter()
                .find_map(|t| tokenizer.token_to_id(t))
                .unwrap_or(0),
        };

        Ok(ClassifierScorer {
            model,
            tokenizer,
            labels,
            label_index,
            readout,
            pad_id,
            max_length,
            opts,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// The checkpoint's labels, by class index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The truncation length in effect.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of one text as the scorer feeds it (special tokens added, truncated).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The read-out (probability, or logit for regression heads) of every label for each text.
    pub fn label_scores(&self, texts: &[&str]) -> Result<Vec<Vec<f64>>> {
        let encoded: Vec<(Vec<u32>, Vec<u32>)> = texts
            .iter()
            .map(|t| {
                let enc = self
                    .tokenizer
                    .encode(*t, true)
                    .map_err(|e| anyhow::anyhow!("cannot tokenize a text: {e}"))?;
                Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
            })
            .collect::<Result<_>>()?;
        // Longest first, so each batch pads to similar lengths; results go back by index.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].0.len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.opts.batch_size) {
            let rows: Vec<&(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| &encoded[i]).collect();
            let batch = self.batch(&rows)?;
            let logits: Vec<Vec<f32>> = self.model.logits(&batch)?.to_vec2()?;
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = self.read_out(&row);
            }
        }
        Ok(out)
    }

    /// The score of each text: the read-out of the configured label.
    pub fn score_texts(&self, texts: &[&str]) -> Result<Vec<f64>> {
        Ok(self
            .label_scores(texts)?
            .into_iter()
            .map(|p| p[self.label_index])
            .collect())
    }

    fn batch(&self, rows: &[&(Vec<u32>, Vec<u32>)]) -> Result<Batch> {
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(1);
        let pad = |v: &[u32], with: u32| {
            let mut v = v.to_vec();
            v.resize(len, with);
            v
        };
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| pad(&r.0, self.pad_id)).collect();
        let types: Vec<Vec<u32>> = rows.iter().map(|r| pad(&r.1, 0)).collect();
        let mask: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| {
                (0..len)
                    .map(|j| if j < r.0.len() { 1.0 } else { 0.0 })
                    .collect()
            })
            .collect();
        Ok(Batch {
            input_ids: Tensor::new(ids.clone(), &self.device)?,
            attention_mask: Tensor::new(mask, &self.device)?,
            token_type_ids: Tensor::new(types, &self.device)?,
            ids_host: ids,
        })
    }

    fn read_out(&self, logits: &[f32]) -> Vec<f64> {
        let z: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
        match self.readout {
            Readout::Logit => z,
            Readout::Sigmoid => z.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            Readout::Softmax => {
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|x| x / s).collect()
            }
        }
    }
}

impl Scorer for ClassifierScorer {
    fn name(&self) -> &str {
        "classifier"
    }
    fn higher_is_aligned(&self) -> bool {
        self.opts.higher_is_aligned
    }
    fn score_batch(&self, samples: &[Sample<'_>]) -> Result<Vec<f64>> {
        let joined: Vec<String>;
        let texts: Vec<&str> = match self.opts.input {
            ClassifierInput::Response => samples.iter().map(|s| s.response).collect(),
            ClassifierInput::PromptResponse => {
                joined = samples
                    .iter()
                    .map(|s| format!("{}{}", s.prompt, s.response))
                    .collect();
                joined.iter().map(String::as_str).collect()
            }
        };
        self.score_texts(&texts)
    }
}

/// Labels by index from `id2label` (keys are stringified indices); HF's default names
/// LABEL_0.. when the config has only `num_labels`.
fn labels(config: &serde_json::Value) -> Result<Vec<String>> {
    if let Some(map) = config.get("id2label").and_then(|v| v.as_object()) {
        let n = map.len();
        let mut out = vec![String::new(); n];
        for (k, v) in map {
            let i: usize = k.parse().ok().filter(|i| *i < n).with_context(|| {
                format!("config.json: id2label key \"{k}\" is not an index below {n}")
            })?;
            out[i] = v
                .as_str()
                .with_context(|| format!("config.json: id2label[\"{k}\"] must be a string"))?
                .to_owned();
        }
        if n == 0 {
            bail!("config.json: id2label is empty");
        }
        return Ok(out);
    }
    let n = encoder::usize_key(config, "num_labels", Some(2))?;
    Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
}

/// The index of `label`: an exact match, else the only case-insensitive match.
fn find_label(labels: &[String], label: &str) -> Result<usize> {
    if let Some(i) = labels.iter().position(|l| l == label) {
        return Ok(i);
    }
    let folded: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].eq_ignore_ascii_case(label))
        .collect();
    if let [i] = folded[..] {
        return Ok(i);
    }
    bail!(
        "label \"{label}\" is not one of this classifier's labels: {} (from config.json id2label)",
        labels
            .iter()
            .map(|l| format!("\"{l}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/scorers")
            .join(name)
    }

    /// One reference run: the truncation length, the token ids, P(POSITIVE), P(NEGATIVE).
    type Run = (usize, Vec<Vec<u32>>, Vec<f64>, Vec<f64>);

    struct Reference {
        texts: Vec<String>,
        runs: Vec<Run>,
    }

    fn reference(name: &str) -> Reference {
        let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let texts = serde_json::from_value(v["texts"].clone()).unwrap();
        let runs = ["full", "short"]
            .iter()
            .map(|k| {
                let r = &v[*k];
                (
                    r["max_length"].as_u64().unwrap() as usize,
                    serde_json::from_value(r["input_ids"].clone()).unwrap(),
                    serde_json::from_value(r["p_positive"].clone()).unwrap(),
                    serde_json::from_value(r["p_negative"].clone()).unwrap(),
                )
            })
            .collect();
        Reference { texts, runs }
    }

    /// Token ids and P(POSITIVE)/P(NEGATIVE) match transformers within 1e-5 (the observed
    /// gap is under 1e-6; 1e-5 still catches tanh-GELU in place of erf-GELU), at full
    /// length and truncated, and do not depend on the batch size.
    fn matches_transformers(name: &str) {
        let r = reference(name);
        let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
        for (max_length, ids, p_pos, p_neg) in &r.runs {
            for batch_size in [16, 3, 1] {
                let mut opts = ClassifierOptions::new("POSITIVE");
                opts.max_length = Some(*max_length);
                opts.batch_size = batch_size;
                let path = fixture(name);
                let s = ClassifierScorer::load(path.to_str().unwrap(), opts, &Device::Cpu).unwrap();
                for (t, want) in texts.iter().zip(ids) {
                    assert_eq!(&s.encode(t).unwrap(), want, "{name}: token ids of {t:?}");
                }
                let all = s.label_scores(&texts).unwrap();
                let got = s.score_texts(&texts).unwrap();
                for i in 0..texts.len() {
                    let (pp, pn) = (all[i][1], all[i][0]);
                    assert!(
                        (pp - p_pos[i]).abs() < 1e-5 && (pn - p_neg[i]).abs() < 1e-5,
                        "{name} max_length {max_length} batch {batch_size} text {i}: \
                         got ({pp}, {pn}), transformers ({}, {})",
                        p_pos[i],
                        p_neg[i]
                    );
                    assert_eq!(got[i], pp);
                }
            }
        }
    }

    #[test]
    fn bert_matches_transformers() {
        matches_transformers("bert");
    }

    #[test]
    fn distilbert_matches_transformers() {
        matches_transformers("distilbert");
    }

    #[test]
    fn roberta_matches_transformers() {
        matches_transformers("roberta");
    }

    #[test]
    fn scorer_reads_the_configured_text_and_label() {
        let r = reference("distilbert");
        let path = fixture("distilbert");
        let s = ClassifierScorer::load(
            path.to_str().unwrap(),
            ClassifierOptions::new("positive"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(s.labels(), ["NEGATIVE", "POSITIVE"]);
        assert_eq!(s.max_length(), 64);
        let samples = [
            Sample::new("ignored ", &r.texts[0]),
            Sample::new("", &r.texts[1]),
        ];
        let got = s.score_batch(&samples).unwrap();
        assert!((got[0] - r.runs[0].2[0]).abs() < 1e-4 && (got[1] - r.runs[0].2[1]).abs() < 1e-4);
        assert!(s.score_batch(&[]).unwrap().is_empty());

        let mut opts = ClassifierOptions::new("NEGATIVE");
        opts.input = ClassifierInput::PromptResponse;
        let s = ClassifierScorer::load(path.to_str().unwrap(), opts, &Device::Cpu).unwrap();
        let (prompt, response) = r.texts[3].split_at(10);
        let got = s.score_batch(&[Sample::new(prompt, response)]).unwrap();
        assert!(
            (got[0] - r.runs[0].3[3]).abs() < 1e-4,
            "prompt + response is the whole text"
        );
    }

    #[test]
    fn clear_errors_for_bad_labels_lengths_and_pickles() {
        let path = fixture("bert");
        let p = path.to_str().unwrap();
        let e = format!(
            "{:#}",
            ClassifierScorer::load(p, ClassifierOptions::new("TOXIC"), &Device::Cpu)
                .err()
                .unwrap()
        );
        assert!(
            e.contains("\"TOXIC\"") && e.contains("\"NEGATIVE\", \"POSITIVE\""),
            "{e}"
        );
        let mut opts = ClassifierOptions::new("POSITIVE");
        opts.max_length = Some(65);
        let e = format!(
            "{:#}",
            ClassifierScorer::load(p, opts, &Device::Cpu).err().unwrap()
        );
        assert!(e.contains("exceeds the model's 64 positions"), "{e}");

        let t = tempfile::tempdir().unwrap();
        std::fs::copy(path.join("config.json"), t.path().join("config.json")).unwrap();
        std::fs::write(t.path().join("pytorch_model.bin"), b"not really a pickle").unwrap();
        let e = load_error(t.path().to_str().unwrap());
        assert!(
            e.contains("pickle") && e.contains("safe_serialization=True"),
            "{e}"
        );
        let e = load_error("no-such-org/no-such-model");
        assert!(
            e.contains("hub model id") && e.contains("models--no-such-org--no-such-model"),
            "{e}"
        );
    }

    /// The error, causes included, of loading `path` as a classifier with a POSITIVE label.
    fn load_error(path: &str) -> String {
        let opts = ClassifierOptions::new("POSITIVE");
        format!(
            "{:#}",
            ClassifierScorer::load(path, opts, &Device::Cpu)
                .err()
                .unwrap()
        )
    }

    #[test]
    fn missing_tensors_are_named() {
        let t = tempfile::tempdir().unwrap();
        let src = fixture("roberta");
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), t.path().join(f)).unwrap();
        }
        // A checkpoint without its classification head (a base model).
        let data = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&data).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("classifier.out_proj"))
            .collect();
        safetensors::serialize_to_file(kept, None, &t.path().join("model.safetensors")).unwrap();
        let e = load_error(t.path().to_str().unwrap());
        assert!(e.contains("classifier.out_proj.weight"), "{e}");
    }

    #[test]
    fn labels_default_and_readouts() {
        let v = serde_json::json!({"num_labels": 3});
        assert_eq!(labels(&v).unwrap(), ["LABEL_0", "LABEL_1", "LABEL_2"]);
        let v = serde_json::json!({"id2label": {"1": "b", "0": "a"}});
        assert_eq!(labels(&v).unwrap(), ["a", "b"]);
        let v = serde_json::json!({"id2label": {"0": "a", "2": "b"}});
        assert!(labels(&v).is_err());
        assert_eq!(find_label(&["Neg".into(), "Pos".into()], "pos").unwrap(), 1);
    }
}
