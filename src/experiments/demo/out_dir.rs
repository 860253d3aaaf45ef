//! The demo's hold on its `--out`: one demo at a time (an advisory lock, the one `train
//! --out` and grid cells take) and one set of settings per directory (`demo_config.json` is
//! the run's identity: its models, cells and results were made with those settings). Both are
//! checked before the demo writes anything, so a refused demo leaves the directory as it was.

use super::config::DemoConfig;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;

/// The lock file a running demo holds in its `--out`.
pub const LOCK_FILE: &str = ".demo.lock";
/// The settings of the demo run in a directory (written before its world and models).
pub const CONFIG_FILE: &str = "demo_config.json";

/// Refuse `out` if it holds a demo run made with other settings. Reads only.
pub fn check_settings(cfg: &DemoConfig, out: &Path) -> Result<()> {
    let path = out.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let there: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not valid JSON, so {} cannot be resumed; give another --out",
            path.display(),
            out.display()
        )
    })?;
    // Through the text the file holds, so both sides parse their numbers the same way.
    let here: serde_json::Value = serde_json::from_str(&serde_json::to_string_pretty(cfg)?)?;
    if there == here {
        return Ok(());
    }
    bail!(
        "{} holds a demo run made with other settings ({}: {}); its world, models and results \
         belong to those. Give another --out, or delete {} to start afresh there",
        out.display(),
        path.display(),
        differences(&there, &here),
        out.display()
    )
}

/// Create `out` and take its lock, or refuse while another demo runs into it; then check its
/// settings again, under the lock. The lock lasts while the returned file is open.
pub fn claim(cfg: &DemoConfig, out: &Path) -> Result<File> {
    let lock = crate::util::fsx::lock_folder(out, LOCK_FILE, "demo is running into")?;
    check_settings(cfg, out)?;
    Ok(lock)
}

/// The top-level settings that differ, as "seed 42 there, 7 here; ...".
fn differences(there: &serde_json::Value, here: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (there.as_object(), here.as_object()) else {
        return "not a demo's settings".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k} {} there, {} here", show(a.get(k)), show(b.get(k))))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_settings_are_named_and_the_same_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DemoConfig::quick(42);
        check_settings(&cfg, dir.path()).unwrap();
        let text = serde_json::to_string_pretty(&cfg).unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        check_settings(&cfg, dir.path()).unwrap();
        let mut other = DemoConfig::quick(7);
        other.seeds = vec![1];
        let e = check_settings(&other, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("seed 42 there, 7 here") && e.contains("seeds [1,2,3] there, [1] here"),
            "{e}"
        );
        assert!(e.contains("another --out"), "{e}");
    }

    #[test]
    fn a_held_lock_refuses_a_second_demo() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DemoConfig::quick(42);
        let held = claim(&cfg, dir.path()).unwrap();
        let e = claim(&cfg, dir.path()).unwrap_err().to_string();
        assert!(e.contains("another elastica demo is running"), "{e}");
        drop(held);
        claim(&cfg, dir.path()).unwrap();
    }
}
