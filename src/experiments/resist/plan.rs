//! The comparisons of the resistance experiment: the pairs k < l and the two fine-tunes of
//! each.
//!
//! A [`PairPlan`] owns the one sample count and the one set of hyper-parameters that both of
//! its fine-tunes use. The forward run (theta_k on gen_l) and the inverse run (theta_l on
//! gen_k) get their data only through [`PairPlan::training_set`], which takes the answers to
//! the same first `samples` prompts from either data set. So the two directions cannot differ
//! in sample count, prompts, hyper-parameters or seed: there is no field to set differently.

use crate::data::prompts::Prompt;
use crate::data::records::Record;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which way a pair's fine-tune goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// theta_k (earlier) fine-tuned on theta_l's responses.
    Forward,
    /// theta_l (later) fine-tuned on theta_k's responses: back toward the earlier model.
    Inverse,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Inverse];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Inverse => "inverse",
        }
    }
}

/// One comparison between checkpoints theta_k and theta_l (k < l). It travels inside the
/// manifest's pair cells; reading it back re-checks it (`PairPlan::new`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPairPlan")]
pub struct PairPlan {
    k: usize,
    l: usize,
    samples: usize,
    train: TrainConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPairPlan {
    k: usize,
    l: usize,
    samples: usize,
    train: TrainConfig,
}

impl TryFrom<RawPairPlan> for PairPlan {
    type Error = anyhow::Error;
    fn try_from(r: RawPairPlan) -> Result<Self> {
        PairPlan::new(r.k, r.l, r.samples, r.train)
    }
}

impl PairPlan {
    /// A pair fine-tuning both directions on `samples` records with `train` (seed included).
    pub fn new(k: usize, l: usize, samples: usize, train: TrainConfig) -> Result<Self> {
        if k >= l {
            bail!("a pair needs k < l (the earlier checkpoint first), got ({k}, {l})");
        }
        if samples == 0 {
            bail!("a pair needs at least one sample per fine-tune");
        }
        train.validate()?;
        Ok(PairPlan {
            k,
            l,
            samples,
            train,
        })
    }

    /// Every pair k < l of `checkpoints` (sorted ascending), in (k, l) order.
    pub fn all(checkpoints: &[usize], samples: usize, train: &TrainConfig) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for (i, &k) in checkpoints.iter().enumerate() {
            for &l in &checkpoints[i + 1..] {
                out.push(PairPlan::new(k, l, samples, train.clone())?);
            }
        }
        Ok(out)
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn l(&self) -> usize {
        self.l
    }
    /// Samples in each direction's fine-tune.
    pub fn samples(&self) -> usize {
        self.samples
    }
    /// Hyper-parameters (and seed) of both directions.
    pub fn train(&self) -> &TrainConfig {
        &self.train
    }

    /// `k-l`, used in directory names and tables.
    pub fn id(&self) -> String {
        format!("{}-{}", self.k, self.l)
    }

    /// `θ1→θ2`-style label for tables and plots.
    pub fn label(&self) -> String {
        format!("θ{} vs θ{}", self.k, self.l)
    }

    /// The checkpoint the fine-tune of direction `dir` starts from.
    pub fn start(&self, dir: Direction) -> usize {
        match dir {
            Direction::Forward => self.k,
            Direction::Inverse => self.l,
        }
    }

    /// The checkpoint whose generations direction `dir` trains on.
    pub fn data_from(&self, dir: Direction) -> usize {
        match dir {
            Direction::Forward => self.l,
            Direction::Inverse => self.k,
        }
    }

    /// The training records of direction `dir`: the answers of checkpoint
    /// `data_from(dir)` to the first `samples` held-out prompts. Errors when that data set is
    /// missing or shorter, or when gen_k and gen_l do not answer the same prompts.
    pub fn training_set(
        &self,
        dir: Direction,
        gens: &BTreeMap<usize, Vec<Record>>,
    ) -> Result<Vec<Record>> {
        let take = |c: usize| -> Result<&[Record]> {
            let g = gens
                .get(&c)
                .with_context(|| format!("the generations of θ{c} (gen_{c}) are missing"))?;
            if g.len() < self.samples {
                bail!(
                    "gen_{c} holds {} responses but pair {} needs {} per direction",
                    g.len(),
                    self.id(),
                    self.samples
                );
            }
            Ok(&g[..self.samples])
        };
        let (a, b) = (take(self.k)?, take(self.l)?);
        if let Some(i) = (0..self.samples).find(|&i| prompt(&a[i]) != prompt(&b[i])) {
            bail!(
                "gen_{} and gen_{} answer different prompts at record {} ({:?} vs {:?}); both \
                 must answer the same held-out prompts in the same order",
                self.k,
                self.l,
                i + 1,
                prompt(&a[i]),
                prompt(&b[i])
            );
        }
        Ok(match self.data_from(dir) {
            c if c == self.k => a.to_vec(),
            _ => b.to_vec(),
        })
    }
}

/// The prompt a generation answered: its text or its conversation's turns.
fn prompt(r: &Record) -> Option<Prompt> {
    Prompt::of_record(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(c: usize, n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::pair(format!("prompt {i}"), format!("answer of θ{c} to {i}")))
            .collect()
    }

    #[test]
    fn pairs_are_every_k_below_l() {
        let t = TrainConfig::default();
        let ids: Vec<String> = PairPlan::all(&[0, 1, 2, 3], 4, &t)
            .unwrap()
            .iter()
            .map(PairPlan::id)
            .collect();
        assert_eq!(ids, ["0-1", "0-2", "0-3", "1-2", "1-3", "2-3"]);
        assert!(PairPlan::new(2, 2, 4, t.clone()).is_err());
        assert!(PairPlan::new(1, 2, 0, t).is_err());
    }

    /// The two directions of a pair always train on the same number of samples (and the
    /// same prompts), whatever the sizes of the generation sets they draw from.
    #[test]
    fn forward_and_inverse_sample_counts_cannot_differ() {
        let t = TrainConfig::default();
        for samples in 1..=5 {
            let p = PairPlan::new(1, 3, samples, t.clone()).unwrap();
            // gen_3 is longer than gen_1: neither direction may use the extra records.
            let gens = BTreeMap::from([(1, gen(1, 5)), (3, gen(3, 9))]);
            let fwd = p.training_set(Direction::Forward, &gens).unwrap();
            let inv = p.training_set(Direction::Inverse, &gens).unwrap();
            assert_eq!((fwd.len(), inv.len()), (samples, samples));
            let prompts = |v: &[Record]| v.iter().map(prompt).collect::<Vec<_>>();
            assert_eq!(prompts(&fwd), prompts(&inv), "same prompts both ways");
            assert_eq!(fwd, gen(3, samples), "forward trains theta_1 on gen_3");
            assert_eq!(inv, gen(1, samples), "inverse trains theta_3 on gen_1");
            assert_eq!(
                (p.start(Direction::Forward), p.start(Direction::Inverse)),
                (1, 3)
            );
        }
        // A generation set shorter than the pair's count is an error for both directions,
        // never a silently smaller fine-tune on one side.
        let p = PairPlan::new(1, 3, 6, t).unwrap();
        let gens = BTreeMap::from([(1, gen(1, 5)), (3, gen(3, 9))]);
        for d in Direction::BOTH {
            let e = format!("{:#}", p.training_set(d, &gens).unwrap_err());
            assert!(
                e.contains("gen_1 holds 5 responses") && e.contains("needs 6"),
                "{e}"
            );
        }
    }

    #[test]
    fn serde_round_trip_rechecks_the_pair() {
        let p = PairPlan::new(1, 2, 3, TrainConfig::default()).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(serde_json::from_value::<PairPlan>(v.clone()).unwrap(), p);
        let mut bad = v;
        bad["k"] = serde_json::json!(5);
        let e = serde_json::from_value::<PairPlan>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k < l"), "{e}");
    }

    #[test]
    fn generations_must_answer_the_same_prompts() {
        let p = PairPlan::new(0, 1, 2, TrainConfig::default()).unwrap();
        let mut other = gen(1, 2);
        other[1] = Record::pair("something else", "x");
        let gens = BTreeMap::from([(0, gen(0, 2)), (1, other)]);
        let e = format!(
            "{:#}",
            p.training_set(Direction::Forward, &gens).unwrap_err()
        );
        assert!(e.contains("different prompts at record 2"), "{e}");
        let e = format!(
            "{:#}",
            p.training_set(Direction::Forward, &BTreeMap::new())
                .unwrap_err()
        );
        assert!(e.contains("gen_0) are missing"), "{e}");
    }
}
