//! The reviews task (the IMDb analogue). A prompt is a review opening that names what was
//! watched or read, when and with whom, and carries no sentiment. A response continues it
//! with one to three sentences about aspects of the work and an overall verdict, all of
//! one sentiment, positive or negative.
//!
//! Every clause of a response leans towards its sentiment or is balanced: a contrast clause
//! ("the plot was dull, but the acting was superb") weighs its minority side no more than
//! its majority side, and the verdict (weight 2) always tips the balance. So the exact
//! scorer (`score::world`) puts every positive response above 0.5 and every negative one
//! below it, which the tests check on thousands of draws.

use super::draw::{chance, distinct, index, one, pick};
use super::lexicon::{self, fill, Domain, DOMAINS};
use rand_chacha::ChaCha8Rng;

/// A drawn review opening: the text and what the continuation needs to stay coherent.
#[derive(Debug, Clone)]
pub struct Opening {
    pub domain: &'static Domain,
    /// Index into the domain's `nouns` / `plurals`.
    pub noun: usize,
    pub text: String,
}

/// Draw a review opening (the prompt).
pub fn opening(rng: &mut ChaCha8Rng) -> Opening {
    let domain = pick(rng, DOMAINS);
    let noun = index(rng, domain.nouns.len());
    let title = format!(
        "{} {}",
        one(rng, lexicon::TITLE_MODIFIERS),
        one(rng, lexicon::TITLE_HEADS)
    );
    let template = one(rng, lexicon::OPENING_TEMPLATES);
    let slots = [
        ("past", one(rng, domain.past)),
        ("noun", domain.nouns[noun]),
        ("genre", one(rng, lexicon::GENRES)),
        ("time", one(rng, lexicon::TIMES)),
        ("place", one(rng, domain.places)),
        ("companion", one(rng, domain.companions)),
        ("title", title.as_str()),
        ("maker", domain.maker),
    ];
    let mut text = fill(template, &slots);
    // An optional neutral second sentence: plot, a fact, or an aside.
    let r = index(rng, 20);
    if r < 7 {
        text.push_str(&format!(
            " it is about {} {}.",
            one(rng, lexicon::PLOT_SUBJECTS),
            one(rng, lexicon::PLOT_EVENTS)
        ));
    } else if r < 11 {
        text.push(' ');
        text.push_str(one(rng, domain.facts));
    } else if r < 14 {
        text.push(' ');
        text.push_str(&fill(one(rng, lexicon::OPENING_ASIDES), &slots));
    }
    Opening { domain, noun, text }
}

/// Draw a continuation of `opening` with the given sentiment. It starts with a space, so
/// `prompt + response` is the review as one text.
pub fn continuation(rng: &mut ChaCha8Rng, opening: &Opening, positive: bool) -> String {
    let d = opening.domain;
    let n_aspects = 1 + index(rng, 3);
    // Two aspects per sentence at most, all distinct within the review.
    let aspects = distinct(rng, d.aspects, 2 * n_aspects);
    let contrast_at = chance(rng, 0.3).then(|| index(rng, n_aspects));
    let mut sentences: Vec<String> = Vec::with_capacity(n_aspects + 2);
    for i in 0..n_aspects {
        let a = aspects[2 * i % aspects.len()];
        let b = aspects[(2 * i + 1) % aspects.len()];
        sentences.push(if contrast_at == Some(i) {
            contrast_sentence(rng, a, b, positive)
        } else {
            aspect_sentence(rng, a, b, positive)
        });
    }
    if chance(rng, 0.15) {
        let adj = adjective(rng, positive);
        sentences.push(format!(
            "overall, the {} was {}{}.",
            d.nouns[opening.noun],
            intensifier(rng),
            adj
        ));
    }
    let verdicts = if positive {
        lexicon::POSITIVE_VERDICTS
    } else {
        lexicon::NEGATIVE_VERDICTS
    };
    let verdict = fill(
        one(rng, verdicts),
        &[
            ("noun", d.nouns[opening.noun]),
            ("plural", d.plurals[opening.noun]),
            ("perfect", d.perfect),
            ("base", d.base),
            ("gerund", d.gerund),
            ("unit", d.unit),
        ],
    );
    if chance(rng, 0.2) {
        sentences.insert(0, verdict);
    } else {
        sentences.push(verdict);
    }
    let mut out = String::with_capacity(160);
    for s in &sentences {
        out.push(' ');
        out.push_str(s);
    }
    out
}

fn adjective(rng: &mut ChaCha8Rng, positive: bool) -> &'static str {
    if positive {
        one(rng, lexicon::POSITIVE_ADJECTIVES)
    } else {
        one(rng, lexicon::NEGATIVE_ADJECTIVES)
    }
}

/// An intensity word with its trailing space, or nothing: strong 35%, weak 15%.
fn intensifier(rng: &mut ChaCha8Rng) -> String {
    let r = index(rng, 20);
    if r < 7 {
        format!("{} ", one(rng, &lexicon::STRONG_INTENSIFIERS[..6]))
    } else if r < 10 {
        format!("{} ", one(rng, lexicon::WEAK_INTENSIFIERS))
    } else {
        String::new()
    }
}

/// A weak intensity word or nothing: the minority side of a contrast stays light.
fn weak_or_none(rng: &mut ChaCha8Rng) -> String {
    if chance(rng, 0.5) {
        format!("{} ", one(rng, lexicon::WEAK_INTENSIFIERS))
    } else {
        String::new()
    }
}

fn be(aspect: &str) -> &'static str {
    if aspect.ends_with('s') {
        "were"
    } else {
        "was"
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// One sentence about aspect `a` (and sometimes `b`) leaning to the given sentiment.
fn aspect_sentence(rng: &mut ChaCha8Rng, a: &str, b: &str, positive: bool) -> String {
    match index(rng, 9) {
        0 | 1 => format!(
            "the {a} {} {}{}.",
            be(a),
            intensifier(rng),
            adjective(rng, positive)
        ),
        2 => {
            // Negation: "not good" is negative, "not boring" positive.
            let adj = adjective(rng, !positive);
            let very = if !positive && chance(rng, 0.3) {
                "very "
            } else {
                ""
            };
            format!("the {a} {} not {very}{adj}.", be(a))
        }
        3 => {
            let two = distinct(
                rng,
                if positive {
                    lexicon::POSITIVE_ADJECTIVES
                } else {
                    lexicon::NEGATIVE_ADJECTIVES
                },
                2,
            );
            format!(
                "the {a} {} {}{} and {}.",
                be(a),
                intensifier(rng),
                two[0],
                two[1]
            )
        }
        4 => format!(
            "the {a} and the {b} were {}{}.",
            intensifier(rng),
            adjective(rng, positive)
        ),
        5 => format!(
            "i found the {a} {}{}.",
            intensifier(rng),
            adjective(rng, positive)
        ),
        6 => format!(
            "the {a} {} {}{}.",
            one(rng, &["felt", "seemed"]),
            intensifier(rng),
            adjective(rng, positive)
        ),
        7 => format!(
            "there was nothing {} about the {a}.",
            adjective(rng, !positive)
        ),
        _ => {
            let adj = adjective(rng, positive);
            format!("what {} {adj} {a}!", article(adj))
        }
    }
}

/// A contrast: a light opposite opinion on `a`, outweighed by the main opinion on `b`.
fn contrast_sentence(rng: &mut ChaCha8Rng, a: &str, b: &str, positive: bool) -> String {
    let minority = format!("{}{}", weak_or_none(rng), adjective(rng, !positive));
    let majority = format!("{}{}", intensifier_not_weak(rng), adjective(rng, positive));
    if chance(rng, 0.6) {
        format!(
            "the {a} {} {minority}, but the {b} {} {majority}.",
            be(a),
            be(b)
        )
    } else {
        format!(
            "although the {a} {} {minority}, the {b} {} {majority}.",
            be(a),
            be(b)
        )
    }
}

/// A strong intensity word or nothing (the majority side of a contrast is never weakened).
fn intensifier_not_weak(rng: &mut ChaCha8Rng) -> String {
    if chance(rng, 0.4) {
        format!("{} ", one(rng, &lexicon::STRONG_INTENSIFIERS[..6]))
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::draw::{stream, Stream};
    use super::*;

    #[test]
    fn reviews_read_like_reviews() {
        let mut rng = stream(3, Stream::Pretrain);
        for _ in 0..500 {
            let o = opening(&mut rng);
            let pos = continuation(&mut rng, &o, true);
            assert!(o.text.ends_with(['.', '!']), "{}", o.text);
            assert!(pos.starts_with(' ') && !pos.starts_with("  "), "{pos:?}");
            for t in [&o.text, &pos] {
                assert!(!t.contains(['{', '}']) && !t.contains("  "), "{t:?}");
            }
        }
        let o = opening(&mut rng);
        let r = continuation(&mut rng, &o, false);
        assert!(r.split(['.', '!']).count() >= 3, "{r}");
    }
}
