//! Progress for long work. On a terminal: bars drawn on stderr. Off a terminal (nohup,
//! Slurm logs, CI) bars stay hidden and [`LogLines`] writes a plain line to stderr at a steady
//! interval instead, as HF's Trainer does, so a long job can be followed with `tail -f`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Seconds between two progress lines off a terminal (default 30); read once per run.
pub const INTERVAL_ENV: &str = "ELASTICA_PROGRESS_SECS";

/// A bar counting `len` units of `unit` (e.g. "step", "tok") with a short message slot.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The interval between two progress lines off a terminal: [`INTERVAL_ENV`] seconds, 30 if
/// unset or not a number >= 0.
pub fn interval() -> Duration {
    let secs = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs)
}

/// Progress lines for a log file:
/// `train: step 120/1000 (12.0%) loss 2.3456 tok/s 1530 elapsed 1m20s eta 9m47s`, every
/// [`INTERVAL_ENV`] seconds and once at the end. Rates count the steps run by this process
/// (a resumed run's earlier steps are not in them).
pub struct LogLines {
    what: String,
    total: usize,
    first: usize,
    started: Instant,
    last_line: Instant,
    every: Duration,
    tokens: usize,
    last: Option<(usize, f64)>,
}

impl LogLines {
    pub fn new(what: &str, total: usize, start: usize) -> Self {
        let now = Instant::now();
        LogLines {
            what: what.to_string(),
            total,
            first: start,
            started: now,
            last_line: now,
            every: interval(),
            tokens: 0,
            last: None,
        }
    }

    /// Record a finished step (1-based) and print a line if the interval has passed.
    pub fn step(&mut self, step: usize, loss: f64, tokens: usize) {
        self.tokens += tokens;
        self.last = Some((step, loss));
        if self.last_line.elapsed() >= self.every {
            self.print();
        }
    }

    /// The closing line (if any step ran).
    pub fn finish(&mut self) {
        if self.last.is_some() {
            self.print();
        }
    }

    fn print(&mut self) {
        self.last_line = Instant::now();
        if let Some(line) = self.line() {
            eprintln!("{line}");
        }
    }

    fn line(&self) -> Option<String> {
        let (step, loss) = self.last?;
        let secs = self.started.elapsed().as_secs_f64();
        let done = step.saturating_sub(self.first);
        let left = self.total.saturating_sub(step);
        let pct = 100.0 * step as f64 / self.total.max(1) as f64;
        let tps = if secs > 0.0 {
            self.tokens as f64 / secs
        } else {
            0.0
        };
        let eta = if done > 0 {
            clock(secs / done as f64 * left as f64)
        } else {
            "?".into()
        };
        Some(format!(
            "{}: step {step}/{} ({pct:.1}%) loss {loss:.4} tok/s {tps:.0} elapsed {} eta {eta}",
            self.what,
            self.total,
            clock(secs)
        ))
    }
}

/// `1h02m03s`, `4m05s`, `7s`.
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_step_loss_rate_and_eta() {
        let mut l = LogLines::new("train", 10, 2);
        assert!(l.line().is_none());
        l.step(3, 1.5, 100);
        let line = l.line().unwrap();
        assert!(
            line.starts_with("train: step 3/10 (30.0%) loss 1.5000 tok/s "),
            "{line}"
        );
        assert!(
            line.contains(" elapsed ") && line.contains(" eta "),
            "{line}"
        );
        assert_eq!(clock(3723.0), "1h02m03s");
        assert_eq!(clock(245.0), "4m05s");
        assert_eq!(clock(7.2), "7s");
    }
}
