//! Which command's run an output folder holds, so that one command never writes into
//! another's run (a theory report over a rebound run's `report.md`, a model into a grid) and
//! two processes never write one run at once. A command that writes a run into `--out`
//! first refuses a folder holding another command's run; [`claim`] then also locks the
//! folder for as long as the command runs and marks it with the command's name.

use crate::grid::manifest::MANIFEST_FILE;
use crate::train::sft::LOG_FILE;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;

/// Names the command whose run the folder holds.
pub const MARKER: &str = ".elastica-run";
/// Held (flock) by the process writing the run.
const LOCK: &str = ".elastica.lock";

/// The files that tell which command wrote a folder without a marker (what runs written
/// before markers existed, and the commands with locks of their own, leave).
const SIGNATURES: [(&str, &str); 4] = [
    ("demo_config.json", "demo"),
    (MANIFEST_FILE, "grid"),
    (LOG_FILE, "train"),
    ("rates.json", "rates"),
];

/// The command whose run `out` holds, if any: its marker, else its signature file.
fn holder(out: &Path) -> Result<Option<String>> {
    let marker = out.join(MARKER);
    if marker.is_file() {
        let text = std::fs::read_to_string(&marker)
            .with_context(|| format!("cannot read {}", marker.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(SIGNATURES
        .iter()
        .find(|(file, _)| out.join(file).exists())
        .map(|(_, kind)| kind.to_string()))
}

/// Refuse an `out` that holds the run of another command than `kind`.
pub fn refuse_foreign(out: &Path, kind: &str) -> Result<()> {
    match holder(out)? {
        Some(h) if h != kind => bail!(
            "{} holds a `{h}` run; `elastica {kind}` does not write into another command's \
             run: give another --out",
            out.display()
        ),
        _ => Ok(()),
    }
}

/// Refuse a foreign `out` (see [`refuse_foreign`]), create it, lock it (refused while
/// another process holds it) and mark it as `kind`'s. The lock lasts while the returned file
/// is open.
pub fn claim(out: &Path, kind: &str) -> Result<File> {
    refuse_foreign(out, kind)?;
    let lock = crate::util::fsx::lock_folder(out, LOCK, "process is writing into")?;
    if !out.join(MARKER).is_file() {
        crate::util::fsx::atomic_write(&out.join(MARKER), format!("{kind}\n").as_bytes())?;
    }
    Ok(lock)
}
