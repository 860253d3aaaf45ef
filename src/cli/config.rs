//! `--config FILE.toml` support: the file's keys become long flags placed before the flags
//! typed by the user, and clap's `args_override_self` lets the typed ones win.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// Subcommands whose `--config` is their own structured experiment config (nested TOML
/// tables), passed through to them instead of being expanded into flags.
pub const OWN_CONFIG_COMMANDS: &[&str] = &["rebound", "scaling", "resist"];

/// What the subcommand knows of a long flag (without its `--`): `None` if it has no such
/// flag, else whether the flag takes a value (a switch does not).
pub type FlagLookup<'a> = &'a dyn Fn(&str) -> Option<bool>;

/// Replace `--config FILE` (or `--config=FILE`) in `argv` by the flags the TOML file sets.
/// Only the first occurrence is expanded; the file's flags go right after the subcommand.
pub fn expand_config_args(argv: Vec<OsString>, flag: FlagLookup) -> Result<Vec<OsString>> {
    if argv
        .get(1)
        .is_some_and(|c| OWN_CONFIG_COMMANDS.contains(&c.to_string_lossy().as_ref()))
    {
        return Ok(argv);
    }
    let mut pos = None;
    let mut path = None;
    for (i, a) in argv.iter().enumerate() {
        let s = a.to_string_lossy();
        if s == "--config" {
            let Some(p) = argv.get(i + 1) else {
                bail!("--config needs a file path");
            };
            pos = Some((i, 2));
            path = Some(p.clone());
            break;
        }
        if let Some(p) = s.strip_prefix("--config=") {
            pos = Some((i, 1));
            path = Some(OsString::from(p));
            break;
        }
    }
    let (Some((i, n)), Some(path)) = (pos, path) else {
        return Ok(argv);
    };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let flags =
        toml_to_flags(&text, flag).with_context(|| format!("in config file {}", path.display()))?;
    // Subcommand is argv[1]; file flags go right after it, the user's flags after those.
    let mut out: Vec<OsString> = Vec::with_capacity(argv.len() + flags.len());
    let insert_at = 2.min(argv.len());
    for (j, a) in argv.iter().enumerate() {
        if j == insert_at {
            out.extend(flags.iter().map(OsString::from));
        }
        if j >= i && j < i + n {
            continue;
        }
        out.push(a.clone());
    }
    if insert_at >= argv.len() {
        out.extend(flags.iter().map(OsString::from));
    }
    Ok(out)
}

/// Turn a flat TOML table into `--key value` flags (`snake_case` keys become `kebab-case`).
/// A boolean sets a switch (`resume = true`) or, where the flag is the switch's negation,
/// spells it (`shuffle = false` is `--no-shuffle`); a key that names no flag is refused.
pub fn toml_to_flags(text: &str, flag: FlagLookup) -> Result<Vec<String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let negation = format!("no-{long}");
        let takes_value = match (flag(&long), &value) {
            (Some(takes), _) => takes,
            (None, toml::Value::Boolean(b)) if flag(&negation) == Some(false) => {
                if !b {
                    flags.push(format!("--{negation}"));
                }
                continue;
            }
            (None, _) => bail!(
                "unknown key `{key}`: the keys are the command's long flag names (see its --help)"
            ),
        };
        let flag = format!("--{long}");
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if b {
                    flags.push(flag);
                }
            }
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>> = items.iter().map(scalar).collect();
                flags.push(flag);
                flags.push(parts.with_context(|| format!("key `{key}`"))?.join(","));
            }
            other => {
                flags.push(flag);
                flags.push(scalar(&other).with_context(|| format!("key `{key}`"))?);
            }
        }
    }
    Ok(flags)
}

fn scalar(v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("unsupported value {other} (use strings, numbers, booleans or lists)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `elastica train`'s flags, as the CLI looks them up.
    fn train_flag(long: &str) -> Option<bool> {
        crate::cli::long_flag("train", long)
    }

    #[test]
    fn toml_keys_become_flags() {
        let f = toml_to_flags(
            "lr = 0.001\nno_shuffle = true\nbetas = [0.9, 0.95]\nmodel = \"m\"\n",
            &train_flag,
        )
        .unwrap();
        let s = f.join(" ");
        assert!(s.contains("--lr 0.001"), "{s}");
        assert!(s.contains("--no-shuffle"), "{s}");
        assert!(s.contains("--betas 0.9,0.95"), "{s}");
        assert!(s.contains("--model m"), "{s}");
    }

    #[test]
    fn config_flags_go_before_user_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "lr = 0.5\n").unwrap();
        let argv: Vec<OsString> = [
            "elastica",
            "train",
            "--config",
            p.to_str().unwrap(),
            "--lr",
            "0.1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = expand_config_args(argv, &train_flag).unwrap();
        let out: Vec<String> = out
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(out, vec!["elastica", "train", "--lr", "0.5", "--lr", "0.1"]);
    }

    #[test]
    fn bad_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "lr = = 1").unwrap();
        let argv: Vec<OsString> = ["elastica", "train", "--config", p.to_str().unwrap()]
            .iter()
            .map(OsString::from)
            .collect();
        let e = format!("{:#}", expand_config_args(argv, &train_flag).unwrap_err());
        assert!(e.contains("bad.toml"), "{e}");
    }

    /// `shuffle = false` (the stored spelling of `--no-shuffle`) turns shuffling off, a
    /// switch set false stays off, and a key that is no flag is refused by name.
    #[test]
    fn booleans_spell_switches_and_unknown_keys_are_refused() {
        let f = |t: &str| toml_to_flags(t, &train_flag).map(|f| f.join(" "));
        assert_eq!(f("shuffle = false").unwrap(), "--no-shuffle");
        assert_eq!(f("shuffle = true").unwrap(), "");
        assert_eq!(f("no_shuffle = true").unwrap(), "--no-shuffle");
        assert_eq!(f("resume = false").unwrap(), "");
        assert_eq!(f("resume = true").unwrap(), "--resume");
        let e = format!("{:#}", f("bogus = 1").unwrap_err());
        assert!(e.contains("unknown key `bogus`"), "{e}");
        assert!(f("bogus = false").is_err());
    }
}
