//! The DPO variant's preference pairs: the world's natural ones, a review opening with a
//! positive continuation (chosen) and a negative one (rejected), drawn as the world draws
//! its reviews ([`crate::data::world::reviews`]) from a stream of their own. Openings that
//! are evaluation prompts are skipped, and so is a pair whose chosen or rejected review
//! occurs in the pre-training text, so D_a stays out of D_p as in the SFT grid.

use crate::data::prefs::PrefRecord;
use crate::data::records::Record;
use crate::data::world::reviews::{continuation, opening};
use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

/// The pairs' random stream (the world's streams are numbered 1 to 8).
const STREAM: u64 = 0xD9_0001;
/// Draws in a row that may be skipped before giving up.
const MAX_REDRAWS: usize = 100_000;

/// `n` distinct preference pairs of world seed `seed`, none with an opening in `eval` or a
/// review in `pretrain`.
pub fn pairs(seed: u64, n: usize, eval: &[String], pretrain: &[Record]) -> Result<Vec<PrefRecord>> {
    let seen_text: HashSet<&str> = pretrain
        .iter()
        .filter_map(|r| match r {
            Record::Text { text } => Some(text.as_str()),
            Record::Pair { .. } | Record::Chat { .. } => None,
        })
        .collect();
    let eval: HashSet<&str> = eval.iter().map(String::as_str).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM);
    let mut openings = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut misses = 0;
    while out.len() < n {
        let o = opening(&mut rng);
        let chosen = continuation(&mut rng, &o, true);
        let rejected = continuation(&mut rng, &o, false);
        let fresh = !eval.contains(o.text.as_str())
            && !seen_text.contains(format!("{}{chosen}", o.text).as_str())
            && !seen_text.contains(format!("{}{rejected}", o.text).as_str())
            && openings.insert(o.text.clone());
        if fresh {
            out.push(PrefRecord::new(&o.text, &chosen, &rejected));
            misses = 0;
        } else {
            misses += 1;
            if misses > MAX_REDRAWS {
                bail!(
                    "cannot draw {n} distinct preference pairs (found {})",
                    out.len()
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::world::by_name;
    use crate::score::Sample;

    #[test]
    fn pairs_share_an_opening_and_the_scorer_orders_them() {
        let eval = vec!["an opening nobody draws".to_string()];
        let p = pairs(7, 40, &eval, &[]).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(p, pairs(7, 40, &eval, &[]).unwrap(), "seeded");
        let scorer = by_name("world-sentiment").unwrap();
        for r in &p {
            let sample = |response| Sample::new(&r.prompt, response);
            let s = scorer
                .score_batch(&[sample(r.chosen.as_str()), sample(r.rejected.as_str())])
                .unwrap();
            assert!(s[0] > 0.5 && s[1] < 0.5, "{r:?}: {s:?}");
        }
        // A pair whose review is in the pre-training text is skipped.
        let first = &p[0];
        let seen = vec![Record::Text {
            text: format!("{}{}", first.prompt, first.chosen),
        }];
        let q = pairs(7, 40, &eval, &seen).unwrap();
        assert!(!q.contains(first) && q[..39] == p[1..]);
    }
}
