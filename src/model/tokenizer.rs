//! The tokenizer: `tokenizer.json` through the tokenizers crate (offline), plus what
//! `tokenizer_config.json` adds (bos/eos/pad tokens, the chat template).

use super::tokenizer_class::{as_transformers_reads, token_string};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
    eos_ids: Vec<u32>,
    pad_id: u32,
    /// The model's embedding rows (`vocab_size`), once bound to a model: an id past them is
    /// refused when text is encoded (a tokenizer may hold tokens the model has no row for).
    model_vocab: Option<(usize, PathBuf)>,
}

/// The `default` template of a tokenizer config's named chat templates (a list of
/// `{"name", "template"}`, as some models ship a tool-use template beside it); transformers'
/// `apply_chat_template` renders that one when none is named.
fn default_template(named: &[serde_json::Value]) -> Result<String> {
    let mut names = Vec::new();
    for t in named {
        let (Some(name), Some(template)) = (
            t.get("name").and_then(|x| x.as_str()),
            t.get("template").and_then(|x| x.as_str()),
        ) else {
            bail!("chat_template: each named template needs a string \"name\" and \"template\"");
        };
        if name == "default" {
            return Ok(template.to_string());
        }
        names.push(name);
    }
    bail!(
        "chat_template lists named templates ({}) but none named \"default\", which elastica \
         renders",
        names.join(", ")
    )
}

/// A `tokenizer.json`'s text (of the file at `path`) loaded with the tokenizers library, never
/// panicking: tokenizers 0.23 panics (an `expect` in its decoder deserializer) on some
/// syntactically broken files, e.g. one truncated inside "decoder". The JSON syntax is checked
/// first (an error with line and column), and any other panic of the library becomes an error.
fn parse_tokenizer(text: &str, path: &Path) -> Result<tokenizers::Tokenizer> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
        .map_err(|_| anyhow::anyhow!("the tokenizers library panicked on this file"))
        .and_then(|r| r.map_err(|e| anyhow::anyhow!("{e}")))
        .with_context(|| format!("cannot load tokenizer {}", path.display()))
}

/// A model directory's `tokenizer.json` as transformers 5 reads it, with the directory's
/// `tokenizer_config.json` (`Null` where there is none): rebuilt where the config's class (or,
/// for encoders, `model_type`) has a constructor of its own ([`as_transformers_reads`]).
pub fn read_as_transformers(
    dir: &Path,
    model_type: Option<&str>,
) -> Result<(tokenizers::Tokenizer, serde_json::Value)> {
    let tj = dir.join("tokenizer.json");
    let text =
        std::fs::read_to_string(&tj).with_context(|| format!("cannot read {}", tj.display()))?;
    let mut tok = parse_tokenizer(&text, &tj)?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = if cfg_path.exists() {
        let s = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        serde_json::from_str(&s)
            .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?
    } else {
        serde_json::Value::Null
    };
    as_transformers_reads(&mut tok, &cfg, &text, model_type)
        .with_context(|| format!("rebuilding {} as its tokenizer class", tj.display()))?;
    Ok((tok, cfg))
}

impl TextTokenizer {
    /// Load `tokenizer.json` (and `tokenizer_config.json` if present) from a model directory.
    /// `config_eos` are the model config's EOS ids, used when the tokenizer config names none.
    pub fn from_dir(dir: &Path, config_eos: &[u32], config_pad: Option<u32>) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            bail!(
                "{} is missing: elastica needs the fast-tokenizer file (save the tokenizer with transformers' save_pretrained to create it)",
                tj.display()
            );
        }
        let (inner, cfg) = read_as_transformers(dir, None)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let pad_token = token_string(cfg.get("pad_token"));
        // transformers: a chat_template.jinja file takes priority over the config's entry.
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match cfg.get("chat_template") {
            _ if jinja.exists() => Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("cannot read {}", jinja.display()))?,
            ),
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => {
                Some(default_template(named).with_context(|| cfg_path.display().to_string())?)
            }
            Some(serde_json::Value::Null) | None => None,
            Some(other) => bail!(
                "{}: \"chat_template\" must be a string or a list of named templates, got {other}",
                cfg_path.display()
            ),
        };
        let mut eos_ids: Vec<u32> = config_eos.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !eos_ids.contains(&id) {
                eos_ids.insert(0, id);
            }
        }
        if eos_ids.is_empty() {
            bail!(
                "no end-of-sequence token: neither {} nor config.json names one (set \"eos_token\")",
                cfg_path.display()
            );
        }
        let pad_id = pad_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .or(config_pad)
            .unwrap_or(eos_ids[0]);
        Ok(TextTokenizer {
            inner,
            bos_token,
            eos_token,
            pad_token,
            chat_template,
            eos_ids,
            pad_id,
            model_vocab: None,
        })
    }

    /// Bind to a model of `vocab_size` rows (set in `config`): encoding refuses an id past
    /// them, naming the token, where the embedding lookup would fail without a word on why.
    pub fn for_model(mut self, vocab_size: usize, config: &Path) -> Result<Self> {
        if self.pad_id as usize >= vocab_size {
            bail!(
                "the padding token id {} is past the model's vocab_size = {vocab_size} ({}); \
                 set a pad_token the model has",
                self.pad_id,
                config.display()
            );
        }
        self.model_vocab = Some((vocab_size, config.to_path_buf()));
        Ok(self)
    }

    /// Refuse an id the bound model has no embedding row for.
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let Some((n, config)) = &self.model_vocab else {
            return Ok(());
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= *n) {
            let token = self.inner.id_to_token(id).unwrap_or_default();
            bail!(
                "the text holds token {token:?} (id {id}), past the model's vocab_size = {n} \
                 ({}): the tokenizer has tokens the model has no embedding for",
                config.display()
            );
        }
        Ok(())
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        self.check_ids(enc.get_ids())?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` (with the tokenizer's special tokens if `add_special_tokens`),
    /// each with its byte span in `text`.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<(u32, (usize, usize))>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        self.check_ids(enc.get_ids())?;
        Ok(enc
            .get_ids()
            .iter()
            .copied()
            .zip(enc.get_offsets().iter().copied())
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer failed to decode: {e}"))
    }

    /// The primary EOS id (appended after every training response).
    pub fn eos_id(&self) -> u32 {
        self.eos_ids[0]
    }

    /// Whether `text` already ends with the primary EOS token's text, so that training adds
    /// no second EOS after it (TRL's rule: it appends the EOS text unless it is there).
    pub fn ends_with_eos(&self, text: &str) -> bool {
        self.inner
            .id_to_token(self.eos_id())
            .is_some_and(|eos| !eos.is_empty() && text.ends_with(&eos))
    }

    /// Every id that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_chat_templates_render_the_default_one() {
        let t = |name: &str, body: &str| serde_json::json!({"name": name, "template": body});
        let named = [t("tool_use", "T"), t("default", "D")];
        assert_eq!(default_template(&named).unwrap(), "D");
        let e = format!("{:#}", default_template(&named[..1]).unwrap_err());
        assert!(e.contains("(tool_use)") && e.contains("\"default\""), "{e}");
        let e = format!(
            "{:#}",
            default_template(&[serde_json::json!({"name": 1})]).unwrap_err()
        );
        assert!(e.contains("needs a string"), "{e}");
    }

    /// As transformers: chat_template.jinja takes priority over the config's entry; an entry
    /// of another type is an error naming the file.
    #[test]
    fn a_chat_template_file_wins_over_the_config_entry() {
        let fix = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-qwen2");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fix.join("tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let write_cfg = |template: serde_json::Value| {
            let cfg = serde_json::json!({"eos_token": "</s>", "chat_template": template});
            std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
        };
        let load = || TextTokenizer::from_dir(dir.path(), &[], None);
        write_cfg("C".into());
        assert_eq!(load().unwrap().chat_template.as_deref(), Some("C"));
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(load().unwrap().chat_template.as_deref(), Some("J"));
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        write_cfg(42.into());
        let e = format!("{:#}", load().err().unwrap());
        assert!(
            e.contains("tokenizer_config.json") && e.contains("must be a string"),
            "{e}"
        );
    }
}
