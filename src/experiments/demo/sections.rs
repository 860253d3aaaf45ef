//! The demo's resistance and theory sections. Each runs through its own command's code
//! (`elastica resist`, `elastica theory`) into a subdirectory of the run, with its full
//! report there, and contributes a short section and its claims to the demo report.

use super::config::DemoConfig;
use crate::experiments::resist::config::ResistConfig;
use crate::experiments::resist::pipeline::run_with;
use crate::experiments::resist::results::{markdown_counts, ResistResults};
use crate::grid::config::RunOptions;
use crate::report::stats::{p_phrase, Effect};
use crate::theory::elasticity::{run_experiment, TheoryConfig};
use anyhow::{Context, Result};
use std::path::Path;

/// The resistance run's settings on the world model in `base_dir`, checked (it reads
/// neither the model nor the data, so the demo checks it before writing anything).
pub fn resist_config(cfg: &DemoConfig, base_dir: &Path, world_dir: &Path) -> Result<ResistConfig> {
    let data = world_dir.join("reviews_positive.jsonl");
    let mut rc = ResistConfig::demo(
        base_dir.to_string_lossy(),
        data.to_string_lossy(),
        cfg.resist_slice_records,
    );
    rc.seeds = cfg.resist_seeds.clone();
    rc.eval_prompts = cfg.resist_prompts;
    rc.data.limit = Some(3 * cfg.resist_slice_records + cfg.resist_prompts);
    rc.validate().context(
        "the demo's resistance settings (resist_slice_records, resist_prompts, resist_seeds)",
    )?;
    Ok(rc)
}

/// Forward vs inverse alignment (PAPER.md §3) on the world model in `base_dir`: slices of
/// positive reviews, checkpoints theta_1..3, their generations, and the pair fine-tunes.
pub fn resistance(
    cfg: &DemoConfig,
    base_dir: &Path,
    base_name: &str,
    world_dir: &Path,
    out: &Path,
) -> Result<(String, String, ResistResults)> {
    let rc = resist_config(cfg, base_dir, world_dir)?;
    let res = run_with(&rc, out, RunOptions::waiting(false))
        .context("the demo's resistance section")?
        .context("the demo's resistance run did not finish")?;
    let mut md = String::from("## Resistance: forward vs inverse alignment\n\n");
    md.push_str(&format!(
        "The {base_name} model is fine-tuned in sequence on 3 slices of {} positive reviews (checkpoints θ1..θ3 after θ0 = the pre-trained model); each checkpoint answers {} held-out prompts; then for every pair k < l, forward = θk fine-tuned on θl's answers and inverse = θl fine-tuned on θk's answers, with the same data size and settings, {} seed(s). Full report: [resist/report.md](resist/report.md).\n\n",
        cfg.resist_slice_records,
        cfg.resist_prompts,
        cfg.resist_seeds.len()
    ));
    // The counts only: the verdict is the claim below, over seeds.
    md.push_str(&markdown_counts(&res));
    md.push_str("\n\n");
    // The comparisons of one seed share its checkpoints, so the seed is the unit: per seed,
    // the mean forward - inverse loss over its pairs; the test is over seeds.
    let mut seeds: Vec<u64> = res.comparisons.iter().map(|c| c.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let per_seed: Vec<f64> = seeds
        .iter()
        .filter_map(|s| {
            let d: Vec<f64> = res
                .comparisons
                .iter()
                .filter(|c| c.seed == *s)
                .map(|c| c.difference)
                .collect();
            crate::report::stats::mean(&d)
        })
        .collect();
    let effect = Effect::of(&per_seed, true);
    let claim = format!(
        "- Resistance (inverse alignment easier than forward; mean forward − inverse loss per seed, the seed's {} comparisons share its checkpoints): {}{} -> {} ({} of {} comparisons had the lower inverse loss{})",
        res.pairs.len(),
        effect.map(|e| e.describe(3)).unwrap_or_else(|| "no comparison".into()),
        effect.map(|e| e.power_phrase("seed", 3)).unwrap_or_default(),
        effect.map(|e| e.verdict.word()).unwrap_or("undecided"),
        res.inverse_lower,
        res.total,
        effect
            .and_then(|e| e.p_permutation)
            .map(|p| format!("; exact sign-flip test over seeds {}", p_phrase(p)))
            .unwrap_or_default()
    );
    md.push_str(&claim);
    md.push_str("\n\n");
    Ok((md, claim, res))
}

/// The exact token-tree simulation of the elasticity theorem (PAPER.md §2) at its defaults.
pub fn theory(out: &Path) -> Result<(String, Vec<String>, serde_json::Value)> {
    let tc = TheoryConfig::default();
    let res = run_experiment(&tc).context("the demo's theory section")?;
    res.write(out)?;
    let mut md = String::from("## Theory: the elasticity theorem, simulated exactly\n\n");
    md.push_str(&res.summary_markdown());
    md.push_str("\nFull report: [theory/report.md](theory/report.md).\n\n");
    let slope = res.fits.ideal_secant.fit.as_ref().map(|f| f.slope);
    let claim = format!(
        "- Theory (exact simulation): slope of log(ratio) against log(k) {} (theorem: about 1) -> {}",
        slope
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "undefined".into()),
        match slope {
            Some(s) if (s - 1.0).abs() < 0.2 => "held",
            Some(_) => "did not hold at these settings",
            None => "not measurable",
        }
    );
    let json = serde_json::json!({
        "per_k": res.per_k.iter().map(|k| serde_json::json!({
            "k": k.k, "ratio_secant": k.ratio_secant, "signs_as_theorem": k.signs_as_theorem,
            "seeds": k.seeds,
        })).collect::<Vec<_>>(),
        "log_log_slope": slope,
    });
    Ok((md, vec![claim], json))
}
