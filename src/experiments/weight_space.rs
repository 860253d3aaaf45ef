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
//!
//! A model may also be a checkpoint with LoRA adapters (PEFT's layout) on it ([`Weights`]):
//! its weights are then the merged ones, W + s·B·A for every adapted projection (adapters
//! added in order), computed in f64 one tensor at a time, so the memory bound is one dense
//! tensor per adapted model instead of a few chunks.

use crate::model::checkpoint::weight_files;
use crate::model::lora::Adapter;
use crate::model::ModelConfig;
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

/// The weights of one model in the measure: a checkpoint directory, with LoRA adapter
/// directories merged onto it in order (none for a full checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub checkpoint: PathBuf,
    pub adapters: Vec<PathBuf>,
}

impl Weights {
    /// A full checkpoint.
    pub fn checkpoint(dir: &Path) -> Weights {
        Weights {
            checkpoint: dir.to_path_buf(),
            adapters: Vec::new(),
        }
    }

    /// These weights with one more adapter merged on top.
    pub fn with_adapter(mut self, dir: &Path) -> Weights {
        self.adapters.push(dir.to_path_buf());
        self
    }

    /// Whether any adapter is merged.
    pub fn is_merged(&self) -> bool {
        !self.adapters.is_empty()
    }
}

/// One model's tensors: its checkpoint mapped, its adapters loaded.
struct Source {
    mapped: Mapped,
    adapters: Vec<Adapter>,
}

/// A tensor's values: the checkpoint's bytes as stored, or merged with adapters (f64).
enum Values<'a> {
    Stored(Dtype, usize, &'a [u8]),
    Merged(Vec<f64>),
}

impl Values<'_> {
    /// Elements `lo..lo + out.len()` as f64.
    fn fill(&self, lo: usize, out: &mut [f64]) {
        match self {
            Values::Stored(d, size, b) => decode(*d, &b[lo * size..(lo + out.len()) * size], out),
            Values::Merged(v) => out.copy_from_slice(&v[lo..lo + out.len()]),
        }
    }
}

impl Source {
    fn open(w: &Weights) -> Result<Source> {
        let mapped = Mapped::open(&w.checkpoint)?;
        let adapters = if w.adapters.is_empty() {
            Vec::new()
        } else {
            let cfg_path = w.checkpoint.join("config.json");
            let cfg = ModelConfig::from_file(&cfg_path)?;
            w.adapters
                .iter()
                .map(|d| Adapter::load(d, &cfg))
                .collect::<Result<_>>()?
        };
        Ok(Source { mapped, adapters })
    }

    /// Tensor `name`, checked to have `shape` (`shape_of` names where that shape came from),
    /// merged with every adapter that adapts it.
    fn values(&self, name: &str, shape: &[usize], shape_of: &Path) -> Result<Values<'_>> {
        let dir = &self.mapped.dir;
        let (d, sh, bytes) = self.mapped.tensor(name)?;
        if sh != shape {
            bail!(
                "tensor \"{name}\" has shape {sh:?} in {} but {shape:?} in {}",
                dir.display(),
                shape_of.display()
            );
        }
        let size = elem_size(d, name, dir)?;
        let n: usize = shape.iter().product();
        if bytes.len() != n * size {
            bail!(
                "tensor \"{name}\" in {} holds {} bytes, expected {} for shape {shape:?}",
                dir.display(),
                bytes.len(),
                n * size
            );
        }
        let module = name.strip_suffix(".weight").unwrap_or(name);
        let mut merged: Option<Vec<f64>> = None;
        for adapter in &self.adapters {
            let Some((a, b)) = adapter.pair(module)? else {
                continue;
            };
            let f64s = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F64);
            let delta = (f64s(&b)?.matmul(&f64s(&a)?)? * adapter.scale_of(module)?)?;
            let delta: Vec<f64> = delta.flatten_all()?.to_vec1()?;
            if delta.len() != n {
                bail!(
                    "an adapter's B·A for \"{name}\" has {} elements, the weight in {} {n}",
                    delta.len(),
                    dir.display()
                );
            }
            let w = merged.get_or_insert_with(|| {
                let mut w = vec![0f64; n];
                decode(d, bytes, &mut w);
                w
            });
            for (w, x) in w.iter_mut().zip(&delta) {
                *w += x;
            }
        }
        Ok(match merged {
            Some(w) => Values::Merged(w),
            None => Values::Stored(d, size, bytes),
        })
    }
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
    measure_weights(
        &Weights::checkpoint(reference),
        &Weights::checkpoint(start),
        &Weights::checkpoint(end),
    )
}

/// [`measure`] on weights that may carry LoRA adapters: each model's merged weights.
pub fn measure_weights(reference: &Weights, start: &Weights, end: &Weights) -> Result<WeightSpace> {
    let r = Source::open(reference)?;
    let s = Source::open(start)?;
    let e = Source::open(end)?;
    let mut names: Vec<&String> = s
        .mapped
        .index
        .keys()
        .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    names.sort();
    for m in [&r.mapped, &e.mapped] {
        let extra = m
            .index
            .keys()
            .find(|n| !n.ends_with("rotary_emb.inv_freq") && !s.mapped.index.contains_key(*n));
        if let Some(n) = extra {
            bail!(
                "tensor \"{n}\" is in {} but not in {}: the checkpoints do not share an \
                 architecture",
                m.dir.display(),
                s.mapped.dir.display()
            );
        }
    }
    let mut total = Sums::default();
    let mut layers: BTreeMap<(usize, String), Sums> = BTreeMap::new();
    let mut kinds: BTreeMap<String, Sums> = BTreeMap::new();
    for name in &names {
        let (_, shape, _) = s.mapped.tensor(name)?;
        let sdir = &s.mapped.dir;
        let x = [
            r.values(name, &shape, sdir)?,
            s.values(name, &shape, sdir)?,
            e.values(name, &shape, sdir)?,
        ];
        let n: usize = shape.iter().product();
        let chunks = n.div_ceil(CHUNK);
        let partial: Vec<Sums> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let lo = c * CHUNK;
                let len = CHUNK.min(n - lo);
                let mut buf = [vec![0f64; len], vec![0f64; len], vec![0f64; len]];
                for (v, b) in x.iter().zip(&mut buf) {
                    v.fill(lo, b);
                }
                let mut acc = Sums {
                    n: len as u64,
                    ..Sums::default()
                };
                let [r, s, e] = &buf;
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
        bail!("{} holds no tensors", s.mapped.dir.display());
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

    /// A LoRA adapter on the tiny-llama fixture, with B filled (a fresh one has B = 0).
    fn adapter_on_fixture(dir: &Path, rank: usize, seed: u64) -> Adapter {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-llama");
        let cfg = ModelConfig::from_file(&base.join("config.json")).unwrap();
        let lora = crate::model::lora::LoraConfig {
            rank,
            alpha: 2.0 * rank as f64 + 1.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
            ..crate::model::lora::LoraConfig::DEFAULT
        };
        let ad = Adapter::init(&cfg, &lora, seed, "tiny-llama").unwrap();
        for (name, var) in ad.params.iter() {
            if name.ends_with("lora_B.weight") {
                let v: Vec<f64> = values(var.elem_count(), seed + 7)
                    .iter()
                    .map(|x| x / 8.0)
                    .collect();
                let t = Tensor::from_vec(v, var.dims(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                var.set(&t).unwrap();
            }
        }
        ad.save(dir).unwrap();
        ad
    }

    /// s·B·A of `module` by plain loops, or zeros when the adapter does not adapt it.
    fn delta(ad: &Adapter, module: &str, n: usize) -> Vec<f64> {
        let Some((a, b)) = ad.pair(module).unwrap() else {
            return vec![0.0; n];
        };
        let a: Vec<Vec<f32>> = a.to_vec2().unwrap();
        let b: Vec<Vec<f32>> = b.to_vec2().unwrap();
        let mut d = Vec::with_capacity(n);
        for row in &b {
            for j in 0..a[0].len() {
                let dot: f64 = (0..a.len()).map(|k| row[k] as f64 * a[k][j] as f64).sum();
                d.push(ad.scale_of(module).unwrap() * dot);
            }
        }
        d
    }

    #[test]
    fn merged_adapters_match_plain_loops() {
        let tmp = tempfile::tempdir().unwrap();
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-llama");
        let (d1, d2) = (tmp.path().join("align"), tmp.path().join("perturb"));
        let a1 = adapter_on_fixture(&d1, 2, 1);
        let a2 = adapter_on_fixture(&d2, 3, 2);
        let start = Weights::checkpoint(&base).with_adapter(&d1);
        let end = start.clone().with_adapter(&d2);
        let got = measure_weights(&Weights::checkpoint(&base), &start, &end).unwrap();

        // Plain loops: Δa = s1·B1·A1 and Δp = s2·B2·A2 on every adapted weight, 0 elsewhere.
        let tensors =
            candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut want: BTreeMap<String, [f64; 3]> = BTreeMap::new();
        let mut elements = 0u64;
        for (name, t) in &tensors {
            let n = t.elem_count();
            elements += n as u64;
            let module = name.strip_suffix(".weight").unwrap_or(name);
            let (da, dp) = (delta(&a1, module, n), delta(&a2, module, n));
            for group in ["total".to_string(), layer_of(name), kind_of(name)] {
                let w = want.entry(group).or_default();
                for (a, p) in da.iter().zip(&dp) {
                    w[0] += p * a;
                    w[1] += a * a;
                    w[2] += p * p;
                }
            }
        }
        assert_eq!(got.total.elements, elements);
        assert_eq!(got.tensors, tensors.len());
        for m in std::iter::once(&got.total)
            .chain(&got.layers)
            .chain(&got.kinds)
        {
            let w = want[&m.group];
            // The merged weights round to the base's f32 values' f64 sums: 1e-9 relative.
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * y.abs().max(1e-12);
            assert!(
                close(m.dot, w[0]) && close(m.align_sq, w[1]) && close(m.perturb_sq, w[2]),
                "{m:?} vs {w:?}"
            );
        }
        assert!(got.total.align_sq > 0.0 && got.total.perturb_sq > 0.0);
        let kind = |k: &str| got.kinds.iter().find(|m| m.group == k).unwrap().clone();
        assert_eq!(kind("k_proj").align_sq, 0.0);
        assert!(kind("down_proj").align_sq > 0.0);

        // A full checkpoint mixed with merged weights: back to the base undoes everything.
        let back = measure_weights(
            &Weights::checkpoint(&base),
            &start,
            &Weights::checkpoint(&base),
        )
        .unwrap()
        .total;
        assert!(
            (back.fraction_undone.unwrap() - 1.0).abs() < 1e-12,
            "{back:?}"
        );
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
