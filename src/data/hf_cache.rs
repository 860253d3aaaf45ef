//! The offline Hugging Face hub cache: find the snapshot directory of a model or data set
//! that `hf download` (or `transformers` / `datasets`) already put on disk. Never touches the
//! network.
//!
//! Layout (huggingface_hub's): `<root>/{models,datasets}--ORG--NAME/` holding
//! `refs/<ref>` (a text file with a commit hash) and `snapshots/<hash>/...` (the files, often
//! symlinks into `blobs/`). The root is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, the same order huggingface_hub uses.
//!
//! A repository id may carry a revision, `org/name@rev`: `rev` is a ref name (`main`,
//! `refs/pr/1`) or a snapshot hash. Without one: the snapshot `refs/main` names if that file
//! exists, else the only snapshot, else the most recently modified one.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Which half of the hub a repository lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn dir_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "data set",
        }
    }
    fn download_hint(self, repo: &str) -> String {
        match self {
            RepoKind::Model => format!("hf download {repo}"),
            RepoKind::Dataset => format!("hf download --repo-type dataset {repo}"),
        }
    }
}

/// The snapshot directory of `repo` (`org/name` or `org/name@rev`) in the cache the
/// environment names. Errors say which directories were searched.
pub fn resolve_hf_cache(kind: RepoKind, repo: &str) -> Result<PathBuf> {
    let (root, why) = cache_root_from(|k| std::env::var_os(k))?;
    resolve_in(&root, kind, repo).with_context(|| format!("cache root {} ({why})", root.display()))
}

/// Like [`resolve_hf_cache`] with an explicit cache root (the directory that holds the
/// `models--*` / `datasets--*` folders).
pub fn resolve_in(root: &Path, kind: RepoKind, repo: &str) -> Result<PathBuf> {
    let (id, rev) = split_revision(repo);
    if !is_repo_id(id) {
        bail!(
            "\"{repo}\" is not a hub repository id (expected ORG/NAME or NAME, letters, digits, \
             '-', '_' and '.', optionally followed by @REVISION)"
        );
    }
    let repo_dir = root.join(format!("{}--{}", kind.dir_prefix(), id.replace('/', "--")));
    if !repo_dir.is_dir() {
        bail!(
            "{} \"{id}\" is not in the Hugging Face cache: {} does not exist. elastica never \
             downloads; on a machine with network run `{}` and copy the cache, or pass a local \
             path instead",
            kind.noun(),
            repo_dir.display(),
            kind.download_hint(id)
        );
    }
    let snapshots = repo_dir.join("snapshots");
    let dir = match rev {
        Some(rev) => by_revision(&repo_dir, rev)?,
        None => {
            let main_ref = repo_dir.join("refs").join("main");
            if main_ref.is_file() {
                snapshot_of_ref(&repo_dir, &main_ref)?
            } else {
                newest_snapshot(&snapshots)?
            }
        }
    };
    Ok(dir)
}

/// True when `s` could name a hub repository (`org/name` or a legacy `name`), optionally
/// with `@rev`. Used to decide whether a path that does not exist is worth a cache lookup.
pub fn looks_like_repo_id(s: &str) -> bool {
    is_repo_id(split_revision(s).0)
}

/// The cache root from an environment lookup, with a note saying which rule chose it.
fn cache_root_from(get: impl Fn(&str) -> Option<OsString>) -> Result<(PathBuf, String)> {
    let set = |k: &str| get(k).filter(|v| !v.is_empty());
    if let Some(v) = set("HF_HUB_CACHE") {
        return Ok((PathBuf::from(v), "from $HF_HUB_CACHE".into()));
    }
    // The name huggingface_hub used before HF_HUB_CACHE; still honoured there.
    if let Some(v) = set("HUGGINGFACE_HUB_CACHE") {
        return Ok((PathBuf::from(v), "from $HUGGINGFACE_HUB_CACHE".into()));
    }
    if let Some(v) = set("HF_HOME") {
        return Ok((PathBuf::from(v).join("hub"), "from $HF_HOME/hub".into()));
    }
    if let Some(v) = set("XDG_CACHE_HOME") {
        return Ok((
            PathBuf::from(v).join("huggingface").join("hub"),
            "from $XDG_CACHE_HOME/huggingface/hub".into(),
        ));
    }
    match set("HOME") {
        Some(h) => Ok((
            PathBuf::from(h)
                .join(".cache")
                .join("huggingface")
                .join("hub"),
            "the default ~/.cache/huggingface/hub; set $HF_HUB_CACHE or $HF_HOME to change it"
                .into(),
        )),
        None => bail!(
            "cannot locate the Hugging Face cache: none of $HF_HUB_CACHE, $HF_HOME, $HOME is set"
        ),
    }
}

fn split_revision(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        Some((id, _)) => (id, None),
        None => (s, None),
    }
}

fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn by_revision(repo_dir: &Path, rev: &str) -> Result<PathBuf> {
    let ref_file = repo_dir.join("refs").join(rev);
    if ref_file.is_file() {
        return snapshot_of_ref(repo_dir, &ref_file);
    }
    let dir = repo_dir.join("snapshots").join(rev);
    if dir.is_dir() {
        return Ok(dir);
    }
    bail!(
        "revision \"{rev}\" is neither a ref ({} does not exist) nor a downloaded snapshot ({} \
         does not exist)",
        ref_file.display(),
        dir.display()
    )
}

fn snapshot_of_ref(repo_dir: &Path, ref_file: &Path) -> Result<PathBuf> {
    let hash = std::fs::read_to_string(ref_file)
        .with_context(|| format!("cannot read {}", ref_file.display()))?;
    let hash = hash.trim();
    let dir = repo_dir.join("snapshots").join(hash);
    if !dir.is_dir() {
        bail!(
            "{} names snapshot {hash}, but {} does not exist (an interrupted download?); \
             download again",
            ref_file.display(),
            dir.display()
        );
    }
    Ok(dir)
}

fn newest_snapshot(snapshots: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(snapshots).with_context(|| {
        format!(
            "cannot list {} (an incomplete download?)",
            snapshots.display()
        )
    })?;
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", snapshots.display()))?;
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        // Ties (same mtime) break on the name so the choice is deterministic.
        let newer = match &best {
            None => true,
            Some((t, p)) => (mtime, &path) > (*t, p),
        };
        if newer {
            best = Some((mtime, path));
        }
    }
    match best {
        Some((_, p)) => Ok(p),
        None => bail!("{} holds no snapshot directories", snapshots.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_repo(root: &Path, dir: &str, snaps: &[&str], main: Option<&str>) -> PathBuf {
        let repo = root.join(dir);
        for s in snaps {
            std::fs::create_dir_all(repo.join("snapshots").join(s)).unwrap();
            std::fs::write(repo.join("snapshots").join(s).join("config.json"), "{}").unwrap();
        }
        if let Some(m) = main {
            std::fs::create_dir_all(repo.join("refs")).unwrap();
            std::fs::write(repo.join("refs").join("main"), format!("{m}\n")).unwrap();
        }
        repo
    }

    #[test]
    fn resolves_refs_main_then_single_snapshot_then_revision() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let repo = fake_repo(root, "models--org--tiny", &["aaa", "bbb"], Some("bbb"));
        let got = resolve_in(root, RepoKind::Model, "org/tiny").unwrap();
        assert_eq!(got, repo.join("snapshots/bbb"));
        assert_eq!(
            resolve_in(root, RepoKind::Model, "org/tiny@aaa").unwrap(),
            repo.join("snapshots/aaa")
        );
        assert_eq!(
            resolve_in(root, RepoKind::Model, "org/tiny@main").unwrap(),
            repo.join("snapshots/bbb")
        );

        let ds = fake_repo(root, "datasets--stanfordnlp--imdb", &["c0ffee"], None);
        assert_eq!(
            resolve_in(root, RepoKind::Dataset, "stanfordnlp/imdb").unwrap(),
            ds.join("snapshots/c0ffee")
        );
        // A model and a data set with the same name are different repositories.
        let e = format!(
            "{:#}",
            resolve_in(root, RepoKind::Model, "stanfordnlp/imdb").unwrap_err()
        );
        assert!(
            e.contains("models--stanfordnlp--imdb") && e.contains("hf download"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            resolve_in(root, RepoKind::Dataset, "stanfordnlp/imdb@zzz").unwrap_err()
        );
        assert!(e.contains("zzz") && e.contains("refs"), "{e}");
    }

    #[test]
    fn broken_ref_and_bad_ids_are_explained() {
        let t = tempfile::tempdir().unwrap();
        fake_repo(t.path(), "models--org--m", &["aaa"], Some("missing"));
        let e = format!(
            "{:#}",
            resolve_in(t.path(), RepoKind::Model, "org/m").unwrap_err()
        );
        assert!(e.contains("refs/main") && e.contains("missing"), "{e}");
        let e = format!(
            "{:#}",
            resolve_in(t.path(), RepoKind::Model, "a/b/c").unwrap_err()
        );
        assert!(e.contains("not a hub repository id"), "{e}");
        assert!(looks_like_repo_id("gpt2") && looks_like_repo_id("org/x-1.5@main"));
        assert!(!looks_like_repo_id("./data/x.jsonl") && !looks_like_repo_id("/abs/path"));
    }

    #[test]
    fn newest_snapshot_wins_without_refs() {
        let t = tempfile::tempdir().unwrap();
        let repo = fake_repo(t.path(), "models--m", &["old"], None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(repo.join("snapshots/new")).unwrap();
        assert_eq!(
            resolve_in(t.path(), RepoKind::Model, "m").unwrap(),
            repo.join("snapshots/new")
        );
    }

    #[test]
    fn cache_root_follows_huggingface_hub_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let r = |pairs| cache_root_from(env(pairs)).unwrap().0;
        assert_eq!(
            r(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")]),
            PathBuf::from("/c")
        );
        assert_eq!(
            r(&[("HF_HOME", "/h"), ("HOME", "/u")]),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            r(&[("HF_HUB_CACHE", ""), ("HOME", "/u")]),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
        assert!(cache_root_from(env(&[])).is_err());
    }
}
