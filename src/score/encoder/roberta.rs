//! RoBERTa (`model_type = "roberta"`): BERT's embeddings and encoder under the `roberta`
//! prefix, with two differences that change every output:
//! - position ids start at `padding_idx + 1` (pads get `padding_idx`), so a table of
//!   `max_position_embeddings` rows holds `max_position_embeddings - padding_idx - 1` tokens
//!   (514 rows -> 512 tokens);
//! - no pooler; the head `classifier.dense` + tanh + `classifier.out_proj` reads the <s> token.

use super::bert::{BertConfig, BertModel, Positions};
use super::{first_token, fwd, linear, Batch, SequenceClassifier};
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

pub struct RobertaForSequenceClassification {
    roberta: BertModel,
    dense: Linear,
    out_proj: Linear,
}

impl RobertaForSequenceClassification {
    pub fn load(config: &serde_json::Value, vb: VarBuilder, num_labels: usize) -> Result<Self> {
        // RoBERTa configs set pad_token_id = 1; BertConfig's default of 0 never applies here.
        let c = BertConfig::from_json(config)?;
        let padding_idx = u32::try_from(super::usize_key(config, "pad_token_id", Some(1))?)?;
        let h = c.hidden_size;
        let head = vb.pp("classifier");
        Ok(RobertaForSequenceClassification {
            roberta: BertModel::load(
                &vb.pp("roberta"),
                &c,
                Positions::AfterPadding { padding_idx },
            )?,
            dense: linear(&head, "dense", h, h)?,
            out_proj: linear(&head, "out_proj", h, num_labels)?,
        })
    }
}

impl SequenceClassifier for RobertaForSequenceClassification {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.roberta.forward(batch)?;
        let x = fwd(&self.dense, &first_token(&hidden)?)?.tanh()?;
        fwd(&self.out_proj, &x)
    }
    fn max_positions(&self) -> usize {
        self.roberta.max_positions()
    }
}
