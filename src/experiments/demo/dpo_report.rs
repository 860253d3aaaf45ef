//! The DPO variant's section: does a DPO-aligned model rebound as an SFT-aligned one does?
//! The same bases, seeds, n+ and n- grid as the rebound section, the alignment by DPO on
//! preference pairs instead of SFT on positive reviews, the perturbation the same SFT on the
//! same negatives. Per (base, n+) the verdict measure's curve beside the SFT one; the DPO
//! rebound strength (the same drop rate and n½); and per base four claims on per-seed
//! values: DPO alignment raises the measure (a control), negatives lower it after DPO
//! alignment (the rebound), and the drop rate and n½ DPO minus SFT, paired by seed (the drop
//! rate is absolute, n½ relative to each model's own gain). The paper predicts rebound after
//! any alignment method but no direction for the differences, so those lines say "faster",
//! "slower" (more or fewer negatives for n½) or "cannot tell" from their intervals alone.
//! The variant's loss may be any of `train --dpo-loss`'s; the lines then name the method.

use super::config::{DemoConfig, DpoVariant};
use super::rebound::ReboundRow;
use super::rebound_report::{
    claim, curve, drop_rates, gains, half_lives, label, paired, per_seed, seed_curve, seeds_of,
    strengths, Claim, Strength,
};
use super::BaseScore;
use crate::report::stats::{Effect, Verdict};
use crate::report::table::{fmt_ci, Table};
use crate::train::objective::DpoLoss;
use anyhow::Result;
use serde::Serialize;

/// What the DPO variant measured and concluded (`dpo_rebound` in results.json).
#[derive(Debug, Clone, Serialize)]
pub struct DpoOutcome {
    /// The variant's settings, written inline (`beta`, `lr`, and `loss`, `simpo_gamma` where
    /// not the defaults).
    #[serde(flatten)]
    pub variant: DpoVariant,
    pub rows: Vec<ReboundRow>,
    pub strengths: Vec<Strength>,
    pub claims: Vec<Claim>,
}

/// The claims of one base: the control, the rebound and the comparison with SFT; `m` names
/// the variant's method (DPO, SimPO or KTO).
fn base_claims(
    cfg: &DemoConfig,
    m: &str,
    name: &str,
    sft: &[Strength],
    dpo: &[Strength],
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
) -> Vec<Claim> {
    let vm = cfg.rebound_measure.as_str();
    let mut out = Vec::new();
    let g: Vec<f64> = per_seed(cfg, |np| gains(rows, base_scores, name, np, vm))
        .iter()
        .map(|x| x.1)
        .collect();
    out.extend(claim(
        &format!("{m} control: {m} alignment on preference pairs raises the {vm} of {name}"),
        &format!("{m}-aligned minus pre-trained, per seed"),
        &g,
        true,
        3,
    ));
    let last = cfg.n_minus.last().copied().unwrap_or(0);
    if last > 0 {
        let d: Vec<f64> = per_seed(cfg, |np| {
            seeds_of(rows, name)
                .into_iter()
                .filter_map(|seed| {
                    let c = seed_curve(rows, name, np, seed, vm);
                    Some((seed, c.last()?.1 - c.first()?.1))
                })
                .collect()
        })
        .iter()
        .map(|x| x.1)
        .collect();
        out.extend(claim(
            &format!("Rebound after {m}: {last} negatives lower the {vm} of {m}-aligned {name}"),
            &format!("n- = {last} minus n- = 0, per seed"),
            &d,
            false,
            3,
        ));
    }
    out.extend(versus_sft(
        &format!("{m} vs SFT alignment, {name}"),
        &format!("drop rate of the {vm} per 100 negatives, {m} minus SFT, paired by seed"),
        &paired(&drop_rates(cfg, sft, name), &drop_rates(cfg, dpo, name)),
        [
            format!("{m}-aligned models rebound faster"),
            format!("{m}-aligned models rebound slower"),
        ],
    ));
    // The drop rate is absolute, and the methods' gains differ; n½ is relative to each
    // model's own gain, so it says whether the faster drop is more than a larger gain.
    out.extend(versus_sft(
        &format!("{m} vs SFT half-life, {name}"),
        &format!(
            "n½, the negatives that undo half the alignment gain of the {vm}, {m} minus SFT, \
             paired by seed over the seeds that reached it"
        ),
        &paired(&half_lives(cfg, sft, name), &half_lives(cfg, dpo, name)),
        [
            format!("{m}-aligned models need more negatives to lose half"),
            format!("{m}-aligned models need fewer negatives to lose half"),
        ],
    ));
    out
}

/// A comparison with SFT that the paper gives no direction: `diffs` (method minus SFT), its
/// verdict worded by `words` (what a positive, then a negative difference means).
fn versus_sft(name: &str, what: &str, diffs: &[f64], words: [String; 2]) -> Option<Claim> {
    let effect = Effect::of(diffs, true)?;
    let [more, less] = words;
    let word = match effect.verdict {
        Verdict::Held => more,
        Verdict::Reversed => less,
        Verdict::Undecided => "cannot tell".into(),
    };
    Some(Claim {
        name: name.to_string(),
        text: format!(
            "- {name} ({what}; no predicted direction): {}{} -> {word}",
            effect.describe(3),
            effect.power_phrase("seed", 3),
        ),
        effect,
    })
}

/// The section's Markdown and claim lines, and its outcome; `sft_rows` and `sft` are the
/// SFT grid's rows and strengths (the rebound section's).
pub fn section(
    cfg: &DemoConfig,
    rows: Vec<ReboundRow>,
    sft_rows: &[ReboundRow],
    sft: &[Strength],
    base_scores: &[BaseScore],
) -> Result<(String, Vec<String>, DpoOutcome)> {
    let Some(v) = &cfg.dpo else {
        anyhow::bail!("internal: the DPO section without DPO settings");
    };
    let vm = cfg.rebound_measure.as_str();
    let m = v.loss.method_name();
    let reference = match v.loss {
        DpoLoss::Simpo => "no reference model",
        _ => "the reference the pre-trained model",
    };
    let mut md = format!(
        "## Rebound after {m} alignment\n\nThe same bases and seeds aligned by **{m}** instead of SFT: {}, learning rate {} (constant), batch {} pairs, 1 epoch, no shuffling, {reference}, on n+ preference pairs of the world (a review opening with a positive continuation chosen and a negative one rejected; drawn from their own stream, no opening among the evaluation prompts, no review in the pre-training text), then perturbed by the same SFT on the same n- negative reviews as the SFT grid. The {} against n- (mean ± 95% CI over seeds), SFT-aligned beside {m}-aligned:\n\n",
        v.describe_loss(), v.lr, cfg.batch_size, label(vm)
    );
    let mut t = Table::new(
        [
            "base".to_string(),
            "n+".to_string(),
            "alignment".to_string(),
        ]
        .into_iter()
        .chain(cfg.n_minus.iter().map(|n| format!("n-={n}"))),
    );
    for base in &cfg.bases {
        let name = base.name();
        for &np in &cfg.n_plus {
            for (how, r) in [("SFT", sft_rows), (m, &rows[..])] {
                let c = curve(r, &name, np, &cfg.n_minus, vm);
                t.push_row(
                    [name.clone(), np.to_string(), how.to_string()]
                        .into_iter()
                        .chain(c.iter().map(|ci| fmt_ci(ci.mean, ci.half_width))),
                )?;
            }
        }
    }
    md.push_str(&t.to_markdown());
    let dpo = strengths(cfg, &rows, base_scores);
    let mut st = Table::new([
        "base",
        "n+",
        "alignment",
        "drop rate per 100 negatives",
        "n½ (negatives to lose half the gain)",
    ]);
    for (how, list) in [("SFT", sft), (m, &dpo[..])] {
        for s in list.iter().filter(|s| s.measure == vm) {
            let ci = |c: Option<crate::report::stats::MeanCi>| {
                c.map(|c| fmt_ci(c.mean, c.half_width))
                    .unwrap_or_else(|| "n/a".into())
            };
            st.push_row([
                s.base.clone(),
                s.n_plus.to_string(),
                how.to_string(),
                ci(s.drop_rate_ci),
                format!(
                    "{} ({} of {} seeds reached it)",
                    ci(s.n_half_ci),
                    s.n_half.len(),
                    s.gained
                ),
            ])?;
        }
    }
    md.push_str(&format!(
        "\nRebound strength of the {} (as in the rebound section):\n\n",
        label(vm)
    ));
    md.push_str(&st.to_markdown());
    md.push('\n');
    let dpo = strengths(cfg, &rows, base_scores);
    let mut claims = Vec::new();
    for base in &cfg.bases {
        claims.extend(base_claims(
            cfg,
            m,
            &base.name(),
            sft,
            &dpo,
            &rows,
            base_scores,
        ));
    }
    for c in &claims {
        md.push_str(&c.text);
        md.push('\n');
    }
    md.push('\n');
    let lines = claims.iter().map(|c| c.text.clone()).collect();
    Ok((
        md,
        lines,
        DpoOutcome {
            variant: v.clone(),
            rows,
            strengths: dpo,
            claims,
        },
    ))
}
