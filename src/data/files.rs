//! Which data files a data path names. A path is a file, a directory of shards (searched
//! recursively), or a hub data set id (`stanfordnlp/imdb`) found in the offline Hugging Face
//! cache. An optional `files` selector narrows a directory to a split or a glob:
//! - a split name (`train`, `test`): files named `train.*`, `train-*` or `train_*`, or files
//!   under a directory named `train` (the hub's shard layouts);
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
    if let Some(sel) = selector {
        found.retain(|rel| matches_selector(sel, rel));
    }
    if found.is_empty() {
        match selector {
            Some(sel) => bail!(
                "no data file under {} matches `files = \"{sel}\"` ({all} data files there); \
                 use a split name such as \"train\" or a glob such as \"*train*.parquet\"",
                root.display()
            ),
            None => bail!(
                "no data files (.parquet, .json, .jsonl[.gz|.xz|.zst]) under {}",
                root.display()
            ),
        }
    }
    Ok(found.into_iter().map(|rel| root.join(rel)).collect())
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

fn matches_selector(sel: &str, rel: &str) -> bool {
    let is_glob = sel.contains(['*', '?', '/', '.']);
    if !is_glob {
        let mut parts: Vec<&str> = rel.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        return parts.contains(&sel)
            || name
                .strip_prefix(sel)
                .is_some_and(|rest| rest.starts_with(['.', '-', '_']));
    }
    if sel.contains('/') {
        glob(sel, rel)
    } else {
        glob(sel, rel.rsplit('/').next().unwrap_or(rel))
    }
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
            e.contains("validation") && e.contains("2 data files"),
            "{e}"
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
