//! The language model: a decoder-only transformer covering the Llama, Qwen2 and Gemma
//! families, with Hugging Face tensor names, checkpoint I/O in the HF layout, the tokenizer
//! wrapper with its prompt templates (`template`), and generation.

pub mod adapted;
pub mod checkpoint;
pub mod config;
pub mod fused;
pub mod generate;
pub mod init;
pub mod llama;
pub mod lora;
pub mod params;
pub mod presets;
pub mod rope;
pub mod template;
pub mod tensor_file;
pub mod tokenizer;
pub mod tokenizer_class;

pub use checkpoint::{load_model, save_model, LoadedModel};
pub use config::{Family, ModelConfig};
pub use llama::{KvCache, Llama};
pub use params::Params;
pub use tokenizer::TextTokenizer;
