//! The rebound cells' memory estimates (bytes at the peak), which the local executor uses to
//! decide how many cells run side by side. Each follows what its stage holds:
//! - a **full fine-tune** holds f32 weights, gradients and AdamW's two moments (16 bytes a
//!   parameter) plus a second copy of the weights while loading or saving (4 more);
//! - a **LoRA** stage holds the frozen weights twice at most (loading, or merging the align
//!   stage's adapter into a new copy: 8 bytes a parameter) and weights, gradients and AdamW
//!   moments of the adapter only (16 bytes an adapter parameter);
//! - **DPO** adds no model: the reference log-probs are computed before training and cached
//!   (two numbers a pair), but each step runs the policy on the chosen and the rejected
//!   sequence of every pair, so the activations kept for the backward double;
//! - a perturb cell then **evaluates** the perturbed model beside the base (and the aligned
//!   model for KL to it): 4 bytes a parameter for each model held.

/// Activations kept for the backward in one SFT step (one batch of sequences).
pub const ACTIVATIONS: u64 = 512 << 20;
/// Generation caches, the scorer and buffers while evaluating.
pub const EVAL_HEADROOM: u64 = 256 << 20;

/// What a training stage holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    /// The base model's parameters.
    pub params: u64,
    /// The adapter's parameters with LoRA; `None` for a full fine-tune.
    pub adapter: Option<u64>,
    /// Trained by DPO (two sequences a pair per forward).
    pub dpo: bool,
}

/// Peak bytes of training `s`.
pub fn train_bytes(s: Stage) -> u64 {
    let weights = match s.adapter {
        None => 20 * s.params,
        Some(a) => 8 * s.params + 16 * a,
    };
    let activations = if s.dpo { 2 * ACTIVATIONS } else { ACTIVATIONS };
    weights + activations
}

/// Peak bytes of evaluating with `models` models of `params` parameters held at once.
pub fn eval_bytes(params: u64, models: u64) -> u64 {
    4 * models * params + EVAL_HEADROOM
}

/// `rebound.base`: the base model, evaluated, held twice while loading.
pub fn base_cell(params: u64) -> u64 {
    eval_bytes(params, 2)
}

/// `rebound.align`: the training stage.
pub fn align_cell(s: Stage) -> u64 {
    train_bytes(s)
}

/// `rebound.perturb`: its training stage (if n- > 0), then the evaluation with the base and,
/// for KL to the aligned model, the aligned one beside the perturbed model.
pub fn perturb_cell(s: Stage, trains: bool, kl_to_aligned: bool) -> u64 {
    let eval = eval_bytes(s.params, if kl_to_aligned { 3 } else { 2 });
    if trains {
        train_bytes(s).max(eval)
    } else {
        eval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const N: u64 = 1_000_000_000;

    #[test]
    fn a_full_sft_stage_holds_twenty_bytes_a_parameter() {
        let s = Stage {
            params: N,
            adapter: None,
            dpo: false,
        };
        assert_eq!(align_cell(s), 20 * N + 512 * MB);
        // Training dominates the evaluation of three models.
        assert_eq!(perturb_cell(s, true, true), 20 * N + 512 * MB);
        assert_eq!(perturb_cell(s, false, false), 8 * N + 256 * MB);
        assert_eq!(base_cell(N), 8 * N + 256 * MB);
    }

    #[test]
    fn a_lora_stage_keeps_adamw_state_for_the_adapter_only() {
        // Rank 8 on all seven projections of a 7B-like model: 20M adapter parameters.
        let a = 20_000_000;
        let s = Stage {
            params: 7 * N,
            adapter: Some(a),
            dpo: false,
        };
        assert_eq!(align_cell(s), 8 * 7 * N + 16 * a + 512 * MB);
        assert!(align_cell(s) < align_cell(Stage { adapter: None, ..s }) / 2);
        // Evaluating base + aligned + perturbed (12 bytes a parameter) is the peak now.
        assert_eq!(perturb_cell(s, true, true), 12 * 7 * N + 256 * MB);
        assert_eq!(perturb_cell(s, true, false), 8 * 7 * N + 16 * a + 512 * MB);
    }

    #[test]
    fn the_adapter_count_is_what_an_adapter_holds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-llama/config.json");
        let cfg = crate::model::ModelConfig::from_file(&dir).unwrap();
        let lora = crate::model::lora::LoraConfig {
            rank: 2,
            ..Default::default()
        };
        // hidden 64, 4 heads and 2 KV heads of 16, intermediate 96, 2 layers; r (in + out)
        // for q, k, v, o, gate, up, down.
        let per_layer = 2 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 96));
        assert_eq!(lora.num_params(&cfg).unwrap(), 2 * per_layer);
        let adapter = crate::model::lora::Adapter::init(&cfg, &lora, 1, "x").unwrap();
        assert_eq!(adapter.params.num_elements(), 2 * per_layer);
        let off = crate::model::lora::LoraConfig::default();
        assert_eq!(off.num_params(&cfg).unwrap(), 0);
    }

    #[test]
    fn a_dpo_stage_doubles_the_activations_and_holds_no_reference_model() {
        let s = Stage {
            params: N,
            adapter: None,
            dpo: true,
        };
        assert_eq!(align_cell(s), 20 * N + 2 * 512 * MB);
        let lora = Stage {
            adapter: Some(1000),
            ..s
        };
        assert_eq!(align_cell(lora), 8 * N + 16 * 1000 + 1024 * MB);
    }
}
