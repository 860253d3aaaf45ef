//! Named tensors on disk: writing them as one safetensors file, atomically and durably (the
//! one write that checkpoints, adapters and optimizer state share), and the finiteness check
//! every tensor passes before it is written or after it is read.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Write named tensors as a safetensors file, atomically and durably (util::fsx).
pub fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    crate::util::fsx::atomic_write_path(path, ".safetensors", |tmp| {
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(meta),
            tmp,
        )
        .with_context(|| format!("cannot write {}", path.display()))
    })
}

/// The first non-finite value of `t`, if any: one pass, and no copy for a contiguous f32
/// tensor on the CPU.
pub(crate) fn non_finite(t: &Tensor) -> Result<Option<f32>> {
    let t = t.to_dtype(DType::F32)?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage {
            if let Some((a, b)) = layout.contiguous_offsets() {
                return Ok(v[a..b].iter().find(|x| !x.is_finite()).copied());
            }
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.into_iter().find(|x| !x.is_finite()))
}
