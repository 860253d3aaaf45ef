//! Splitting the SFT data set into the S sequential slices (theta_k is theta_{k-1} fine-tuned
//! on slice k) and the held-out generation prompts. Slice sizes follow the configured ratios
//! by the largest-remainder method, so they always add up to the records available and no
//! record is used twice. A slice holds SFT records or, under `[align] method = "dpo"`,
//! preference pairs; both give their prompt to the held-out set the same way.

use crate::data::prefs::PrefRecord;
use crate::data::prompts::Prompt;
use crate::data::records::Record;
use anyhow::{bail, Result};

/// A record a slice can hold, whose prompt a held-out record gives to the generations.
pub trait SliceRecord: Clone {
    /// The prompt (a conversation's turns before its answer), or `None` for a record
    /// without one (plain text).
    fn prompt(&self) -> Option<Prompt>;
}

impl SliceRecord for Record {
    fn prompt(&self) -> Option<Prompt> {
        Prompt::of_record(self)
    }
}

impl SliceRecord for PrefRecord {
    fn prompt(&self) -> Option<Prompt> {
        Some(match &self.context {
            Some(turns) => Prompt::Turns(turns.clone()),
            None => Prompt::Text(self.prompt.clone()),
        })
    }
}

/// The data of one replicate-independent split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<T = Record> {
    /// `slices[k - 1]` trains theta_k.
    pub slices: Vec<Vec<T>>,
    /// Prompts every checkpoint answers (never in a slice when held out of the same data).
    pub prompts: Vec<Prompt>,
}

/// Sizes of `ratios.len()` slices of `n` records in proportion to `ratios` (largest
/// remainder; ties go to the earlier slice).
pub fn slice_sizes(n: usize, ratios: &[f64]) -> Vec<usize> {
    let total: f64 = ratios.iter().sum();
    let exact: Vec<f64> = ratios.iter().map(|r| n as f64 * r / total).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n.saturating_sub(sizes.iter().sum());
    let mut order: Vec<usize> = (0..ratios.len()).collect();
    // Stable sort keeps the earlier slice first among equal remainders.
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra)
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[i] += 1;
        left -= 1;
    }
    sizes
}

/// The fewest records from which on every slice gets at least one. Above
/// `total / min ratio` every floor is already >= 1; below it, the largest-remainder rounding
/// decides, so walk down from there while every size stays positive.
pub fn min_records(ratios: &[f64]) -> usize {
    let total: f64 = ratios.iter().sum();
    let smallest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let mut n = ((total / smallest).ceil() as usize).max(ratios.len());
    while slice_sizes(n, ratios).contains(&0) {
        n += 1;
    }
    while n > ratios.len() && !slice_sizes(n - 1, ratios).contains(&0) {
        n -= 1;
    }
    n
}

/// Split `records` into slices by `ratios`. With `held_out > 0`, the last `held_out` records
/// are kept aside as generation prompts first (they must be prompt/response records); with
/// `held_out == 0` the caller supplies prompts from elsewhere and `Split::prompts` is empty.
/// `source` names the data set in errors.
pub fn split<T: SliceRecord>(
    records: &[T],
    ratios: &[f64],
    held_out: usize,
    source: &str,
) -> Result<Split<T>> {
    let need_slices = min_records(ratios);
    let need = need_slices + held_out;
    if records.len() < need {
        let held = if held_out > 0 {
            format!(" plus {held_out} held out as generation prompts (eval_prompts)")
        } else {
            String::new()
        };
        bail!(
            "data set {source} has {} records, too few for {} slices: they need at least \
             {need_slices} records (slice_ratios {ratios:?}){held}, so {need} in all; add \
             records, lower `slices`, or lower `eval_prompts`",
            records.len(),
            ratios.len()
        );
    }
    let cut = records.len() - held_out;
    let prompts = prompts_of(&records[cut..], source)?;
    let mut slices = Vec::with_capacity(ratios.len());
    let mut start = 0;
    for size in slice_sizes(cut, ratios) {
        slices.push(records[start..start + size].to_vec());
        start += size;
    }
    Ok(Split { slices, prompts })
}

/// The prompts of prompt/response records, conversations (their turns before the answer) or
/// preference pairs (a conversational pair's turns); a plain-text record has none and is an
/// error.
pub fn prompts_of<T: SliceRecord>(records: &[T], source: &str) -> Result<Vec<Prompt>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| match r.prompt() {
            Some(p) => Ok(p),
            None => bail!(
                "{source}: held-out record {} is a plain {{\"text\"}} record; generation \
                 prompts need {{\"prompt\", \"response\"}} records or conversations (or give \
                 a [prompts] data set)",
                i + 1
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::Message;

    fn recs(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::pair(format!("p{i}"), format!("r{i}")))
            .collect()
    }

    #[test]
    fn sizes_follow_ratios_and_add_up() {
        assert_eq!(slice_sizes(9, &[1.0, 1.0, 1.0]), vec![3, 3, 3]);
        assert_eq!(slice_sizes(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(slice_sizes(10, &[1.0, 2.0, 2.0]), vec![2, 4, 4]);
        // 3.5 / 1.75 / 1.75: the two spare records go to the larger remainders (0.75).
        assert_eq!(slice_sizes(7, &[0.5, 0.25, 0.25]), vec![3, 2, 2]);
        for n in 0..50 {
            assert_eq!(slice_sizes(n, &[0.3, 1.7, 1.0]).iter().sum::<usize>(), n);
        }
        assert_eq!(min_records(&[1.0, 1.0, 1.0]), 3);
        // 1:10 with 6 records: exact 0.55 / 5.45, the spare record goes to the larger
        // remainder (the small slice); with 5 it goes to the large one and the small is empty.
        assert_eq!(slice_sizes(6, &[1.0, 10.0]), vec![1, 5]);
        assert_eq!(slice_sizes(5, &[1.0, 10.0]), vec![0, 5]);
        assert_eq!(min_records(&[1.0, 10.0]), 6);
    }

    #[test]
    fn split_is_disjoint_and_holds_out_the_tail() {
        let r = recs(10);
        let s = split(&r, &[1.0, 1.0], 4, "d").unwrap();
        assert_eq!(s.slices, vec![r[0..3].to_vec(), r[3..6].to_vec()]);
        let texts =
            |t: &[&str]| -> Vec<Prompt> { t.iter().map(|p| Prompt::Text(p.to_string())).collect() };
        assert_eq!(s.prompts, texts(&["p6", "p7", "p8", "p9"]));
        // Preference pairs split the same way and give their prompts.
        let pairs: Vec<PrefRecord> = (0..5)
            .map(|i| PrefRecord::new(&format!("q{i}"), "yes", "no"))
            .collect();
        let s = split(&pairs, &[1.0, 1.0], 1, "d").unwrap();
        assert_eq!(s.slices, vec![pairs[0..2].to_vec(), pairs[2..4].to_vec()]);
        assert_eq!(s.prompts, texts(&["q4"]));
        // A conversation's prompt is its turns before the answer, a conversational pair's
        // its context.
        let turns = vec![Message::new("user", "Hi"), Message::new("assistant", "Yo")];
        let mut convs = recs(2);
        convs.push(Record::conversation(turns.clone()));
        let s = split(&convs, &[1.0, 1.0], 1, "d").unwrap();
        assert_eq!(s.prompts, vec![Prompt::Turns(turns[..1].to_vec())]);
        let mut pair = PrefRecord::new("Hi", "a", "b");
        pair.context = Some(turns.clone());
        let s = split(&[pair.clone(), pair.clone(), pair], &[1.0, 1.0], 1, "d").unwrap();
        assert_eq!(s.prompts, vec![Prompt::Turns(turns)]);
    }

    #[test]
    fn too_small_says_how_many_are_needed() {
        let e = format!(
            "{:#}",
            split(&recs(5), &[1.0, 1.0, 1.0], 4, "d.jsonl").unwrap_err()
        );
        assert!(
            e.contains("d.jsonl has 5 records")
                && e.contains("at least 3")
                && e.contains("7 in all"),
            "{e}"
        );
        let mut r = recs(4);
        r.push(Record::text("t"));
        let e = format!("{:#}", split(&r, &[1.0], 1, "d").unwrap_err());
        assert!(e.contains("plain"), "{e}");
    }
}
