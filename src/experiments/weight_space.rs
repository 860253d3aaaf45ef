//! Weight-space elasticity: does a perturbation move the weights back along the alignment
//! direction, or somewhere else?
//!
//! With Δa = θ_start − θ_reference (the alignment update: aligned minus base) and
//! Δp = θ_end − θ_start (the perturbation: perturbed minus aligned), three numbers:
//! - **fraction undone** −⟨Δp, Δa⟩ / ‖Δa‖²: how far along −Δa the perturbation went, in units
//!   of the alignment update (1 = exactly back to the reference's projection, 0 = orthogonal);
//! - **cosine** cos(Δp, −Δa): whether the perturbation points back (1) or elsewhere (0);
//! - **norm ratio** ‖Δp‖ / ‖Δa‖: how far it moved relative to alignment.
//!
//! Each is given in total, per decoder layer (`model.layers.<i>.`; every other tensor is in
//! the group "other") and per projection kind (the name's last component before `.weight`:
//! `q_proj`, `down_proj`, `embed_tokens`, ...).
//!
//! The three checkpoints are read streaming: each model's safetensors files (single or
//! sharded, bf16 / f16 / f32 / f64) are memory-mapped, and one tensor of each model is
//! walked at a time in fixed-size chunks converted to f64, so a 7B model needs the page
//! cache and a few chunk buffers, never a copy of a model. Chunks run in parallel; their
//! partial sums are added in chunk order, so the result does not depend on the thread count.

use crate::model::checkpoint::weight_files;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Elements converted to f64 at once (per model, per worker).
const CHUNK: usize = 1 << 16;

/// The group of tensors outside the decoder layers (embeddings, final norm, LM head).
pub const OTHER: &str = "other";

/// The three numbers of one group of tensors, with the sums they come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    /// `total`, a layer index, `other`, or a projection kind.
    pub group: String,
    /// ⟨Δp, Δa⟩.
    pub dot: f64,
    /// ‖Δa‖².
    pub align_sq: f64,
    /// ‖Δp‖².
    pub perturb_sq: f64,
    pub elements: u64,
    /// −⟨Δp, Δa⟩ / ‖Δa‖²; `None` when Δa = 0.
    pub fraction_undone: Option<f64>,
    /// cos(Δp, −Δa); `None` when either is 0.
    pub cosine: Option<f64>,
    /// ‖Δp‖ / ‖Δa‖; `None` when Δa = 0.
    pub norm_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    dot: f64,
    a: f64,
    p: f64,
    n: u64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.dot += o.dot;
        self.a += o.a;
        self.p += o.p;
        self.n += o.n;
    }

    fn movement(&self, group: impl Into<String>) -> Movement {
        let pos = |x: f64| (x > 0.0).then_some(x);
        Movement {
            group: group.into(),
            dot: self.dot,
            align_sq: self.a,
            perturb_sq: self.p,
            elements: self.n,
            fraction_undone: pos(self.a).map(|a| -self.dot / a),
            cosine: pos(self.a * self.p).map(|ap| -self.dot / ap.sqrt()),
            norm_ratio: pos(self.a).map(|a| (self.p / a).sqrt()),
        }
    }
}

/// Weight-space elasticity of one perturbed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSpace {
    pub total: Movement,
    /// Decoder layers in order, then `other`.
    pub layers: Vec<Movement>,
    /// Projection kinds, sorted by name.
    pub kinds: Vec<Movement>,
    /// Tensors compared.
    pub tensors: usize,
}

/// A model's safetensors files, memory-mapped, with where each tensor lives.
struct Mapped {
    dir: PathBuf,
    maps: Vec<Mmap>,
    /// Tensor name -> (file index, file path).
    index: HashMap<String, usize>,
    files: Vec<PathBuf>,
}

impl Mapped {
    fn open(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        let mut maps = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let file =
                std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?;
            // SAFETY: mapped read-only; elastica writes checkpoints to a temp file and renames
            // it, so a mapped file is never changed in place.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot memory-map {}", f.display()))?;
            let st = SafeTensors::deserialize(&map).with_context(|| {
                format!("{} is not a safetensors file (truncated?)", f.display())
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            maps.push(map);
        }
        Ok(Mapped {
            dir: dir.to_path_buf(),
            maps,
            index,
            files,
        })
    }

    fn tensor(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let &i = self.index.get(name).with_context(|| {
            format!(
                "tensor \"{name}\" is missing from the checkpoint in {}",
                self.dir.display()
            )
        })?;
        let st = SafeTensors::deserialize(&self.maps[i])
            .with_context(|| format!("cannot read {}", self.files[i].display()))?;
        let v = st
            .tensor(name)
            .with_context(|| format!("cannot read \"{name}\" in {}", self.files[i].display()))?;
        let data = v.data();
        // Re-slice from the map so the borrow is tied to `self`, not to `st`.
        let start = data.as_ptr() as usize - self.maps[i].as_ptr() as usize;
        Ok((
            v.dtype(),
            v.shape().to_vec(),
            &self.maps[i][start..start + data.len()],
        ))
    }
}

fn elem_size(d: Dtype, name: &str, dir: &Path) -> Result<usize> {
    Ok(match d {
        Dtype::BF16 | Dtype::F16 => 2,
        Dtype::F32 => 4,
        Dtype::F64 => 8,
        other => bail!(
            "tensor \"{name}\" in {} has dtype {other:?}; weight-space measures read bf16, f16, \
             f32 and f64",
            dir.display()
        ),
    })
}

/// Decode `out.len()` elements of `bytes` (little-endian `d`) into `out`.
fn decode(d: Dtype, bytes: &[u8], out: &mut [f64]) {
    match d {
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64();
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64();
            }
        }
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *o = f64::from_le_bytes(a);
            }
        }
    }
}

/// The decoder layer of a tensor name (`model.layers.<i>.`), or [`OTHER`].
pub fn layer_of(name: &str) -> String {
    name.split_once("layers.")
        .and_then(|(_, rest)| rest.split('.').next())
        .filter(|i| i.parse::<usize>().is_ok())
        .map_or_else(|| OTHER.to_string(), str::to_string)
}

/// The projection kind of a tensor name: its last component before `.weight` / `.bias`.
pub fn kind_of(name: &str) -> String {
    let stem = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".bias"))
        .unwrap_or(name);
    stem.rsplit('.').next().unwrap_or(stem).to_string()
}

/// Measure Δp = θ_end − θ_start against Δa = θ_start − θ_reference over every tensor of
/// `start` (rotary caches excepted). The three directories must hold the same tensor names
/// and shapes; dtypes may differ.
pub fn measure(reference: &Path, start: &Path, end: &Path) -> Result<WeightSpace> {
    let r = Mapped::open(reference)?;
    let s = Mapped::open(start)?;
    let e = Mapped::open(end)?;
    let mut names: Vec<&String> = s
        .index
        .keys()
        .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    names.sort();
    for m in [&r, &e] {
        let extra = m
            .index
            .keys()
            .find(|n| !n.ends_with("rotary_emb.inv_freq") && !s.index.contains_key(*n));
        if let Some(n) = extra {
            bail!(
                "tensor \"{n}\" is in {} but not in {}: the checkpoints do not share an \
                 architecture",
                m.dir.display(),
                s.dir.display()
            );
        }
    }
    let mut total = Sums::default();
    let mut layers: BTreeMap<(usize, String), Sums> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Sums> = BTreeMap::new();
    for name in &names {
        let (ds, shape, bs) = s.tensor(name)?;
        let (dr, shape_r, br) = r.tensor(name)?;
        let (de, shape_e, be) = e.tensor(name)?;
        for (m, sh) in [(&r, &shape_r), (&e, &shape_e)] {
            if *sh != shape {
                bail!(
                    "tensor \"{name}\" has shape {sh:?} in {} but {shape:?} in {}",
                    m.dir.display(),
                    s.dir.display()
                );
            }
        }
        let sizes = [
            elem_size(dr, name, &r.dir)?,
            elem_size(ds, name, &s.dir)?,
            elem_size(de, name, &e.dir)?,
        ];
        let n: usize = shape.iter().product();
        for (bytes, size, dir) in [
            (br, sizes[0], &r.dir),
            (bs, sizes[1], &s.dir),
            (be, sizes[2], &e.dir),
        ] {
            if bytes.len() != n * size {
                bail!(
                    "tensor \"{name}\" in {} holds {} bytes, expected {} for shape {shape:?}",
                    dir.display(),
                    bytes.len(),
                    n * size
                );
            }
        }
        let chunks = n.div_ceil(CHUNK);
        let partial: Vec<Sums> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let lo = c * CHUNK;
                let len = CHUNK.min(n - lo);
                let mut x = [vec![0f64; len], vec![0f64; len], vec![0f64; len]];
                for (k, (d, b)) in [(dr, br), (ds, bs), (de, be)].into_iter().enumerate() {
                    decode(d, &b[lo * sizes[k]..(lo + len) * sizes[k]], &mut x[k]);
                }
                let mut acc = Sums {
                    n: len as u64,
                    ..Sums::default()
                };
                let [r, s, e] = &x;
                for ((r, s), e) in r.iter().zip(s).zip(e) {
                    let a = s - r;
                    let p = e - s;
                    acc.dot += p * a;
                    acc.a += a * a;
                    acc.p += p * p;
                }
                acc
            })
            .collect();
        let mut t = Sums::default();
        for p in &partial {
            t.add(p);
        }
        total.add(&t);
        let layer = layer_of(name);
        // Layers sort numerically, `other` last.
        let key = (layer.parse::<usize>().unwrap_or(usize::MAX), layer);
        layers.entry(key).or_default().add(&t);
        kinds.entry(kind_of(name)).or_default().add(&t);
    }
    if names.is_empty() {
        bail!("{} holds no tensors", s.dir.display());
    }
    Ok(WeightSpace {
        total: total.movement("total"),
        layers: layers
            .into_iter()
            .map(|((_, l), v)| v.movement(l))
            .collect(),
        kinds: kinds.into_iter().map(|(k, v)| v.movement(k)).collect(),
        tensors: names.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Values exactly representable in bf16 and f16 (multiples of 1/64 in [-2, 2]), so the
    /// expected sums can be computed from the f64 values themselves.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let h = (i as u64 + 1)
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(seed * 1442695040888963407);
                ((h >> 33) % 257) as f64 / 64.0 - 2.0
            })
            .collect()
    }

    const TENSORS: [(&str, [usize; 2]); 5] = [
        ("model.embed_tokens.weight", [6, 4]),
        ("model.layers.0.self_attn.q_proj.weight", [4, 4]),
        ("model.layers.0.mlp.down_proj.weight", [4, 8]),
        ("model.layers.1.self_attn.q_proj.weight", [4, 4]),
        ("model.norm.weight", [1, 4]),
    ];

    /// Write one model: `shards` files (with an index when > 1) in `dtype`.
    fn write_model(dir: &Path, seed: u64, dtype: DType, shards: usize) -> Vec<Vec<f64>> {
        std::fs::create_dir_all(dir).unwrap();
        let vals: Vec<Vec<f64>> = TENSORS
            .iter()
            .enumerate()
            .map(|(i, (_, s))| values(s[0] * s[1], seed * 10 + i as u64))
            .collect();
        let mut per_shard: Vec<Vec<(String, Tensor)>> = vec![Vec::new(); shards];
        let mut weight_map = serde_json::Map::new();
        for (i, ((name, shape), v)) in TENSORS.iter().zip(&vals).enumerate() {
            let t = Tensor::from_vec(v.clone(), (shape[0], shape[1]), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            per_shard[i % shards].push((name.to_string(), t));
            let file = format!("model-{:05}-of-{shards:05}.safetensors", i % shards + 1);
            weight_map.insert(name.to_string(), file.into());
        }
        if shards == 1 {
            crate::model::checkpoint::save_tensors(&per_shard[0], &dir.join("model.safetensors"))
                .unwrap();
        } else {
            for (k, ts) in per_shard.iter().enumerate() {
                let file = dir.join(format!("model-{:05}-of-{shards:05}.safetensors", k + 1));
                crate::model::checkpoint::save_tensors(ts, &file).unwrap();
            }
            let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        }
        vals
    }

    #[test]
    fn matches_plain_loops_over_mixed_dtypes_and_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, a, p) = (
            tmp.path().join("base"),
            tmp.path().join("aligned"),
            tmp.path().join("perturbed"),
        );
        let vb = write_model(&b, 1, DType::BF16, 2);
        let va = write_model(&a, 2, DType::F32, 1);
        let vp = write_model(&p, 3, DType::F16, 3);
        let got = measure(&b, &a, &p).unwrap();

        // Plain loops, grouped by hand.
        let mut want: BTreeMap<&str, [f64; 3]> = BTreeMap::new();
        for (i, (name, _)) in TENSORS.iter().enumerate() {
            let layer = match i {
                1 | 2 => "0",
                3 => "1",
                _ => "other",
            };
            let kind = ["embed_tokens", "q_proj", "down_proj", "q_proj", "norm"][i];
            for group in ["total", layer, kind] {
                let w = want.entry(group).or_default();
                for j in 0..vb[i].len() {
                    let da = va[i][j] - vb[i][j];
                    let dp = vp[i][j] - va[i][j];
                    w[0] += dp * da;
                    w[1] += da * da;
                    w[2] += dp * dp;
                }
            }
            let _ = name;
        }
        let check = |m: &Movement| {
            let w = want[m.group.as_str()];
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs().max(1.0);
            assert!(
                close(m.dot, w[0]) && close(m.align_sq, w[1]) && close(m.perturb_sq, w[2]),
                "{m:?} vs {w:?}"
            );
            assert!(close(m.fraction_undone.unwrap(), -w[0] / w[1]));
            assert!(close(m.cosine.unwrap(), -w[0] / (w[1] * w[2]).sqrt()));
            assert!(close(m.norm_ratio.unwrap(), (w[2] / w[1]).sqrt()));
        };
        check(&got.total);
        let layers: Vec<&str> = got.layers.iter().map(|m| m.group.as_str()).collect();
        assert_eq!(layers, ["0", "1", "other"]);
        let kinds: Vec<&str> = got.kinds.iter().map(|m| m.group.as_str()).collect();
        assert_eq!(kinds, ["down_proj", "embed_tokens", "norm", "q_proj"]);
        got.layers.iter().chain(&got.kinds).for_each(check);
        assert_eq!(got.tensors, 5);
        assert_eq!(got.total.elements, 24 + 16 + 32 + 16 + 4);
    }

    #[test]
    fn going_back_to_the_reference_undoes_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, a) = (tmp.path().join("b"), tmp.path().join("a"));
        write_model(&b, 1, DType::F32, 1);
        write_model(&a, 2, DType::BF16, 1);
        // Perturbed = base: Δp = −Δa exactly.
        let back = measure(&b, &a, &b).unwrap().total;
        assert_eq!(back.fraction_undone, Some(1.0));
        assert!((back.cosine.unwrap() - 1.0).abs() < 1e-15);
        assert_eq!(back.norm_ratio, Some(1.0));
        // No movement: nothing undone, cosine undefined.
        let still = measure(&b, &a, &a).unwrap().total;
        assert_eq!((still.fraction_undone, still.cosine), (Some(0.0), None));
    }

    #[test]
    fn mismatched_checkpoints_are_named_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (b, a) = (tmp.path().join("b"), tmp.path().join("a"));
        write_model(&b, 1, DType::F32, 1);
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        std::fs::create_dir_all(&a).unwrap();
        crate::model::checkpoint::save_tensors(
            &[("model.norm.weight".to_string(), t)],
            &a.join("model.safetensors"),
        )
        .unwrap();
        let e = format!("{:#}", measure(&b, &a, &a).unwrap_err());
        assert!(e.contains("is in") && e.contains("but not in"), "{e}");
        let e = format!(
            "{:#}",
            measure(&a, &a, &tmp.path().join("none")).unwrap_err()
        );
        assert!(e.contains("none"), "{e}");
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), "12");
        assert_eq!(layer_of("lm_head.weight"), OTHER);
        assert_eq!(kind_of("model.layers.12.mlp.up_proj.weight"), "up_proj");
    }
}
