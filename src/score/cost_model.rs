//! safe-rlhf score models (`LlamaForScore`), the layout of PKU-Alignment's beaver-7b cost
//! and reward models: a Llama backbone (`model.*`, transformers' `LlamaModel`) and a linear
//! `score_head` (`score_head.weight` (score_dim, hidden), `score_head.bias` when the config's
//! `bias` is true), optionally followed by the `normalizer` (buffers `normalizer.mean` /
//! `normalizer.var`, used when `do_normalize` is true: `affine` (x - mean) / (std + 1e-8)
//! for `score_type = "reward"`, `scale` x / (std + 1e-8) for `"cost"`, identity for
//! `"critic"`).
//!
//! The score of a (prompt, response) pair is the head's first output at the last token of
//! `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}` (the safe-rlhf template;
//! the tokenizer adds its BOS), truncated to `max_length` tokens (512 in the paper), as
//! safe-rlhf's `end_scores`. A response to a conversation follows its turns in safe-rlhf's
//! multi-turn format (`... ASSISTANT:{a1}</s>USER: {u2} ASSISTANT:{response}`). For a cost
//! model a higher score is less safe.

use crate::data::template::Template;
use crate::model::checkpoint::{resolve_model_dir, weight_files};
use crate::model::params::param_specs;
use crate::model::template::render_context;
use crate::model::{Llama, ModelConfig, Params, TextTokenizer};
use crate::score::{Sample, Scorer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

/// Sequences per backbone forward.
const BATCH: usize = 8;

/// How end scores are normalised (safe-rlhf `Normalizer.normalize`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Normalize {
    Identity,
    /// (x - mean) / (std + 1e-8)
    Affine {
        mean: f64,
        std: f64,
    },
    /// x / (std + 1e-8)
    Scale {
        std: f64,
    },
}

pub struct CostModelScorer {
    model: Llama,
    /// (score_dim, hidden)
    head_w: Tensor,
    head_b: Option<Tensor>,
    normalize: Normalize,
    tokenizer: TextTokenizer,
    max_length: usize,
    higher_is_aligned: bool,
    score_type: String,
}

impl CostModelScorer {
    /// Load a score model from a directory or a hub id in the offline cache.
    pub fn load(path: &str, max_length: usize, device: &Device) -> Result<Self> {
        if max_length < 2 {
            bail!("cost-model max_length must be at least 2, got {max_length}");
        }
        let dir = resolve_model_dir(path)?;
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
        let arch_ok = raw["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("LlamaForScore")));
        if !arch_ok {
            bail!(
                "{} is not a safe-rlhf score model: config.json's architectures must include \
                 \"LlamaForScore\" (found {}); kind = \"cost-model\" needs a model such as \
                 PKU-Alignment/beaver-7b-v1.0-cost",
                dir.display(),
                raw["architectures"]
            );
        }
        let mut cfg = ModelConfig::from_json_str(&text)
            .with_context(|| format!("in model config {}", cfg_path.display()))?;
        // The backbone has no LM head; tying makes the decoder reuse the embeddings for it,
        // and forward_hidden never uses it.
        cfg.tie_word_embeddings = true;
        let score_dim = raw["score_dim"].as_u64().unwrap_or(1) as usize;
        let has_bias = raw["bias"].as_bool().unwrap_or(false);
        let score_type = raw["score_type"].as_str().unwrap_or("reward").to_string();
        let do_normalize = raw["do_normalize"].as_bool().unwrap_or(false);

        let files = weight_files(&dir)?;
        // SAFETY: read-only mapping of files elastica never writes in place.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .with_context(|| format!("cannot read weights in {}", dir.display()))?;
        let load = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = st.load(name, device).with_context(|| {
                format!(
                    "tensor \"{name}\" is missing or unreadable in {}",
                    dir.display()
                )
            })?;
            if t.dims() != shape {
                bail!(
                    "tensor \"{name}\" in {} has shape {:?}, expected {:?}",
                    dir.display(),
                    t.dims(),
                    shape
                );
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let mut entries = Vec::new();
        for spec in param_specs(&cfg) {
            let t = load(&spec.name, &spec.shape)?;
            entries.push((spec.name, Var::from_tensor(&t)?));
        }
        let h = cfg.hidden_size;
        let head_w = load("score_head.weight", &[score_dim, h])?;
        let head_b = if has_bias {
            Some(load("score_head.bias", &[score_dim])?)
        } else {
            None
        };
        let normalize = if do_normalize {
            let stat = |key: &str, default: f64| -> Result<f64> {
                let name = format!("normalizer.{key}");
                if st.tensors().iter().any(|(n, _)| n == &name) {
                    let v: Vec<f32> = load(&name, &[score_dim])?.to_vec1()?;
                    return Ok(v[0] as f64);
                }
                Ok(raw[key]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|x| x.as_f64())
                    .unwrap_or(default))
            };
            let (mean, var) = (stat("mean", 0.0)?, stat("var", 1.0)?);
            match score_type.as_str() {
                "reward" => Normalize::Affine {
                    mean,
                    std: var.sqrt(),
                },
                "cost" => Normalize::Scale { std: var.sqrt() },
                "critic" => Normalize::Identity,
                other => bail!(
                    "{}: score_type {other:?} is not one of reward, cost, critic",
                    cfg_path.display()
                ),
            }
        } else {
            Normalize::Identity
        };
        let tokenizer = TextTokenizer::from_dir(&dir, &cfg.eos_token_ids, cfg.pad_token_id)?;
        let model = Llama::new(cfg, Params::new(entries), device)?;
        Ok(CostModelScorer {
            model,
            head_w,
            head_b,
            normalize,
            tokenizer,
            max_length,
            // A cost model scores harm: lower is safer.
            higher_is_aligned: score_type != "cost",
            score_type,
        })
    }

    /// safe-rlhf's input text for a sample: the safe-rlhf template over the prompt (over a
    /// conversation's turns, in safe-rlhf's multi-turn format), then the response.
    pub fn input_text(&self, s: &Sample<'_>) -> Result<String> {
        let asked = match s.context {
            Some(turns) => render_context(Template::SafeRlhf, turns, &self.tokenizer)?,
            None => Template::SafeRlhf.render(s.prompt, &self.tokenizer)?,
        };
        Ok(asked + s.response)
    }

    /// Token ids of a sample as scored: the template, BOS added, cut to `max_length`.
    pub fn encode(&self, s: &Sample<'_>) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(&self.input_text(s)?, true)?;
        ids.truncate(self.max_length);
        if ids.is_empty() {
            bail!("a scored text encodes to no tokens");
        }
        Ok(ids)
    }

    /// `score_type` from config.json (`cost`, `reward` or `critic`).
    pub fn score_type(&self) -> &str {
        &self.score_type
    }

    /// End scores (first head output, normalised) of already encoded sequences.
    pub fn score_ids(&self, seqs: &[Vec<u32>]) -> Result<Vec<f64>> {
        let dev = self.model.device().clone();
        let pad = self.tokenizer.pad_id();
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(BATCH) {
            let b = chunk.len();
            let t = chunk.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(b * t);
            let mut ends = Vec::with_capacity(b);
            for (r, s) in chunk.iter().enumerate() {
                ids.extend_from_slice(s);
                ids.extend(std::iter::repeat_n(pad, t - s.len()));
                // Right padding: the last real token never sees a pad (causal attention).
                ends.push((r * t + s.len() - 1) as u32);
            }
            let hidden = self
                .model
                .forward_hidden(&Tensor::from_vec(ids, (b, t), &dev)?)?; // (b, t, h)
            let h = hidden.dim(2)?;
            let last = hidden
                .reshape((b * t, h))?
                .index_select(&Tensor::from_vec(ends, b, &dev)?, 0)?; // (b, h)
            let mut s = last.matmul(&self.head_w.t()?)?; // (b, score_dim)
            if let Some(bias) = &self.head_b {
                s = s.broadcast_add(bias)?;
            }
            let rows: Vec<Vec<f32>> = s.to_vec2()?;
            for r in rows {
                let x = r[0] as f64;
                out.push(match self.normalize {
                    Normalize::Identity => x,
                    Normalize::Affine { mean, std } => (x - mean) / (std + 1e-8),
                    Normalize::Scale { std } => x / (std + 1e-8),
                });
            }
        }
        Ok(out)
    }
}

impl Scorer for CostModelScorer {
    fn name(&self) -> &str {
        "cost-model"
    }
    fn higher_is_aligned(&self) -> bool {
        self.higher_is_aligned
    }
    fn score_batch(&self, samples: &[Sample<'_>]) -> Result<Vec<f64>> {
        let seqs: Vec<Vec<u32>> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| self.encode(s).with_context(|| format!("sample {}", i + 1)))
            .collect::<Result<_>>()?;
        self.score_ids(&seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        format!(
            "{}/tests/fixtures/scorers/cost-model",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[derive(serde::Deserialize)]
    struct Case {
        prompt: String,
        response: String,
        ids: Vec<u32>,
        score: f64,
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        max_length: usize,
        cases: Vec<Case>,
    }

    #[test]
    fn matches_the_torch_reference() {
        let r: Reference = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/reference.json", fixture())).unwrap(),
        )
        .unwrap();
        let s = CostModelScorer::load(&fixture(), r.max_length, &Device::Cpu).unwrap();
        assert_eq!(s.score_type(), "cost");
        assert!(!s.higher_is_aligned());
        for c in &r.cases {
            assert_eq!(
                s.encode(&Sample::new(&c.prompt, &c.response)).unwrap(),
                c.ids,
                "{}",
                c.prompt
            );
        }
        let samples: Vec<Sample<'_>> = r
            .cases
            .iter()
            .map(|c| Sample::new(&c.prompt, &c.response))
            .collect();
        // Batched with padding, against references computed one sequence at a time.
        let got = s.score_batch(&samples).unwrap();
        for (g, c) in got.iter().zip(&r.cases) {
            assert!(
                (g - c.score).abs() < 1e-4 * (1.0 + c.score.abs()),
                "{g} vs {} for {:?}",
                c.score,
                c.prompt
            );
        }
        assert!(
            r.cases.iter().any(|c| c.ids.len() == r.max_length),
            "a truncated case"
        );
    }

    #[derive(serde::Deserialize)]
    struct TurnsCase {
        messages: Vec<crate::data::records::Message>,
        response: String,
        ids: Vec<u32>,
        score: f64,
    }

    /// A response to a conversation is scored after its turns in safe-rlhf's multi-turn
    /// format (scripts/make_cost_model_turns_fixture.py); a one-turn conversation reads as
    /// the single-turn template.
    #[test]
    fn responses_to_conversations_follow_their_turns_in_safe_rlhf_format() {
        #[derive(serde::Deserialize)]
        struct Turns {
            cases: Vec<TurnsCase>,
        }
        let path = format!("{}/turns_reference.json", fixture());
        let r: Turns = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let s = CostModelScorer::load(&fixture(), 120, &Device::Cpu).unwrap();
        let samples: Vec<Sample<'_>> = r
            .cases
            .iter()
            .map(|c| Sample {
                prompt: &c.messages.last().unwrap().content,
                response: &c.response,
                context: Some(&c.messages),
            })
            .collect();
        for (sample, c) in samples.iter().zip(&r.cases) {
            assert_eq!(s.encode(sample).unwrap(), c.ids, "{:?}", c.messages);
        }
        let got = s.score_batch(&samples).unwrap();
        for (g, c) in got.iter().zip(&r.cases) {
            assert!(
                (g - c.score).abs() < 1e-4 * (1.0 + c.score.abs()),
                "{g} vs {}",
                c.score
            );
        }
        let single = &r.cases[2];
        let text = Sample::new(&single.messages[0].content, &single.response);
        assert_eq!(s.encode(&text).unwrap(), single.ids);
    }

    #[test]
    fn a_causal_lm_is_refused_with_a_hint() {
        let dir = format!(
            "{}/tests/fixtures/models/tiny-llama",
            env!("CARGO_MANIFEST_DIR")
        );
        let e = format!(
            "{:#}",
            CostModelScorer::load(&dir, 512, &Device::Cpu)
                .err()
                .unwrap()
        );
        assert!(e.contains("LlamaForScore") && e.contains("beaver"), "{e}");
    }
}
