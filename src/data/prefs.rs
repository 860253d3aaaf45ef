//! Preference pairs for DPO: a prompt with a chosen and a rejected answer. Read from a
//! [`DataSpec`] (a file, a directory of shards, or a hub data set id in the offline cache,
//! with `files`, `limit`, `offset`, `shuffle_seed` and `skip_bad_rows` as for SFT records) in
//! one of four schemas:
//! - `jsonl` (generic): `{"prompt", "chosen", "rejected"}` objects;
//! - `pku-saferlhf`: PKU-SafeRLHF rows (`prompt`, `response_0`, `response_1`,
//!   `safer_response_id`, `better_response_id`); `prefer = "safer" | "better"` picks which id
//!   names the chosen answer;
//! - `conversation`: TRL's conversational pairs, `chosen` and `rejected` lists of
//!   `{"role", "content"}` messages with or without a `prompt` list (UltraFeedback binarized),
//!   rendered by the chat template;
//! - `hh-rlhf`: Anthropic HH-RLHF rows, `chosen` and `rejected` as whole dialogues of
//!   `\n\nHuman:` / `\n\nAssistant:` turns, split at the last `\n\nAssistant:` into the prompt
//!   (the dialogue up to and including that marker) and the two answers. A row whose two
//!   dialogues differ before that point is not a pair and is refused.
//!
//! Errors name the file and the row.

use crate::data::records::{last_user_content, messages_from_json, Message, Record, ASSISTANT};
use crate::data::rows::{self, Object};
use crate::data::schemas::{str_field, DataSpec, ReadCounts, Select};
use crate::data::template::Template;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::PathBuf;

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefRecord {
    /// The prompt; for a conversational pair, the content of its last user turn (what logs
    /// and generation prompts show), the turns themselves being in `context`.
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// A conversational pair: the turns the two answers (assistant turns) follow, rendered
    /// by the chat template as [`Record::Chat`] is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<Message>>,
}

impl PrefRecord {
    pub fn new(prompt: &str, chosen: &str, rejected: &str) -> Self {
        PrefRecord {
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            context: None,
        }
    }

    /// The training record of this pair's prompt answered by `answer` (one of its answers,
    /// or, for KTO's mismatched sequences, another pair's).
    pub fn record(&self, answer: &str) -> Record {
        Record::answered(&self.prompt, self.context.as_deref(), answer)
    }
}

/// Which of PKU-SafeRLHF's two labels names the chosen answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// `safer_response_id`.
    Safer,
    /// `better_response_id` (more helpful).
    Better,
}

/// The preference schemas, in the order listings show them.
pub const PREF_SCHEMAS: &[&str] = &["jsonl", "pku-saferlhf", "hh-rlhf", "conversation"];

/// The template pairs of `schema` are trained with when none is set: HH-RLHF's prompts are
/// already whole dialogues (raw); conversations get the model's chat template; the others get
/// the safe-rlhf template, as SFT records do.
pub fn default_template(schema: &str) -> Template {
    match schema {
        "hh-rlhf" => Template::Raw,
        "conversation" => Template::Chat,
        _ => Template::SafeRlhf,
    }
}

/// Pairs loaded from a spec.
#[derive(Debug, Clone)]
pub struct PrefDataset {
    pub records: Vec<PrefRecord>,
    pub read: ReadCounts,
}

impl PrefDataset {
    pub fn summary(&self) -> String {
        self.read.summary("preference pairs", self.records.len())
    }
}

/// Load the pairs `spec` names; `prefer` is required by (and only used for) `pku-saferlhf`.
pub fn load(spec: &DataSpec, prefer: Option<Prefer>) -> Result<PrefDataset> {
    if !spec.turns.is_last() {
        bail!(
            "turns = \"{}\" (--turns) applies to SFT conversations; a preference pair's \
             answers are its last turns",
            spec.turns.name()
        );
    }
    let files = crate::data::files::resolve(&spec.path, spec.files.as_deref())?;
    load_files(spec, prefer, files)
        .with_context(|| format!("loading preference pairs {}", spec.path))
}

type Parse = dyn Fn(&Object) -> Result<PrefRecord>;

fn parser(schema: &str, prefer: Option<Prefer>) -> Result<Box<Parse>> {
    Ok(match (schema, prefer) {
        ("jsonl", None) => Box::new(generic),
        ("pku-saferlhf", Some(p)) => Box::new(move |o: &Object| pku(o, p)),
        ("pku-saferlhf", None) => bail!(
            "schema \"pku-saferlhf\" needs prefer = \"safer\" or \"better\" (--prefer): which \
             of safer_response_id / better_response_id names the chosen answer"
        ),
        ("hh-rlhf", None) => Box::new(hh),
        ("conversation", None) => Box::new(conversation),
        (s, Some(_)) if PREF_SCHEMAS.contains(&s) => {
            bail!("prefer (--prefer) applies to schema \"pku-saferlhf\" only, not \"{s}\"")
        }
        (s, _) => bail!(
            "unknown preference schema \"{s}\"; valid: {}",
            PREF_SCHEMAS.join(", ")
        ),
    })
}

fn load_files(spec: &DataSpec, prefer: Option<Prefer>, files: Vec<PathBuf>) -> Result<PrefDataset> {
    let parse = parser(&spec.schema, prefer)?;
    let (records, read) = load_rows(spec, files, ("pairs", "preference pairs"), &*parse)?;
    Ok(PrefDataset { records, read })
}

/// The rows of `files` that `parse` reads, with `spec`'s `skip_bad_rows`, `shuffle_seed`,
/// `offset` and `limit` applied (`what`: the rows' short and long names in messages, as
/// "pairs", "preference pairs"). Preference data has no labelled halves, so `select` is
/// refused.
pub(crate) fn load_rows<T>(
    spec: &DataSpec,
    files: Vec<PathBuf>,
    (what, long): (&str, &str),
    parse: &dyn Fn(&Object) -> Result<T>,
) -> Result<(Vec<T>, ReadCounts)> {
    if spec.select != Select::All {
        bail!("{long} have no labelled halves: remove `select` (--select)");
    }
    if spec.limit == Some(0) {
        bail!("limit = 0 selects nothing; remove `limit` to keep every one");
    }
    let mut records = Vec::new();
    let mut read = ReadCounts::new(files.clone());
    for file in &files {
        rows::for_each_row(file, &mut |loc, row| {
            read.rows_read += 1;
            match row.and_then(|o| parse(&o)) {
                Ok(r) => records.push(r),
                Err(_) if spec.skip_bad_rows => read.skipped_bad += 1,
                Err(e) => bail!(
                    "{}: {loc}: {e:#} (preference schema \"{}\"); fix the row, or set \
                     skip_bad_rows = true (--skip-bad-rows) to skip and count malformed rows",
                    file.display(),
                    spec.schema
                ),
            }
            Ok(ControlFlow::Continue(()))
        })?;
    }
    if let Some(seed) = spec.shuffle_seed {
        records.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let want = spec.offset.saturating_add(spec.limit.unwrap_or(0));
    let n = records.len();
    if n == 0 || n < want || n <= spec.offset {
        bail!(
            "{} holds too few {what}: {n}, but the spec asks for offset {} + limit {:?}; {}",
            spec.path,
            spec.offset,
            spec.limit,
            read.summary(long, n)
        );
    }
    records.drain(..spec.offset);
    if let Some(l) = spec.limit {
        records.truncate(l);
    }
    Ok((records, read))
}

fn generic(o: &Object) -> Result<PrefRecord> {
    if !o.contains_key("chosen") && o.contains_key("completion") && o.contains_key("label") {
        bail!(
            "this row is unpaired feedback {{\"prompt\", \"completion\", \"label\"}} (TRL's KTO \
             format), where preference pairs {{\"prompt\", \"chosen\", \"rejected\"}} are read; \
             `elastica train --method dpo --dpo-loss kto` trains on a file of such rows"
        );
    }
    if ["prompt", "chosen", "rejected"]
        .iter()
        .any(|k| o.get(*k).is_some_and(|v| v.is_array()))
    {
        bail!(
            "this row is a conversational pair (lists of {{\"role\", \"content\"}} messages); \
             read it with schema \"conversation\" (--schema conversation), which renders it \
             with the model's chat template"
        );
    }
    let mut r = PrefRecord::new(
        str_field(o, "prompt")?,
        str_field(o, "chosen")?,
        str_field(o, "rejected")?,
    );
    // elastica's own pair files (a grid's frozen inputs) keep a conversational pair's turns
    // as a list "context"; a string "context" in another layout is not ours and is ignored.
    if let Some(v) = o.get("context").filter(|v| v.is_array()) {
        r.context = Some(messages_from_json(v, "context")?);
    }
    Ok(r)
}

fn pku(o: &Object, prefer: Prefer) -> Result<PrefRecord> {
    let key = match prefer {
        Prefer::Safer => "safer_response_id",
        Prefer::Better => "better_response_id",
    };
    let id = match o.get(key) {
        None | Some(serde_json::Value::Null) => bail!("field \"{key}\" is missing"),
        Some(v) => v
            .as_u64()
            .filter(|&i| i <= 1)
            .with_context(|| format!("field \"{key}\" must be 0 or 1, found {v}"))?,
    };
    let (r0, r1) = (str_field(o, "response_0")?, str_field(o, "response_1")?);
    let (chosen, rejected) = if id == 0 { (r0, r1) } else { (r1, r0) };
    Ok(PrefRecord::new(str_field(o, "prompt")?, chosen, rejected))
}

/// TRL's conversational preference rows: `chosen` and `rejected` lists of messages, with an
/// explicit `prompt` list (each answer then one assistant turn), or without one (implicit
/// prompt: the turns the two lists share, as TRL's `extract_prompt`; a string `prompt`
/// beside conversational answers, as in UltraFeedback binarized, is ignored as TRL does).
fn conversation(o: &Object) -> Result<PrefRecord> {
    let list = |k: &str| -> Result<Vec<Message>> {
        match o.get(k) {
            None | Some(serde_json::Value::Null) => bail!("field \"{k}\" is missing"),
            Some(v) => messages_from_json(v, k),
        }
    };
    let (mut chosen, mut rejected) = (list("chosen")?, list("rejected")?);
    let context = match o.get("prompt") {
        Some(p) if p.is_array() => messages_from_json(p, "prompt")?,
        _ => {
            let shared = chosen
                .iter()
                .zip(&rejected)
                .take_while(|(c, r)| c == r)
                .count();
            if shared == chosen.len() || shared == rejected.len() {
                bail!(
                    "the \"chosen\" and \"rejected\" conversations do not differ after the \
                     turns they share, so there are no two answers to compare"
                );
            }
            rejected.drain(..shared);
            chosen.drain(..shared).collect()
        }
    };
    let answer = |turns: Vec<Message>, k: &str| -> Result<String> {
        match <[Message; 1]>::try_from(turns) {
            Ok([m]) if m.role == ASSISTANT => Ok(m.content),
            Ok([m]) => bail!(
                "the \"{k}\" answer is a \"{}\" turn, not an \"assistant\" one",
                m.role
            ),
            Err(t) => bail!(
                "the \"{k}\" answer is {} turns after the prompt; a pair compares one \
                 \"assistant\" turn each",
                t.len()
            ),
        }
    };
    let (chosen, rejected) = (answer(chosen, "chosen")?, answer(rejected, "rejected")?);
    let prompt = last_user_content(&context).to_string();
    Ok(PrefRecord {
        prompt,
        chosen,
        rejected,
        context: Some(context),
    })
}

/// The marker of an assistant turn in HH-RLHF dialogues.
const HH_ASSISTANT: &str = "\n\nAssistant:";

fn hh(o: &Object) -> Result<PrefRecord> {
    let split = |key: &str| -> Result<(String, String)> {
        let text = str_field(o, key)?;
        let at = text.rfind(HH_ASSISTANT).with_context(|| {
            format!("field \"{key}\" has no \"\\n\\nAssistant:\" turn to split at")
        })?;
        let cut = at + HH_ASSISTANT.len();
        Ok((text[..cut].to_string(), text[cut..].to_string()))
    };
    let (pc, chosen) = split("chosen")?;
    let (pr, rejected) = split("rejected")?;
    if pc != pr {
        bail!(
            "the \"chosen\" and \"rejected\" dialogues differ before their last \
             \"\\n\\nAssistant:\" turn, so they do not answer the same prompt"
        );
    }
    Ok(PrefRecord {
        prompt: pc,
        chosen,
        rejected,
        context: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data::write_jsonl as write;

    fn err(spec: &DataSpec, prefer: Option<Prefer>) -> String {
        format!("{:#}", load(spec, prefer).unwrap_err())
    }

    /// `row`, alone in a file, is refused under `schema` naming the file, its line and `want`.
    fn refused(dir: &std::path::Path, schema: &str, row: serde_json::Value, want: &str) {
        let path = write(dir, "bad.jsonl", &[row]);
        let e = err(&DataSpec::new(&path, schema), None);
        assert!(
            e.contains("bad.jsonl") && e.contains("line 1") && e.contains(want),
            "{want}: {e}"
        );
    }

    #[test]
    fn generic_pairs_and_their_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let ok = serde_json::json!({"prompt": "p", "chosen": "a", "rejected": "b"});
        let path = write(d.path(), "g.jsonl", &[ok.clone(), ok.clone()]);
        let ds = load(&DataSpec::new(&path, "jsonl"), None).unwrap();
        assert_eq!(ds.records, vec![PrefRecord::new("p", "a", "b"); 2]);
        let path = write(
            d.path(),
            "bad.jsonl",
            &[ok, serde_json::json!({"prompt": "p", "chosen": "a"})],
        );
        let e = err(&DataSpec::new(&path, "jsonl"), None);
        assert!(
            e.contains("bad.jsonl") && e.contains("line 2") && e.contains("\"rejected\""),
            "{e}"
        );
        let mut skip = DataSpec::new(&path, "jsonl");
        skip.skip_bad_rows = true;
        let ds = load(&skip, None).unwrap();
        assert_eq!((ds.records.len(), ds.read.skipped_bad), (1, 1));
        // TRL's unpaired KTO rows are named as such, with what to do.
        let unpaired = serde_json::json!({"prompt": "p", "completion": "a", "label": true});
        let path = write(d.path(), "kto.jsonl", &[unpaired]);
        let e = err(&DataSpec::new(&path, "jsonl"), None);
        assert!(
            e.contains("kto.jsonl") && e.contains("line 1") && e.contains("TRL's KTO format"),
            "{e}"
        );
        let e = err(&DataSpec::new(&path, "beavertails"), None);
        assert!(e.contains("unknown preference schema"), "{e}");
    }

    #[test]
    fn pku_saferlhf_picks_the_answer_its_label_names() {
        let d = tempfile::tempdir().unwrap();
        let row = |safer: u64, better: u64| {
            serde_json::json!({"prompt": "q", "response_0": "zero", "response_1": "one",
                "safer_response_id": safer, "better_response_id": better,
                "is_response_0_safe": true, "is_response_1_safe": false})
        };
        let path = write(d.path(), "pku.jsonl", &[row(0, 1), row(1, 1)]);
        let spec = DataSpec::new(&path, "pku-saferlhf");
        let safer = load(&spec, Some(Prefer::Safer)).unwrap().records;
        assert_eq!(
            safer,
            vec![
                PrefRecord::new("q", "zero", "one"),
                PrefRecord::new("q", "one", "zero")
            ]
        );
        let better = load(&spec, Some(Prefer::Better)).unwrap().records;
        assert_eq!(better, vec![PrefRecord::new("q", "one", "zero"); 2]);
        let e = err(&spec, None);
        assert!(e.contains("--prefer"), "{e}");
        let path = write(d.path(), "pku2.jsonl", &[row(0, 1), row(2, 1)]);
        let e = err(&DataSpec::new(&path, "pku-saferlhf"), Some(Prefer::Safer));
        assert!(
            e.contains("pku2.jsonl") && e.contains("line 2") && e.contains("0 or 1"),
            "{e}"
        );
        let e = err(&DataSpec::new(&path, "jsonl"), Some(Prefer::Safer));
        assert!(e.contains("applies to schema \"pku-saferlhf\" only"), "{e}");
    }

    #[test]
    fn hh_rlhf_splits_at_the_last_assistant_turn() {
        let d = tempfile::tempdir().unwrap();
        let ctx = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant:";
        let good = serde_json::json!({"chosen": format!("{ctx} I can't help with that."),
            "rejected": format!("{ctx} Use a tension wrench.")});
        let path = write(d.path(), "hh.jsonl", &[good]);
        let ds = load(&DataSpec::new(&path, "hh-rlhf"), None).unwrap();
        assert_eq!(
            ds.records,
            vec![PrefRecord::new(
                ctx,
                " I can't help with that.",
                " Use a tension wrench."
            )]
        );
        assert_eq!(default_template("hh-rlhf"), Template::Raw);
        let differ = serde_json::json!({"chosen": "\n\nHuman: a\n\nAssistant: x",
            "rejected": "\n\nHuman: b\n\nAssistant: y"});
        let none = serde_json::json!({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"});
        for (row, want) in [(differ, "differ"), (none, "no \"\\n\\nAssistant:\"")] {
            refused(d.path(), "hh-rlhf", row, want);
        }
    }

    #[test]
    fn conversational_pairs_with_an_implicit_or_explicit_prompt() {
        let d = tempfile::tempdir().unwrap();
        let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
        let (u, a) = (|c: &str| m("user", c), |c: &str| m("assistant", c));
        // UltraFeedback binarized: a string prompt beside whole conversations (ignored, as
        // TRL does: the shared turns are the prompt).
        let implicit = serde_json::json!({"prompt": "q", "chosen": [u("q"), a("good")],
            "rejected": [u("q"), a("bad")], "score_chosen": 9.0});
        let explicit = serde_json::json!({"prompt": [m("system", "s"), u("q2")],
            "chosen": [a("yes")], "rejected": [a("no")]});
        let path = write(d.path(), "c.jsonl", &[implicit, explicit]);
        // The generic schema names conversational rows and the schema that reads them.
        let e = err(&DataSpec::new(&path, "jsonl"), None);
        assert!(e.contains("--schema conversation"), "{e}");
        let ds = load(&DataSpec::new(&path, "conversation"), None).unwrap();
        let msg = |r: &str, c: &str| Message::new(r, c);
        assert_eq!(ds.records[0].context, Some(vec![msg("user", "q")]));
        assert_eq!(
            (ds.records[0].prompt.as_str(), ds.records[0].chosen.as_str()),
            ("q", "good")
        );
        assert_eq!(
            ds.records[1].context,
            Some(vec![msg("system", "s"), msg("user", "q2")])
        );
        assert_eq!(
            ds.records[1].record("no"),
            Record::conversation(vec![
                msg("system", "s"),
                msg("user", "q2"),
                msg("assistant", "no")
            ])
        );
        assert_eq!(default_template("conversation"), Template::Chat);
        // elastica's own pair files (a grid's frozen slices) keep the turns as "context".
        let own = d.path().join("own.jsonl");
        std::fs::write(
            &own,
            crate::data::records::jsonl_bytes(&ds.records).unwrap(),
        )
        .unwrap();
        let back = load(&DataSpec::new(own.to_string_lossy(), "jsonl"), None).unwrap();
        assert_eq!(back.records, ds.records);
        for (row, want) in [
            (
                serde_json::json!({"chosen": [u("q"), a("x")], "rejected": [u("q"), a("x")]}),
                "do not differ",
            ),
            (
                serde_json::json!({"chosen": [u("q"), a("x"), u("more")],
                    "rejected": [u("q"), a("y")]}),
                "the \"chosen\" answer is 2 turns",
            ),
            (
                serde_json::json!({"prompt": [u("q")], "chosen": [u("x")], "rejected": [a("y")]}),
                "is a \"user\" turn",
            ),
            (
                serde_json::json!({"chosen": [u("q")]}),
                "\"rejected\" is missing",
            ),
        ] {
            refused(d.path(), "conversation", row, want);
        }
    }

    #[test]
    fn limit_offset_and_shuffle_apply_as_for_records() {
        let d = tempfile::tempdir().unwrap();
        let rows: Vec<_> = (0..5)
            .map(|i| serde_json::json!({"prompt": format!("p{i}"), "chosen": "a", "rejected": "b"}))
            .collect();
        let path = write(d.path(), "g.jsonl", &rows);
        let mut spec = DataSpec::new(&path, "jsonl");
        spec.offset = 1;
        spec.limit = Some(2);
        let got: Vec<String> = load(&spec, None)
            .unwrap()
            .records
            .into_iter()
            .map(|r| r.prompt)
            .collect();
        assert_eq!(got, ["p1", "p2"]);
        spec.limit = Some(9);
        assert!(err(&spec, None).contains("too few pairs"));
    }
}
