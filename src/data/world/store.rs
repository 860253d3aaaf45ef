//! A world on disk: writing its directory and loading it back, checked against world.json.

use super::manifest::{self, Manifest};
use super::{tokenizer, Task, TaskSets, World};
use super::{MANIFEST_FILE, PRETRAIN_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use crate::data::records::{read_jsonl, write_jsonl, Record};
use crate::util::fsx::{atomic_write, atomic_write_json, atomic_write_with};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn write(world: &World, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the world directory {}", dir.display()))?;
    write_jsonl(&dir.join(PRETRAIN_FILE), world.pretrain())?;
    for task in Task::ALL {
        let s = world.task(task);
        write_jsonl(&dir.join(task.align_file()), &s.align)?;
        write_jsonl(&dir.join(task.perturb_file()), &s.perturb)?;
        write_prompts(&dir.join(task.eval_file()), &s.eval)?;
    }
    atomic_write(
        &dir.join(TOKENIZER_FILE),
        tokenizer::to_json(world.tokenizer())?.as_bytes(),
    )?;
    atomic_write_json(&dir.join(TOKENIZER_CONFIG_FILE), &tokenizer::config_json())?;
    // world.json last: its presence says the directory is complete.
    atomic_write_json(&dir.join(MANIFEST_FILE), world.manifest())?;
    Ok(())
}

pub fn load(dir: &Path) -> Result<World> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).with_context(|| {
        format!(
            "cannot read {}: is {} a world directory written by `elastica world`?",
            mpath.display(),
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid world manifest", mpath.display()))?;
    if m.format != manifest::FORMAT {
        bail!(
            "{}: format is {:?}, expected {:?}",
            mpath.display(),
            m.format,
            manifest::FORMAT
        );
    }
    if m.version != manifest::VERSION {
        bail!(
            "{}: world version {} but this elastica reads version {}: regenerate it with `elastica world`",
            mpath.display(),
            m.version,
            manifest::VERSION
        );
    }
    m.config
        .validate()
        .with_context(|| format!("{}: bad config", mpath.display()))?;

    let pretrain = read_jsonl(&dir.join(PRETRAIN_FILE))?;
    check(
        &m,
        PRETRAIN_FILE,
        &pretrain,
        dir,
        |r| matches!(r, Record::Text { .. }),
        "{\"text\"}",
    )?;
    let mut sets = Vec::with_capacity(2);
    for task in Task::ALL {
        let is_pair = |r: &Record| matches!(r, Record::Pair { .. });
        let align = read_jsonl(&dir.join(task.align_file()))?;
        check(
            &m,
            task.align_file(),
            &align,
            dir,
            is_pair,
            "{\"prompt\",\"response\"}",
        )?;
        let perturb = read_jsonl(&dir.join(task.perturb_file()))?;
        check(
            &m,
            task.perturb_file(),
            &perturb,
            dir,
            is_pair,
            "{\"prompt\",\"response\"}",
        )?;
        let eval = crate::data::prompts::read_text_prompts(&dir.join(task.eval_file()))?;
        expect_count(&m, task.eval_file(), eval.len(), dir)?;
        sets.push(TaskSets {
            align,
            perturb,
            eval,
        });
    }
    let tk = tokenizer::from_json_file(&dir.join(TOKENIZER_FILE))?;
    let dialogue = sets.pop().context("internal: dialogue sets missing")?;
    let reviews = sets.pop().context("internal: review sets missing")?;
    Ok(World {
        manifest: m,
        pretrain,
        reviews,
        dialogue,
        tokenizer: tk,
    })
}

fn check(
    m: &Manifest,
    file: &str,
    records: &[Record],
    dir: &Path,
    ok: impl Fn(&Record) -> bool,
    shape: &str,
) -> Result<()> {
    if let Some(i) = records.iter().position(|r| !ok(r)) {
        bail!(
            "{}: record {} is not of the form {shape}",
            dir.join(file).display(),
            i + 1
        );
    }
    expect_count(m, file, records.len(), dir)
}

fn expect_count(m: &Manifest, file: &str, n: usize, dir: &Path) -> Result<()> {
    let Some(st) = m.files.get(file) else {
        bail!("{} lists no file {file}", dir.join(MANIFEST_FILE).display());
    };
    if st.records != n {
        bail!(
            "{} holds {n} records but world.json says {}: the directory was modified; regenerate it with `elastica world`",
            dir.join(file).display(),
            st.records
        );
    }
    Ok(())
}

/// Evaluation prompts as JSONL `{"prompt": ...}`.
fn write_prompts(path: &Path, prompts: &[String]) -> Result<()> {
    atomic_write_with(path, |w| {
        use std::io::Write;
        for p in prompts {
            serde_json::to_writer(&mut *w, &serde_json::json!({ "prompt": p }))?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}
