//! The registry of cell kinds: the name written in a manifest's `kind` field mapped to the
//! code that runs it. An experiment adds its kinds by listing them in [`KINDS`]; an unknown
//! name gets an error listing the valid ones.

use super::cell::CellKind;
use anyhow::{bail, Result};

/// Every registered cell kind.
pub static KINDS: &[&dyn CellKind] = &[
    &crate::experiments::resist::cells::ThetaKind,
    &crate::experiments::resist::cells::GenerateKind,
    &crate::experiments::resist::cells::PairKind,
    &super::rebound::cells::BaseEval,
    &super::rebound::cells::Align,
    &super::rebound::cells::Perturb,
];

/// Registered kinds, plus test-only kinds in unit tests.
pub fn all() -> Vec<&'static dyn CellKind> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static dyn CellKind> = KINDS.to_vec();
    #[cfg(test)]
    v.extend(testing::TEST_KINDS.iter().copied());
    v
}

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static dyn CellKind> {
    let all = all();
    if let Some(k) = all.iter().find(|k| k.name() == name) {
        return Ok(*k);
    }
    let names: Vec<&str> = all.iter().map(|k| k.name()).collect();
    bail!(
        "unknown cell kind \"{name}\"; this elastica knows: {}",
        names.join(", ")
    )
}

/// Test-only kinds for the grid machinery's unit tests.
#[cfg(test)]
pub mod testing {
    use super::super::cell::{CellContext, CellKind};
    use anyhow::{bail, Result};

    pub static TEST_KINDS: &[&dyn CellKind] = &[&Echo];

    /// Writes `out.txt` with its `value` param plus the values of its dependencies' outputs;
    /// fails when `fail = true`; sleeps `sleep_ms` first.
    pub struct Echo;

    impl CellKind for Echo {
        fn name(&self) -> &'static str {
            "test.echo"
        }
        fn about(&self) -> &'static str {
            "test kind: echoes its value"
        }
        fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
            let p = &ctx.cell.params;
            if let Some(ms) = p.get("sleep_ms").and_then(|v| v.as_u64()) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            if p.get("fail").and_then(|v| v.as_bool()) == Some(true) {
                bail!("asked to fail");
            }
            if p.get("panic").and_then(|v| v.as_bool()) == Some(true) {
                panic!("asked to panic");
            }
            let mut total = p.get("value").and_then(|v| v.as_i64()).unwrap_or(0);
            for d in &ctx.cell.deps {
                let o: serde_json::Value = ctx.dep_output(d)?;
                total += o["total"].as_i64().unwrap_or(0);
            }
            std::fs::write(ctx.dir.join("out.txt"), total.to_string())?;
            Ok(serde_json::json!({ "total": total }))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let e = format!("{:#}", super::kind("rebound.nope").err().unwrap());
        assert!(
            e.contains("rebound.align") && e.contains("rebound.perturb"),
            "{e}"
        );
        assert_eq!(super::kind("test.echo").unwrap().name(), "test.echo");
    }
}
