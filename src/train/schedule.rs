//! Learning-rate schedules, as transformers' `get_scheduler` computes them (the multiplier for
//! optimizer step s, 0-based): linear warm-up from 0, then constant, linear decay to 0, or
//! half-cosine decay to 0.

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Warm-up steps for a ratio: ceil(ratio * total), as transformers' `get_warmup_steps`.
pub fn warmup_steps(ratio: f64, total: usize) -> usize {
    (ratio * total as f64).ceil() as usize
}

/// Learning rate for 0-based optimizer step `step` of `total`.
pub fn lr_at(schedule: Schedule, base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_formulas() {
        // get_linear_schedule_with_warmup(2, 6): 0, .5, 1, .75, .5, .25
        let got: Vec<f64> = (0..6)
            .map(|s| lr_at(Schedule::Linear, 1.0, s, 2, 6))
            .collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        assert_eq!(lr_at(Schedule::Constant, 2.0, 5, 0, 6), 2.0);
        assert!((lr_at(Schedule::Cosine, 1.0, 2, 0, 4) - 0.5).abs() < 1e-12);
        assert_eq!(warmup_steps(0.2, 6), 2);
    }
}
