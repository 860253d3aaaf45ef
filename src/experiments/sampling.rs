//! The `[generation]` table of rebound and the `[generate]` table of resist: the sampling
//! settings `model::generate::GenConfig` declares once, less its seed (each replicate samples
//! with its own seed from `seeds`). A key left out takes the experiment's default, not
//! `GenConfig`'s (`elastica generate` decodes greedily; the experiments sample), so a partial
//! table means what it meant when each experiment declared its own sampling type.
//!
//! Use on a config field, with the experiment's defaults in a `const`:
//! `#[serde(default = "..", deserialize_with = "..", serialize_with = "sampling::write")]`,
//! the deserializer a one-line call of [`read`] with those defaults.

use crate::model::generate::GenConfig;
use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::{Map, Value};

/// The keys a table may set: `GenConfig`'s fields but the seed, in its order.
pub const KEYS: [&str; 5] = [
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "batch_size",
];

/// An experiment's default sampling: `max_new_tokens`, `temperature` and `top_p` as given,
/// no top-k, 16 prompts decoded together, and a placeholder seed (each replicate sets its own
/// with `GenConfig::with_seed`).
pub const fn defaults(max_new_tokens: usize, temperature: f64, top_p: f64) -> GenConfig {
    GenConfig {
        max_new_tokens,
        temperature,
        top_p,
        top_k: 0,
        seed: 42,
        batch_size: 16,
    }
}

/// Read a table over `defaults`: each key given replaces the default's value.
pub fn read<'de, D: Deserializer<'de>>(defaults: &GenConfig, d: D) -> Result<GenConfig, D::Error> {
    let given = Map::<String, Value>::deserialize(d)?;
    let mut full = match serde_json::to_value(defaults).map_err(D::Error::custom)? {
        Value::Object(m) => m,
        other => return Err(D::Error::custom(format!("sampling defaults as {other}"))),
    };
    for (k, v) in given {
        if k == "seed" {
            return Err(D::Error::custom(
                "`seed` cannot be set here: each replicate samples with its own seed from \
                 `seeds`",
            ));
        }
        if !KEYS.contains(&k.as_str()) {
            return Err(D::Error::unknown_field(&k, &KEYS));
        }
        // TOML has no null: a JSON value reads nan and inf as one.
        if v.is_null() {
            return Err(D::Error::custom(format!(
                "{k} must be a finite number (temperature >= 0, top_p in (0, 1]), got nan or inf"
            )));
        }
        full.insert(k, v);
    }
    serde_json::from_value(Value::Object(full)).map_err(D::Error::custom)
}

/// Write a table: the [`KEYS`], without the seed (so that [`read`] takes it back).
pub fn write<S: Serializer>(g: &GenConfig, s: S) -> Result<S::Ok, S::Error> {
    let v = serde_json::to_value(g).map_err(S::Error::custom)?;
    let mut m = s.serialize_map(Some(KEYS.len()))?;
    for k in KEYS {
        m.serialize_entry(k, &v[k])?;
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: GenConfig = GenConfig {
        max_new_tokens: 7,
        temperature: 0.5,
        top_p: 0.9,
        top_k: 3,
        seed: 1,
        batch_size: 2,
    };

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Cfg {
        #[serde(
            default = "fixed",
            deserialize_with = "table",
            serialize_with = "write"
        )]
        g: GenConfig,
    }
    fn fixed() -> GenConfig {
        DEFAULTS
    }
    fn table<'de, D: Deserializer<'de>>(d: D) -> Result<GenConfig, D::Error> {
        read(&DEFAULTS, d)
    }

    /// Both experiments' former types had no top-k and batches of 16 by default.
    #[test]
    fn experiment_defaults_keep_top_k_off_and_batches_of_16() {
        let d = defaults(5, 0.5, 0.5);
        assert_eq!((d.max_new_tokens, d.top_k, d.batch_size), (5, 0, 16));
    }

    #[test]
    fn left_out_keys_take_the_given_defaults_and_the_seed_stays_out() {
        let c: Cfg = toml::from_str("").unwrap();
        assert_eq!(c.g, DEFAULTS);
        let c: Cfg = toml::from_str("[g]\ntop_k = 9\ntemperature = 1\n").unwrap();
        assert_eq!(
            c.g,
            GenConfig {
                top_k: 9,
                temperature: 1.0,
                ..DEFAULTS
            }
        );
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("seed"), "{text}");
        assert_eq!(toml::from_str::<Cfg>(&text).unwrap(), c);
        let e = toml::from_str::<Cfg>("[g]\nseed = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`seeds`"), "{e}");
        let e = toml::from_str::<Cfg>("[g]\ntemprature = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("temprature") && e.contains("top_p"), "{e}");
        let e = toml::from_str::<Cfg>("[g]\ntop_k = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("-1"), "{e}");
    }
}
