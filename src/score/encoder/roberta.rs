//! RoBERTa (`model_type = "roberta"`): BERT's embeddings and encoder under the `roberta`
//! prefix, with two differences that change every output:
//! - position ids start at `padding_idx + 1` (pads get `padding_idx`), so a table of
//!   `max_position_embeddings` rows holds `max_position_embeddings - padding_idx - 1` tokens
//!   (514 rows -> 512 tokens);
//! - no pooler; the head `classifier.dense` + tanh + `classifier.out_proj` reads the <s> token.

use super::bert::{load_encoder, BertConfig};
use super::linear;
use super::transformer::{Checkpoint, EncoderClassifier, Head, Positions};
use anyhow::Result;
use candle_core::Tensor;

/// `RobertaForSequenceClassification`: `classifier.dense` + tanh + `classifier.out_proj` on
/// the <s> token.
pub fn load_classifier(ck: Checkpoint) -> Result<EncoderClassifier> {
    // RoBERTa configs set pad_token_id = 1; BertConfig's default of 0 never applies here.
    let c = BertConfig::from_json(ck.config)?;
    let padding_idx = u32::try_from(super::usize_key(ck.config, "pad_token_id", Some(1))?)?;
    let h = c.sizes.layer.hidden;
    let head = ck.vb.pp("classifier");
    Ok(EncoderClassifier {
        encoder: load_encoder(
            &ck.vb.pp("roberta"),
            &c,
            Positions::AfterPadding { padding_idx },
        )?,
        head: Head {
            dense: linear(&head, "dense", h, h)?,
            act: Tensor::tanh,
            out: linear(&head, "out_proj", h, ck.num_labels)?,
        },
    })
}
