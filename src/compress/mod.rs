//! Compression with a language model (PAPER.md §2 made measurable): the model's next-token
//! probabilities drive a range coder (constriction 0.5), so any byte file compresses to about
//! its code length under the model, and a data set's compression rate is that code length
//! per token or byte.
//!
//! - [`predictor`]: the probability source ([`TokenPredictor`], [`Tokenization`]) and its
//!   determinism contract.
//! - [`segment`]: the byte scheme (text pieces that round-trip through the tokenizer, raw
//!   bytes for everything else).
//! - [`symbols`]: the alphabet of the stream and the quantised entropy models.
//! - [`coder`]: the range-coded stream, one predictor walk for both directions.
//! - [`format`]: the checked file header.
//! - [`probe`]: the numerics probe in the header (same model, different arithmetic).
//! - [`codec`]: whole-file [`compress`] / [`decompress`].
//! - [`hf`]: [`Tokenization`] for Hugging Face tokenizers.
//! - [`model_predictor`]: the Llama-family model as a [`TokenPredictor`] (KV-cache forward).
//! - [`baselines`]: gzip / xz / zstd sizes of the same input.
//! - [`rates`]: compression rates of data sets (bits per token, per byte, normalised).
//! - [`tracking`]: rates of named sets tracked through fine-tuning (`train --track-rates`).
//! - [`rates_report`]: the rates as table, CSV, JSON and plots by checkpoint.
//! - [`summary`]: the compressor's report, next to the baselines.
//! - [`testing`]: a toy tokenizer and an adaptive bigram predictor for tests.

pub mod baselines;
pub mod codec;
pub mod coder;
pub mod format;
pub mod hf;
pub mod model_predictor;
pub mod predictor;
pub mod probe;
pub mod rates;
pub mod rates_backend;
pub mod rates_report;
pub mod segment;
pub mod summary;
pub mod symbols;
pub mod testing;
pub mod tracking;

pub use codec::{compress, decompress, CompressOptions, CompressReport};
pub use predictor::{TokenPredictor, Tokenization};
