//! Planning and running the resistance experiment as a grid of cells. Planning loads and
//! splits the data (`slices/slice_k.jsonl`, `prompts.jsonl`, pinned by hash in the
//! manifest) and lists, per seed, the sequential slice fine-tunes, one generation cell per
//! compared checkpoint and the forward and inverse cell of every pair. The executor named in
//! the config runs them; rerunning the command skips finished cells and resumes killed ones.
//! Finally the pair cells' losses are analysed and the report is written.
//!
//! Run directory:
//! ```text
//! config.toml  manifest.json  status.json       the resolved config and the grid
//! prompts.jsonl  slices/slice_k.jsonl           the held-out prompts and the slices
//! cells/seed{S}-theta{k}/                        theta_k (HF layout) and its train_log.jsonl
//! cells/seed{S}-gen{k}/gen_{k}.jsonl             theta_k's answers
//! cells/seed{S}-pair{k}-{l}-{forward,inverse}/   train_log.jsonl of each pair fine-tune
//! results.* pairs.csv table.tex report.md loss_{k}-{l}.{png,svg}
//! ```

use super::cells::{
    GenerateParams, ModelRef, PairOutput, PairParams, ThetaParams, GENERATE, PAIR, THETA,
};
use super::config::ResistConfig;
use super::plan::{Direction, PairPlan};
use super::results::{analyse, write_all, ResistResults, RunLosses};
use super::slices;
use crate::data::prompts::{conversations as prompt_conversations, prompt_lines, Prompt};
use crate::data::records::{conversations, jsonl_bytes, Record};
use crate::experiments::log_dir::cell_log_dir;
use crate::experiments::renders::check_renders;
use crate::grid::config::RunOptions;
use crate::grid::launch::launch;
use crate::grid::manifest::{sha256_hex, CellSpec, Input, Manifest};
use crate::grid::rundir::Grid;
use crate::report::RunDir;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const PROMPTS_FILE: &str = "prompts.jsonl";
/// The held-out general text of "capability kept" (only with a `[capability]` table).
pub const CAPABILITY_FILE: &str = "capability.jsonl";

/// `slices/slice_k.jsonl`, relative to the run directory.
pub fn slice_file(k: usize) -> String {
    format!("slices/slice_{k}.jsonl")
}

pub fn theta_id(seed: u64, k: usize) -> String {
    format!("seed{seed}-theta{k}")
}
pub fn gen_id(seed: u64, k: usize) -> String {
    format!("seed{seed}-gen{k}")
}
pub fn pair_id(seed: u64, pair: &PairPlan, d: Direction) -> String {
    format!("seed{seed}-pair{}-{}", pair.id(), d.name())
}

/// The data a run trains and prompts on, as the exact bytes written to the run directory.
#[derive(Debug, Clone)]
pub struct PreparedData {
    /// `(relative path, JSONL bytes)`: the slices, then the prompts.
    pub files: Vec<(String, Vec<u8>)>,
    pub slice_sizes: Vec<usize>,
    pub prompts: usize,
}

/// The slices of `records` as JSONL bytes with their sizes, and the held-out prompts.
type Sliced = (Vec<(Vec<u8>, usize)>, Vec<Prompt>);

fn sliced<T: slices::SliceRecord + serde::Serialize>(
    records: &[T],
    cfg: &ResistConfig,
    held_out: usize,
) -> Result<Sliced> {
    let split = slices::split(records, &cfg.ratios(), held_out, &cfg.data.path)?;
    let files = split
        .slices
        .iter()
        .map(|s| Ok((jsonl_bytes(s)?, s.len())))
        .collect::<Result<_>>()?;
    Ok((files, split.prompts))
}

/// The prompts file (read back with `data::prompts::read_prompts`): a text is a pair with an
/// empty response, as runs planned before conversations were read hold it (so their pinned
/// hash stays), and a conversation's turns are `{"messages"}`.
fn prompts_file(prompts: &[Prompt]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for p in prompts {
        bytes.extend(match p {
            Prompt::Text(t) => jsonl_bytes(&[Record::pair(t.clone(), String::new())])?,
            Prompt::Turns(_) => prompt_lines(std::slice::from_ref(p))?,
        });
    }
    Ok(bytes)
}

/// Load the `[data]` set (and `[prompts]` if given) and split it into slices and prompts.
/// Under `[align] method = "dpo"` the data are preference pairs and so are the slices.
pub fn prepare_data(cfg: &ResistConfig) -> Result<PreparedData> {
    let held_out = if cfg.prompts.is_some() {
        0
    } else {
        cfg.eval_prompts
    };
    let what = || format!("cannot load the [data] set {}", cfg.data.path);
    let (t, max_length) = (cfg.train.template, cfg.train.max_length);
    let (slice_files, mut prompts) = if cfg.align.is_dpo() {
        let ds = crate::data::prefs::load(&cfg.data, cfg.align.prefer).with_context(what)?;
        let answered: Vec<Record> = ds.records.iter().map(|r| r.record(&r.chosen)).collect();
        t.check_conversations(conversations(&answered), "the [data] set")?;
        check_renders(
            &cfg.model,
            t,
            max_length,
            &[("the [data] set", &answered)],
            &[],
        )?;
        sliced(&ds.records, cfg, held_out)?
    } else {
        let ds = crate::data::schemas::load(&cfg.data).with_context(what)?;
        t.check_conversations(conversations(&ds.records), "the [data] set")?;
        check_renders(
            &cfg.model,
            t,
            max_length,
            &[("the [data] set", &ds.records)],
            &[],
        )?;
        sliced(&ds.records, cfg, held_out)?
    };
    if let Some(spec) = &cfg.prompts {
        let pds = crate::data::schemas::load(spec)
            .with_context(|| format!("cannot load the [prompts] set {}", spec.path))?;
        let given = slices::prompts_of(&pds.records, &spec.path)?;
        if given.len() < cfg.eval_prompts {
            bail!(
                "the [prompts] set {} has {} prompts but eval_prompts = {}; lower eval_prompts \
                 or add prompts",
                spec.path,
                given.len(),
                cfg.eval_prompts
            );
        }
        prompts = given[..cfg.eval_prompts].to_vec();
    }
    t.check_conversations(prompt_conversations(&prompts), "the generation prompts")?;
    let pair = cfg.pair_train();
    pair.template.check_conversations(
        prompt_conversations(&prompts),
        "the generation prompts (which the pair fine-tunes train on, answered)",
    )?;
    check_renders(&cfg.model, t, max_length, &[], &prompts)?;
    check_renders(&cfg.model, pair.template, pair.max_length, &[], &prompts)?;
    if cfg.align.is_kto() {
        if let Some(i) = slice_files.iter().position(|(_, n)| *n < 2) {
            bail!(
                "[align] dpo_loss = \"kto\" estimates its reference point on mismatched pairs, \
                 so each slice needs at least 2 pairs; slice {} has {} (add pairs, lower \
                 `slices`, or change `slice_ratios`)",
                i + 1,
                slice_files[i].1
            );
        }
    }
    let mut files = Vec::new();
    for (i, (bytes, _)) in slice_files.iter().enumerate() {
        files.push((slice_file(i + 1), bytes.clone()));
    }
    files.push((PROMPTS_FILE.to_string(), prompts_file(&prompts)?));
    if let Some(spec) = &cfg.capability {
        let cds = crate::data::schemas::load(spec)
            .with_context(|| format!("cannot load the [capability] set {}", spec.path))?;
        let mut r = cds.records;
        r.truncate(cfg.measures.capability_n);
        if r.is_empty() {
            bail!("the [capability] set {} has no records", spec.path);
        }
        files.push((CAPABILITY_FILE.to_string(), jsonl_bytes(&r)?));
    }
    Ok(PreparedData {
        files,
        slice_sizes: slice_files.iter().map(|(_, n)| *n).collect(),
        prompts: prompts.len(),
    })
}

/// The base model's directory as the cells of a run in `out` find it: relative to `out` when
/// it lies inside `out` or `out`'s parent directory (as the demo's models lie beside its
/// resistance run), so that the two can be moved together and the run resumed; otherwise
/// absolute (cells may run from another directory).
fn base_dir(cfg: &ResistConfig, out: &Path) -> Result<String> {
    let dir = crate::model::checkpoint::resolve_model_dir(&cfg.model)
        .with_context(|| format!("cannot find the base model {}", cfg.model))?;
    let abs = std::fs::canonicalize(&dir)
        .with_context(|| format!("cannot resolve the base model directory {}", dir.display()))?;
    let out = std::path::absolute(out)?;
    let inside = |dir: Option<&Path>| {
        let dir = std::fs::canonicalize(dir?).ok()?;
        abs.strip_prefix(dir).ok().map(Path::to_path_buf)
    };
    let rel = match inside(Some(&out)) {
        Some(r) => Some(r),
        None => inside(out.parent()).map(|r| Path::new("..").join(r)),
    };
    Ok(rel.unwrap_or(abs).to_string_lossy().into_owned())
}

/// The grid's cells, in an order where every dependency comes first.
pub fn cells(cfg: &ResistConfig, base: &str, data: &PreparedData) -> Result<Vec<CellSpec>> {
    cfg.validate()?;
    let pinned = |path: &str| -> Result<Input> {
        let bytes = data
            .files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b)
            .with_context(|| format!("no prepared file {path}"))?;
        Ok(Input {
            path: path.to_string(),
            sha256: Some(sha256_hex(bytes)),
        })
    };
    let mut out = Vec::new();
    for &seed in &cfg.seeds {
        let model = |k: usize| {
            if k == 0 {
                ModelRef::Base(base.to_string())
            } else {
                ModelRef::Cell(theta_id(seed, k))
            }
        };
        let deps_of = |m: &ModelRef| match m {
            ModelRef::Cell(id) => vec![id.clone()],
            ModelRef::Base(_) => vec![],
        };
        for k in 1..=cfg.slices {
            let train = cfg.slice_train(seed);
            let start = model(k - 1);
            out.push(CellSpec {
                id: theta_id(seed, k),
                kind: THETA.into(),
                deps: deps_of(&start),
                inputs: BTreeMap::from([("data".to_string(), pinned(&slice_file(k))?)]),
                params: serde_json::to_value(ThetaParams {
                    k,
                    start,
                    train,
                    log_dir: cell_log_dir(cfg.log_dir.as_deref(), &theta_id(seed, k))?,
                })?,
            });
        }
        for k in cfg.checkpoints() {
            let m = model(k);
            out.push(CellSpec {
                id: gen_id(seed, k),
                kind: GENERATE.into(),
                deps: deps_of(&m),
                inputs: if cfg.capability.is_some() {
                    BTreeMap::from([
                        ("prompts".to_string(), pinned(PROMPTS_FILE)?),
                        ("capability".to_string(), pinned(CAPABILITY_FILE)?),
                    ])
                } else {
                    BTreeMap::from([("prompts".to_string(), pinned(PROMPTS_FILE)?)])
                },
                params: serde_json::to_value(GenerateParams {
                    k,
                    model: m,
                    template: cfg.train.template,
                    generate: cfg.generate.with_seed(seed),
                    base: cfg.measures.kl_by_position.then(|| base.to_string()),
                    capability_max_length: cfg.capability.as_ref().map(|_| cfg.train.max_length),
                })?,
            });
        }
        let mut train = cfg.pair_train().clone();
        train.seed = seed;
        for pair in PairPlan::all(&cfg.checkpoints(), cfg.samples_per_pair(), &train)? {
            let (k, l) = (pair.k(), pair.l());
            let models = BTreeMap::from([(k, model(k)), (l, model(l))]);
            let gens = BTreeMap::from([(k, gen_id(seed, k)), (l, gen_id(seed, l))]);
            for d in Direction::BOTH {
                let mut deps = deps_of(&models[&pair.start(d)]);
                deps.extend([gen_id(seed, k), gen_id(seed, l)]);
                out.push(CellSpec {
                    id: pair_id(seed, &pair, d),
                    kind: PAIR.into(),
                    deps,
                    inputs: BTreeMap::new(),
                    params: serde_json::to_value(PairParams {
                        pair: pair.clone(),
                        direction: d,
                        models: models.clone(),
                        gens: gens.clone(),
                        keep_model: cfg.keep_pair_models,
                        log_dir: cell_log_dir(cfg.log_dir.as_deref(), &pair_id(seed, &pair, d))?,
                        // A LoRA pair fine-tune keeps only its adapter, no full weights.
                        weight_space: cfg.measures.weight_space && !train.lora.enabled(),
                    })?,
                });
            }
        }
    }
    Ok(out)
}

/// Plan the grid of `cfg` in `out`: prepare the data, record the manifest (refusing to mix
/// with finished cells of a different setup), then write the data files.
pub fn plan(cfg: &ResistConfig, out: &Path) -> Result<(Grid, PreparedData)> {
    cfg.validate()?;
    let data = prepare_data(cfg)?;
    let base = base_dir(cfg, out)?;
    let manifest = Manifest::new("resist", cells(cfg, &base, &data)?)?;
    let grid = Grid::plan(out, manifest)?;
    for (rel, bytes) in &data.files {
        let p = out.join(rel);
        // Rewriting identical bytes would only churn mtimes; a changed file means no cell
        // that read it has output (Grid::plan checked), so replacing it is safe.
        if std::fs::read(&p).ok().as_deref() != Some(bytes.as_slice()) {
            crate::util::fsx::atomic_write(&p, bytes)?;
        }
    }
    crate::util::fsx::atomic_write(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    Ok((grid, data))
}

/// The losses of every pair cell of a finished grid.
pub fn losses(grid: &Grid) -> Result<Vec<RunLosses>> {
    let mut out = Vec::new();
    for (i, c) in grid.manifest().cells.iter().enumerate() {
        if c.kind != PAIR {
            continue;
        }
        let Some(r) = grid.result(i)? else {
            bail!("cell {} has not finished", c.id);
        };
        let o: PairOutput = r.output_as()?;
        out.push(RunLosses {
            seed: o.seed,
            k: o.k,
            l: o.l,
            direction: o.direction,
            samples: o.samples,
            losses: o.fine_tune.losses,
        });
    }
    Ok(out)
}

/// Run the whole experiment into `out` (resuming what a previous run left) and write the
/// report. Returns the analysed results.
pub fn run(cfg: &ResistConfig, out: &Path) -> Result<ResistResults> {
    run_with(cfg, out, RunOptions::waiting(true))?.with_context(|| {
        format!(
            "the grid in {} was submitted without waiting",
            out.display()
        )
    })
}

/// [`run`] with the command line's options (progress bars, `--no-wait`). `None` when the
/// cells were submitted to a scheduler without waiting (`elastica collect` writes the
/// report later).
pub fn run_with(cfg: &ResistConfig, out: &Path, opts: RunOptions) -> Result<Option<ResistResults>> {
    cfg.cell_device().check_precision(out)?;
    // Planned first, so a refused config or data set leaves no directory behind.
    let (grid, data) = plan(cfg, out)?;
    let run_dir = RunDir::create(out)?;
    cfg.cell_device().write(grid.run_dir())?;
    let exec = launch(&cfg.executor, &cfg.slurm, opts, super::cells::KINDS)?;
    let report = exec.execute(&grid)?;
    if report.detached() {
        eprintln!("{}", report.summary());
        return Ok(None);
    }
    report.ensure_complete(&grid)?;
    let res = analyse(&losses(&grid)?)?;
    write_all(&run_dir, &res, &header(cfg, &data))?;
    super::instruments::write(&run_dir, &grid)?;
    Ok(Some(res))
}

/// `elastica collect` on a resist run: the report from the finished cells, with the config
/// and the data read back from the run directory.
pub fn collect(grid: &Grid) -> Result<ResistResults> {
    let dir = grid.run_dir();
    let cfg = ResistConfig::from_file(&dir.join("config.toml"))?;
    let mut files = Vec::new();
    let mut slice_sizes = Vec::new();
    for k in 1..=cfg.slices {
        let rel = slice_file(k);
        let bytes = std::fs::read(dir.join(&rel))
            .with_context(|| format!("cannot read {}", dir.join(&rel).display()))?;
        slice_sizes.push(
            bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
        );
        files.push((rel, bytes));
    }
    let bytes = std::fs::read(dir.join(PROMPTS_FILE))
        .with_context(|| format!("cannot read {}", dir.join(PROMPTS_FILE).display()))?;
    let prompts = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    files.push((PROMPTS_FILE.to_string(), bytes));
    let data = PreparedData {
        files,
        slice_sizes,
        prompts,
    };
    let res = analyse(&losses(grid)?)?;
    let run_dir = RunDir::create(dir)?;
    write_all(&run_dir, &res, &header(&cfg, &data))?;
    super::instruments::write(&run_dir, grid)?;
    Ok(res)
}

/// The report's description of the setup.
pub fn header(cfg: &ResistConfig, data: &PreparedData) -> String {
    let pt = cfg.pair_train();
    let g = &cfg.generate;
    let sizes: Vec<String> = data.slice_sizes.iter().map(usize::to_string).collect();
    let template = serde_json::to_value(pt.template)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "- base model θ0: `{}`\n\
         - data: `{}` (schema `{}`), {} slices of {} records\n\
         - checkpoints compared: {}\n\
         - held-out prompts: {}; samples per forward/inverse fine-tune: {}\n\
         - generation: temperature {}, top-p {}, top-k {}, max new tokens {}\n\
         - pair fine-tunes: lr {}, batch {} × {} accumulation, {} epoch(s), template `{}`\n\
         - seeds: {:?}\n{}",
        cfg.model,
        cfg.data.path,
        cfg.data.schema,
        cfg.slices,
        sizes.join(" / "),
        cfg.checkpoints()
            .iter()
            .map(|k| format!("θ{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        data.prompts,
        cfg.samples_per_pair(),
        g.temperature,
        g.top_p,
        g.top_k,
        g.max_new_tokens,
        pt.lr,
        pt.batch_size,
        pt.grad_accum,
        pt.epochs,
        template,
        cfg.seeds,
        stages(cfg),
    )
}

/// The report's lines on how each stage trained: the slices' method and adapter, the pair
/// fine-tunes' (always SFT: their loss on the other checkpoint's answers is the measure).
fn stages(cfg: &ResistConfig) -> String {
    use crate::experiments::align::AlignSpec;
    let slices = match cfg.align.is_dpo() {
        false => "SFT on the slice's records".to_string(),
        true => cfg.align.describe_preference(
            "the slice's preference pairs",
            "its starting model θk-1, at each stage",
        ),
    };
    let merged = if cfg.align.lora.enabled() {
        ", merged into θk"
    } else {
        ""
    };
    let pair_lora = cfg.pair_train().lora.enabled();
    format!(
        "- slice fine-tunes: {slices}, {}{merged}\n\
         - pair fine-tunes: SFT on the other checkpoint's answers (the compared loss), {}{}\n",
        AlignSpec::describe_lora(&cfg.align.lora),
        AlignSpec::describe_lora(&cfg.pair_train().lora),
        if pair_lora && cfg.measures.weight_space {
            "; weight-space movement not measured (an adapter holds no full weights)"
        } else {
            ""
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schemas::DataSpec;

    fn data(n: usize) -> (tempfile::TempDir, ResistConfig) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let recs: Vec<Record> = (0..n)
            .map(|i| Record::pair(format!("p{i}"), format!("r{i}")))
            .collect();
        crate::data::records::write_jsonl(&p, &recs).unwrap();
        let mut cfg = ResistConfig::new("m", DataSpec::new(p.to_string_lossy(), "jsonl"));
        cfg.eval_prompts = 2;
        (dir, cfg)
    }

    #[test]
    fn grid_has_the_papers_shape() {
        let (_d, mut cfg) = data(8);
        cfg.seeds = vec![1, 2];
        let prep = prepare_data(&cfg).unwrap();
        assert_eq!(prep.slice_sizes, vec![2, 2, 2]);
        let cs = cells(&cfg, "/base", &prep).unwrap();
        // Per seed: 3 slice fine-tunes, 3 generations, 3 pairs x 2 directions.
        assert_eq!(cs.len(), 2 * (3 + 3 + 6));
        let m = Manifest::new("resist", cs).unwrap();
        let c = &m.cells[m.index_of("seed2-pair1-3-inverse").unwrap()];
        assert_eq!(c.deps, ["seed2-theta3", "seed2-gen1", "seed2-gen3"]);
        let p: PairParams = serde_json::from_value(c.params.clone()).unwrap();
        assert_eq!((p.pair.samples(), p.pair.train().seed), (2, 2));
        // Both directions carry the same pair plan.
        let f = &m.cells[m.index_of("seed2-pair1-3-forward").unwrap()];
        assert_eq!(f.params["pair"], c.params["pair"]);
        assert_eq!(f.deps, ["seed2-theta1", "seed2-gen1", "seed2-gen3"]);
        let t1 = &m.cells[m.index_of("seed1-theta1").unwrap()];
        assert!(t1.deps.is_empty());
        assert_eq!(t1.params["start"], serde_json::json!({"base": "/base"}));

        // With theta_0, its generation and pairs start from the base model.
        cfg.include_base = true;
        let cs = cells(&cfg, "/base", &prep).unwrap();
        assert_eq!(cs.len(), 2 * (3 + 4 + 12));
        let m = Manifest::new("resist", cs).unwrap();
        let g0 = &m.cells[m.index_of("seed1-gen0").unwrap()];
        assert!(g0.deps.is_empty());
        let f = &m.cells[m.index_of("seed1-pair0-2-forward").unwrap()];
        assert_eq!(f.deps, ["seed1-gen0", "seed1-gen2"]);
        assert!(f.params.get("log_dir").is_none(), "no log_dir, no key");

        // log_dir: one absolute directory per fine-tuning cell, named by its id.
        cfg.log_dir = Some("tb".into());
        let m = Manifest::new("resist", cells(&cfg, "/base", &prep).unwrap()).unwrap();
        let here = std::env::current_dir().unwrap();
        for id in ["seed1-theta2", "seed1-pair0-2-forward"] {
            let c = &m.cells[m.index_of(id).unwrap()];
            let want = here.join("tb").join(id);
            assert_eq!(c.params["log_dir"], want.to_string_lossy().as_ref(), "{id}");
        }
        let g = &m.cells[m.index_of("seed1-gen2").unwrap()];
        assert!(
            g.params.get("log_dir").is_none(),
            "generation trains nothing"
        );
    }
}
