//! Where a training cell writes its TensorBoard events: `<log_dir>/<cell id>` under the
//! config's `log_dir` key (rebound and resist alike), so `tensorboard --logdir <log_dir>`
//! shows the grid's curves side by side.

use anyhow::{Context, Result};
use std::path::Path;

/// `<log_dir>/<cell id>` as an absolute path (cells may run in another working directory);
/// `None` when the config sets no `log_dir`.
pub fn cell_log_dir(log_dir: Option<&str>, id: &str) -> Result<Option<String>> {
    log_dir
        .map(|d| {
            let dir = std::path::absolute(Path::new(d).join(id))
                .with_context(|| format!("log_dir {d}: cannot make it absolute"))?;
            Ok(dir.to_string_lossy().into_owned())
        })
        .transpose()
}
