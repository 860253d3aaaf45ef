//! Which data files a data path names. A path is a file, a directory of shards (searched
//! recursively), or a hub data set id (`stanfordnlp/imdb`) found in the offline Hugging Face
//! cache. An optional `files` selector narrows a directory to a split or a glob:
//! - a split name (`train`, `test`): files named `train.*`, `train-*` or `train_*`, files
//!   under a directory named `train` (the hub's shard layouts), and files the HF `datasets`
//!   cache names `<name>-<split>.*` or `<name>-<split>-NNNNN-of-NNNNN.*`
//!   (`imdb-train-00000-of-00001.parquet`);
//! - a glob (`*30k*train*`, `plain_text/test-*.parquet`): `*` and `?` within one path
//!   component, `**` across components; a glob without `/` matches the file name only.
//!
//! Only files whose type [`crate::data::rows`] reads are listed (README.md, .gitattributes
//! and the like are ignored), sorted by path so every run sees the same order.

use crate::data::hf_cache::{self, RepoKind};
use crate::data::rows;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The data files `path` names, narrowed by `selector`, in a deterministic order.
pub fn resolve(path: &str, selector: Option<&str>) -> Result<Vec<PathBuf>> {
    resolve_with_cache(path, selector, None)
}

/// [`resolve`] with an explicit hub cache root (`None`: the one the environment names).
pub fn resolve_with_cache(
    path: &str,
    selector: Option<&str>,
    cache_root: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    let p = Path::new(path);
    let root = if p.exists() {
        p.to_path_buf()
    } else if hf_cache::looks_like_repo_id(path) {
        let snapshot = match cache_root {
            Some(c) => hf_cache::resolve_in(c, RepoKind::Dataset, path),
            None => hf_cache::resolve_hf_cache(RepoKind::Dataset, path),
        };
        snapshot.with_context(|| {
            format!("data path \"{path}\" is not a file or directory, so it was taken as a hub data set id")
        })?
    } else {
        bail!("data path {} does not exist", p.display());
    };
    if root.is_file() {
        if selector.is_some() {
            bail!(
                "data path {} is a single file, so `files = \"{}\"` has nothing to select; \
                 point `path` at the directory instead",
                root.display(),
                selector.unwrap_or_default()
            );
        }
        return Ok(vec![root]);
    }
    let mut found = Vec::new();
    walk(&root, &root, &mut found)?;
    found.sort();
    let all = found.len();
    let all_files = found.clone();
    if let Some(sel) = selector {
        found.retain(|rel| matches_selector(sel, rel));
    }
    if found.is_empty() {
        let arrow = if all == 0 && holds_arrow(&root) {
            rows::ARROW_HINT
        } else {
            ""
        };
        match selector {
            Some(sel) => bail!(
                "no data file under {} matches `files = \"{sel}\"`; the {all} data file(s) \
                 there: {}. Use a split name (matching `{sel}.*`, `{sel}-*`, `{sel}/...` or \
                 `<name>-{sel}-00000-of-00001.*`) or a glob such as \"*{sel}*.parquet\"{arrow}",
                root.display(),
                listing(&all_files)
            ),
            None => bail!(
                "no data files (.parquet, .json, .jsonl / .csv [.gz|.xz|.zst]) under {}{arrow}",
                root.display()
            ),
        }
    }
    Ok(found.into_iter().map(|rel| root.join(rel)).collect())
}

/// Whether any `.arrow` file lies under `dir` (the `datasets` library's processed cache).
fn holds_arrow(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            holds_arrow(&path)
        } else {
            path.extension().is_some_and(|x| x == "arrow")
        }
    })
}

/// Relative paths (with `/` separators) of the readable data files under `dir`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list directory {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot list directory {}", dir.display()))?;
        let path = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // `is_dir`/`is_file` follow symlinks: hub snapshots are symlinks into blobs/.
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.is_file() && rows::format_of(&path).is_some() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

/// How many file names an error message lists before "and N more".
const LISTED: usize = 12;

/// "a.parquet, b/c.jsonl and 3 more" (or "none").
fn listing(files: &[String]) -> String {
    if files.is_empty() {
        return "none".into();
    }
    let shown = files[..files.len().min(LISTED)].join(", ");
    match files.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn matches_selector(sel: &str, rel: &str) -> bool {
    let is_glob = sel.contains(['*', '?', '/', '.']);
    if !is_glob {
        let mut parts: Vec<&str> = rel.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        return parts.contains(&sel)
            || name
                .strip_prefix(sel)
                .is_some_and(|rest| rest.starts_with(['.', '-', '_']))
            || datasets_cache_split(name) == Some(sel);
    }
    if sel.contains('/') {
        glob(sel, rel)
    } else {
        glob(sel, rel.rsplit('/').next().unwrap_or(rel))
    }
}

/// The split of a file named as the HF `datasets` cache names its shards:
/// `<name>-<split>.<ext>` or `<name>-<split>-NNNNN-of-NNNNN.<ext>` (e.g.
/// `imdb-train-00000-of-00001.parquet` -> `train`).
fn datasets_cache_split(name: &str) -> Option<&str> {
    let stem = name.split('.').next()?;
    let parts: Vec<&str> = stem.split('-').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let n = parts.len();
    let sharded = n >= 4 && parts[n - 2] == "of" && digits(parts[n - 1]) && digits(parts[n - 3]);
    let split_at = if sharded { n.checked_sub(4)? } else { n - 1 };
    // A name must come before the split.
    (split_at >= 1 && !parts[split_at].is_empty()).then_some(parts[split_at])
}

/// Glob match: `*` and `?` never cross `/`; `**` does.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                // `**/` may also match zero directories.
                let rest_noslash = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=t.len()).any(|i| go(rest, &t[i..]) || go(rest_noslash, &t[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=t.len() {
                    if go(rest, &t[i..]) {
                        return true;
                    }
                    if t.get(i) == Some(&b'/') {
                        break;
                    }
                }
                false
            }
            Some(b'?') => t.first().is_some_and(|c| *c != b'/') && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
    }

    #[test]
    fn globs() {
        assert!(glob("*.parquet", "train-0.parquet"));
        assert!(!glob("*.parquet", "a/train-0.parquet"));
        assert!(glob("**/*.parquet", "a/b/train-0.parquet"));
        assert!(glob("**/train.jsonl.xz", "train.jsonl.xz"));
        assert!(glob(
            "plain_text/te?t-*",
            "plain_text/test-00000-of-00001.parquet"
        ));
        assert!(!glob("*train*", "test.json"));
    }

    #[test]
    fn split_names_match_hub_layouts() {
        assert!(matches_selector(
            "train",
            "plain_text/train-00000-of-00001.parquet"
        ));
        assert!(matches_selector("train", "round0/30k/train.jsonl.xz"));
        assert!(matches_selector("train", "data/train/0000.parquet"));
        assert!(!matches_selector(
            "train",
            "plain_text/test-00000-of-00001.parquet"
        ));
        assert!(!matches_selector("test", "plain_text/testing.parquet"));
        // The HF datasets cache's shard names.
        assert!(matches_selector(
            "train",
            "imdb-train-00000-of-00001.parquet"
        ));
        assert!(matches_selector("train", "x/imdb-train.parquet"));
        assert!(matches_selector(
            "unsupervised",
            "imdb-unsupervised-00001-of-00002.parquet"
        ));
        assert!(!matches_selector(
            "train",
            "imdb-test-00000-of-00001.parquet"
        ));
        assert!(!matches_selector(
            "00001",
            "imdb-test-00000-of-00001.parquet"
        ));
        assert!(!matches_selector("of", "imdb-test-00000-of-00001.parquet"));
        assert!(!matches_selector("00001", "train-00000-of-00001.parquet"));
        assert!(!matches_selector("*30k*", "round0/30k/test.jsonl.xz"));
        assert!(matches_selector("round0/30k/*", "round0/30k/test.jsonl.xz"));
    }

    #[test]
    fn directories_splits_and_errors() {
        let root = fixtures();
        let imdb = root.join("imdb");
        let all = resolve(imdb.to_str().unwrap(), None).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].ends_with("plain_text/test-00000-of-00001.parquet"));
        let train = resolve(imdb.to_str().unwrap(), Some("train")).unwrap();
        assert_eq!(train.len(), 1);
        assert!(train[0].ends_with("plain_text/train-00000-of-00001.parquet"));

        let e = format!(
            "{:#}",
            resolve(imdb.to_str().unwrap(), Some("validation")).unwrap_err()
        );
        assert!(
            e.contains("validation")
                && e.contains("the 2 data file(s) there: plain_text/test-00000-of-00001.parquet, plain_text/train-00000-of-00001.parquet."),
            "{e}"
        );
        // The HF datasets cache's flat shard names select by split.
        let cache = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            std::fs::copy(
                imdb.join(format!("plain_text/{split}-00000-of-00001.parquet")),
                cache
                    .path()
                    .join(format!("imdb-{split}-00000-of-00001.parquet")),
            )
            .unwrap();
        }
        let got = resolve(cache.path().to_str().unwrap(), Some("train")).unwrap();
        assert_eq!(
            got,
            vec![cache.path().join("imdb-train-00000-of-00001.parquet")]
        );
        let one = root.join("generic.jsonl");
        let e = format!(
            "{:#}",
            resolve(one.to_str().unwrap(), Some("train")).unwrap_err()
        );
        assert!(e.contains("single file"), "{e}");
        let e = format!("{:#}", resolve("./no/such/file.jsonl", None).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
    }

    /// The `datasets` library's processed cache (`.arrow` shards) is not read: the error
    /// says so and what to give instead, for a directory and for one file.
    #[test]
    fn a_datasets_arrow_cache_is_refused_with_what_to_use_instead() {
        let cache = tempfile::tempdir().unwrap();
        let shard = cache.path().join("plain_text/0.0.0/abc/imdb-train.arrow");
        std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
        std::fs::write(&shard, b"arrow").unwrap();
        let root = cache.path().to_str().unwrap();
        let mut errors: Vec<String> = [None, Some("train")]
            .into_iter()
            .map(|sel| format!("{:#}", resolve(root, sel).unwrap_err()))
            .collect();
        let mut each = |_, _| Ok(std::ops::ControlFlow::Continue(()));
        errors.push(
            rows::for_each_row(&shard, &mut each)
                .unwrap_err()
                .to_string(),
        );
        for e in &errors {
            assert!(
                e.contains(".arrow files") && e.contains("to_parquet"),
                "{e}"
            );
        }
        assert!(errors[2].contains("imdb-train.arrow"), "{}", errors[2]);
    }

    #[test]
    fn hub_data_sets_resolve_through_the_cache_with_symlinked_files() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("datasets--stanfordnlp--imdb");
        let snap = repo.join("snapshots/0123abcd/plain_text");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        for split in ["train", "test"] {
            let name = format!("{split}-00000-of-00001.parquet");
            let blob = repo.join("blobs").join(split);
            std::fs::copy(fixtures().join("imdb/plain_text").join(&name), &blob).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(&blob, snap.join(&name)).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, snap.join(&name)).unwrap();
        }
        std::fs::write(repo.join("snapshots/0123abcd/README.md"), "# imdb").unwrap();
        let got = resolve_with_cache("stanfordnlp/imdb", Some("test"), Some(cache.path())).unwrap();
        assert_eq!(got, vec![snap.join("test-00000-of-00001.parquet")]);
        let all = resolve_with_cache("stanfordnlp/imdb", None, Some(cache.path())).unwrap();
        assert_eq!(all.len(), 2, "README.md is not a data file");
        let e = resolve_with_cache("stanfordnlp/imdb_x", None, Some(cache.path())).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("hub data set id") && e.contains("datasets--stanfordnlp--imdb_x"),
            "{e}"
        );
    }
}
