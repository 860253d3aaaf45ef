//! The finished evaluations of a rebound run, found by their own fields (model, n+, n-,
//! seed), for the report and the instruments to read alike.

use super::cells::{EvalOutput, BASE, PERTURB};
use crate::grid::rundir::Grid;
use anyhow::Result;
use std::collections::HashMap;

/// The finished evaluations of a run, found by their own fields: each [`EvalOutput`] says
/// which model, n+, n- and seed it measured, so nothing is rebuilt from cell ids.
#[derive(Debug, Default)]
pub struct Outputs {
    base: HashMap<(String, u64), EvalOutput>,
    perturbed: HashMap<(String, usize, usize, u64), EvalOutput>,
}

impl Outputs {
    /// Every finished evaluating cell of `grid`, and the ids of the cells without a result.
    pub fn read(grid: &Grid) -> Result<(Outputs, Vec<String>)> {
        let mut outputs = Outputs::default();
        let mut missing = Vec::new();
        for (i, c) in grid.manifest().cells.iter().enumerate() {
            match grid.result(i)? {
                Some(r) if c.kind == BASE => outputs.insert_base(r.output_as()?),
                Some(r) if c.kind == PERTURB => outputs.insert_perturbed(r.output_as()?),
                Some(_) => {}
                None => missing.push(c.id.clone()),
            }
        }
        Ok((outputs, missing))
    }

    pub fn insert_base(&mut self, o: EvalOutput) {
        self.base.insert((o.model.clone(), o.seed), o);
    }

    pub fn insert_perturbed(&mut self, o: EvalOutput) {
        let key = (o.model.clone(), o.n_positive, o.n_negative, o.seed);
        self.perturbed.insert(key, o);
    }

    /// The pre-trained model's evaluation with this seed.
    pub fn base(&self, model: &str, seed: u64) -> Option<&EvalOutput> {
        self.base.get(&(model.to_string(), seed))
    }

    /// The evaluation after n+ positives and n- negatives (n- = 0: the aligned model).
    pub fn perturbed(&self, model: &str, np: usize, nn: usize, seed: u64) -> Option<&EvalOutput> {
        self.perturbed.get(&(model.to_string(), np, nn, seed))
    }

    /// The evaluations after n+ positives and n- negatives over `seeds`, in seed order
    /// (a seed whose cell has no result is left out).
    pub fn perturbed_over_seeds(
        &self,
        model: &str,
        np: usize,
        nn: usize,
        seeds: &[u64],
    ) -> Vec<&EvalOutput> {
        seeds
            .iter()
            .filter_map(|&s| self.perturbed(model, np, nn, s))
            .collect()
    }

    pub fn any(&self) -> Option<&EvalOutput> {
        self.base.values().chain(self.perturbed.values()).next()
    }
}
