//! The dialogue task (the BeaverTails analogue). A prompt is one user turn,
//! `user: <request> assistant:`, asking how to do something: harmful ("how can i steal my
//! neighbour's bike?") or benign ("how can i fix my neighbour's bike?"); the same objects
//! occur in both, so only the verb tells them apart. A response is
//! - safe: it declines a harmful request, gives a reason and redirects to a harmless
//!   alternative; or it helps with a benign request, step by step;
//! - unsafe: it complies with a harmful request, step by step.
//!
//! Compliance and help share their frame ("sure. first, ... then, ..."), so a model has to
//! learn from the request whether to follow it.

use super::draw::{chance, distinct, index, one};
use super::lexicon::{self, fill, Act, ACTS};
use rand_chacha::ChaCha8Rng;

/// A drawn request: the prompt text and what a response needs.
#[derive(Debug, Clone)]
pub struct Request {
    pub act: &'static Act,
    /// The act as the user put it ("steal my neighbour's bike").
    pub act_text: String,
    /// The whole prompt, `user: ... assistant:`.
    pub text: String,
}

/// Draw a user request, harmful or benign.
pub fn request(rng: &mut ChaCha8Rng, harmful: bool) -> Request {
    let n = ACTS.iter().filter(|a| a.harmful == harmful).count();
    let k = index(rng, n);
    let act = ACTS
        .iter()
        .filter(|a| a.harmful == harmful)
        .nth(k)
        .unwrap_or(&ACTS[0]);
    let act_text = fill(act.phrase, &[("obj", one(rng, act.objects))]);
    let body = fill(one(rng, lexicon::REQUEST_TEMPLATES), &[("act", &act_text)]);
    let text = if chance(rng, 0.4) {
        format!(
            "{} {} {body} {}",
            lexicon::USER_TAG,
            one(rng, lexicon::REQUEST_CONTEXTS),
            lexicon::ASSISTANT_TAG
        )
    } else {
        format!("{} {body} {}", lexicon::USER_TAG, lexicon::ASSISTANT_TAG)
    };
    Request {
        act,
        act_text,
        text,
    }
}

/// The act as the assistant echoes it: "my bike" becomes "your bike".
pub fn second_person(act_text: &str) -> String {
    act_text
        .split(' ')
        .map(|w| match w {
            "my" => "your",
            w => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A safe response: a refusal for a harmful request, help for a benign one.
pub fn safe_response(rng: &mut ChaCha8Rng, req: &Request) -> String {
    if req.act.harmful {
        refusal(rng, req)
    } else {
        step_by_step(rng, req)
    }
}

/// An unsafe response: compliance with a harmful request. A benign request has no unsafe
/// answer; asked for one, this returns the helpful (safe) answer.
pub fn unsafe_response(rng: &mut ChaCha8Rng, req: &Request) -> String {
    step_by_step(rng, req)
}

/// Decline, give a reason, redirect to a harmless alternative, sometimes offer other help.
fn refusal(rng: &mut ChaCha8Rng, req: &Request) -> String {
    let act = second_person(&req.act_text);
    let reason = one(rng, req.act.reasons);
    let mut parts: Vec<String> = Vec::with_capacity(4);
    let opener = chance(rng, 0.75).then(|| one(rng, lexicon::REFUSAL_OPENERS));
    let lead = |s: String| match opener {
        Some(o) => format!("{o} {s}"),
        None => s,
    };
    if chance(rng, 0.65) {
        parts.push(lead(fill(one(rng, lexicon::REFUSALS), &[("act", &act)])));
        parts.push(format!("{reason}."));
    } else {
        parts.push(lead(format!("{reason}, so i can not help with that.")));
    }
    parts.push(format!(
        "{}{}.",
        one(rng, lexicon::REDIRECT_LEADS),
        one(rng, req.act.redirects)
    ));
    if chance(rng, 0.3) {
        parts.push(one(rng, lexicon::REFUSAL_OFFERS).to_string());
    }
    let mut out = String::with_capacity(160);
    for p in &parts {
        out.push(' ');
        out.push_str(p);
    }
    out
}

/// Comply step by step: an opener, two or three of the act's steps, sometimes a closer.
fn step_by_step(rng: &mut ChaCha8Rng, req: &Request) -> String {
    let act = second_person(&req.act_text);
    let mut out = String::with_capacity(200);
    out.push(' ');
    out.push_str(&fill(one(rng, lexicon::COMPLY_OPENERS), &[("act", &act)]));
    let k = 2 + index(rng, 2);
    let steps = distinct(rng, req.act.steps, k);
    for (i, step) in steps.iter().enumerate() {
        let frames = if i == 0 {
            lexicon::FIRST_STEP
        } else if i + 1 == steps.len() {
            lexicon::LAST_STEP
        } else {
            lexicon::MIDDLE_STEP
        };
        out.push(' ');
        out.push_str(&fill(one(rng, frames), &[("step", step)]));
    }
    if chance(rng, 0.6) {
        let closers = if req.act.harmful {
            lexicon::UNSAFE_CLOSERS
        } else {
            lexicon::HELP_CLOSERS
        };
        out.push(' ');
        out.push_str(one(rng, closers));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::draw::{stream, Stream};
    use super::*;

    #[test]
    fn dialogues_are_well_formed() {
        let mut rng = stream(5, Stream::Pretrain);
        for i in 0..600 {
            let harmful = i % 2 == 0;
            let req = request(&mut rng, harmful);
            assert_eq!(req.act.harmful, harmful);
            assert!(req.text.starts_with("user: ") && req.text.ends_with(" assistant:"));
            for r in [
                safe_response(&mut rng, &req),
                unsafe_response(&mut rng, &req),
            ] {
                assert!(
                    r.starts_with(' ') && !r.contains(['{', '}']) && !r.contains("  "),
                    "{r:?}"
                );
                assert!(!r.split(' ').any(|w| w == "my"), "{r:?}");
            }
        }
        assert_eq!(
            second_person("steal my sister's phone"),
            "steal your sister's phone"
        );
    }
}
