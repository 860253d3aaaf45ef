//! `elastica demo`: the paper's whole pipeline on the synthetic world, from scratch, in
//! minutes on a CPU. World -> tokenizer -> pre-training (several budgets, two model sizes)
//! -> rebound grid (alignment SFT on n+ positive reviews, perturbation SFT on n- negative
//! reviews; the sampled score and two exact measures) with the compression rates of D_p,
//! D_a and D_t tracked through every perturbation -> the compression ablation (`--full`)
//! -> resistance (forward vs inverse alignment) -> the exact token-tree simulation of the
//! theorem -> (`--full`) the DPO variant of the rebound -> one report, every claim a three-outcome verdict (held / reversed /
//! undecided) with its effect size, 95% CI and p-value over seeds.
//!
//! - [`config`]: the presets (default, `--quick`, `--full`).
//! - [`measures`]: the exact measures (likelihood margin, first-word sentiment).
//! - [`rebound`]: the resumable (base, seed) units of the rebound grid and the ablation.
//! - [`rebound_report`]: the rebound section, the controls and the two scaling claims.
//! - [`preferences`], [`dpo_report`]: the DPO variant (`--full`): preference pairs of the
//!   world, the same units aligned by DPO, and its section beside the SFT rebound.
//! - [`elasticity`]: the compression section (the theorem on trained models).
//! - [`sections`]: the resistance and theory sections, run through their own commands' code.
//! - [`out_dir`]: the lock on `--out` and the settings of the run already there.
//! - [`instruments`]: beyond the paper, on one base and seed: KL by response position and
//!   the alignment update undone in weight space.
//!
//! Run directory: `report.md`, `results.json` (every section's numbers; identical on a rerun
//! with the same seed), `results.csv/jsonl` (rebound cells), `rates.csv/jsonl` (tracked
//! compression rates), `elasticity.csv`, plots (PNG and SVG), `demo_config.json` (the
//! settings, see [`out_dir`]), `world.json`, `world/`,
//! `models/` (the pre-trained bases), `cells/`, `instruments/`, `resist/`, `theory/`.

pub mod config;
pub mod dpo_report;
pub mod elasticity;
pub mod instruments;
pub mod measures;
pub mod out_dir;
pub mod preferences;
pub mod rebound;
pub mod rebound_report;
pub mod sections;

pub use config::{BaseSpec, DemoConfig};
pub use rebound::ReboundRow;

use super::pretrain::{pretrain, take_tokens, PretrainConfig};

/// How a user raises a base's pre-training budget (in take_tokens' refusal).
const BASE_BUDGET: &str = "the base's `tokens` in the demo settings' `bases`";
use crate::data::world::{Task, World, WorldConfig};
use crate::experiments::resist::results::ResistResults;
use crate::model::TextTokenizer;
use crate::report::table::Table;
use crate::report::RunDir;
use crate::util::parallel::run_graph;
use anyhow::{Context, Result};
use rebound::{run_unit, Alignment, DemoData, RatePoint, UnitInputs};
use serde::Serialize;
use std::path::Path;

/// Extra pre-training text generated past the largest budget: the held-out D_p sample, and
/// per negative of the n- grid room for the ablation's pre-training-distributed D_t.
const HELD_OUT_TOKENS: usize = 8_000;
const HELD_OUT_TOKENS_PER_NEGATIVE: usize = 80;

/// Each (base, seed) pre-trained model's measures.
#[derive(Debug, Clone, Serialize)]
pub struct BaseScore {
    pub base: String,
    pub seed: u64,
    pub score: f64,
    pub margin: f64,
    pub first_word: f64,
}

impl BaseScore {
    pub fn measure(&self, name: &str) -> f64 {
        match name {
            "margin" => self.margin,
            "first_word" => self.first_word,
            _ => self.score,
        }
    }
}

/// Everything the demo measured, as `results.json`.
#[derive(Serialize)]
struct DemoResults<'a> {
    config: &'a DemoConfig,
    /// The measures of each pre-trained model (per rebound seed: the score samples with it).
    base_scores: &'a [BaseScore],
    /// Exact pre-training tokens per base.
    pretrain_tokens: &'a [(String, usize)],
    rebound: &'a [ReboundRow],
    rates: &'a [RatePoint],
    elasticity: &'a elasticity::ElasticitySummary,
    rebound_analysis: &'a rebound_report::Analysis,
    /// The compression ablation's tracked rates (`base` = the arm's name) and slopes.
    ablation_rates: &'a [RatePoint],
    ablation: Option<&'a elasticity::ElasticitySummary>,
    resistance: Option<&'a ResistResults>,
    theory: Option<serde_json::Value>,
    /// KL by response position and weight-space elasticity on one base and seed.
    instruments: Option<&'a instruments::InstrumentsOutcome>,
    /// The DPO variant of the rebound (absent when it did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    dpo_rebound: Option<&'a dpo_report::DpoOutcome>,
}

/// A job of the demo's graph.
enum Job {
    /// Pre-train base `.0` (index into the bases).
    Pretrain(usize),
    /// The rebound unit of base `.0` (index into the bases) and seed `.1`.
    Unit(usize, u64),
    /// The same unit aligned by DPO (the DPO variant).
    DpoUnit(usize, u64),
    /// Ablation arm `.1` on base `.0` with seed `.2`.
    Ablation(usize, usize, u64),
    Resist,
    /// The instruments beyond the paper on base `.0` with seed `.1`.
    Instruments(usize, u64),
}

impl Job {
    /// What the job is, for progress lines.
    fn describe(&self, cfg: &DemoConfig) -> String {
        let name = |i: usize| cfg.bases.get(i).map(|b| b.name()).unwrap_or_default();
        match *self {
            Job::Pretrain(i) => format!("pre-training {}", name(i)),
            Job::Unit(i, seed) => format!("rebound unit {} seed {seed}", name(i)),
            Job::DpoUnit(i, seed) => format!("DPO rebound unit {} seed {seed}", name(i)),
            Job::Ablation(i, a, seed) => format!(
                "ablation arm \"{}\" on {} seed {seed}",
                cfg.ablation.get(a).map(|a| a.name.as_str()).unwrap_or(""),
                name(i)
            ),
            Job::Resist => "resistance".into(),
            Job::Instruments(i, seed) => format!("instruments on {} seed {seed}", name(i)),
        }
    }
}

/// Progress of the job graph: a bar on a terminal; off a terminal (a log file) a plain line
/// on stderr, as `train` writes: one when a job finishes (at most one per
/// `ELASTICA_PROGRESS_SECS`, and always after the last), naming it, and while nothing
/// finishes (a long pre-training) one per interval (at least a second) naming the jobs still
/// running. Jobs differ in cost, so the eta, which assumes equal jobs, is rough.
struct JobProgress {
    bar: indicatif::ProgressBar,
    /// Off a terminal: what the lines need.
    lines: Option<std::sync::Mutex<LineState>>,
    total: usize,
    started: std::time::Instant,
    every: std::time::Duration,
}

struct LineState {
    done: usize,
    last_line: std::time::Instant,
    running: Vec<String>,
}

impl JobProgress {
    fn new(total: usize) -> Self {
        let bar = crate::util::progress::bar(total as u64, "demo");
        let now = std::time::Instant::now();
        let lines = if crate::util::progress::stderr_is_terminal() {
            None
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            Some(std::sync::Mutex::new(LineState {
                done: 0,
                last_line: now,
                running: Vec::new(),
            }))
        };
        JobProgress {
            bar,
            lines,
            total,
            started: now,
            every: crate::util::progress::interval(),
        }
    }

    /// Run `f` with the progress lines of a log going (a no-op on a terminal).
    fn around<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.lines.is_none() {
            return f();
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    self.tick();
                }
            });
            let out = f();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            out
        })
    }

    fn start(&self, what: &str) {
        if let Some(Ok(mut st)) = self.lines.as_ref().map(|l| l.lock()) {
            st.running.push(what.to_string());
        }
    }

    /// The line for `st`, after `event` ("done: <job>" or "running: <jobs>").
    fn line(&self, st: &mut LineState, event: &str) {
        st.last_line = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let eta = if st.done > 0 {
            crate::util::progress::clock(
                secs / st.done as f64 * self.total.saturating_sub(st.done) as f64,
            )
        } else {
            "?".into()
        };
        eprintln!(
            "demo: job {}/{} ({:.1}%) {event}; elapsed {} eta {eta}",
            st.done,
            self.total,
            100.0 * st.done as f64 / self.total.max(1) as f64,
            crate::util::progress::clock(secs)
        );
    }

    fn done(&self, what: &str) {
        self.bar.inc(1);
        // A poisoned lock only loses progress lines, never the run.
        let Some(Ok(mut st)) = self.lines.as_ref().map(|l| l.lock()) else {
            return;
        };
        st.done += 1;
        if let Some(i) = st.running.iter().position(|r| r == what) {
            st.running.remove(i);
        }
        if st.last_line.elapsed() >= self.every || st.done == self.total {
            self.line(&mut st, &format!("done: {what}"));
        }
    }

    fn tick(&self) {
        let Some(Ok(mut st)) = self.lines.as_ref().map(|l| l.lock()) else {
            return;
        };
        if st.last_line.elapsed() >= self.every.max(std::time::Duration::from_secs(1))
            && !st.running.is_empty()
        {
            let event = format!("running: {}", st.running.join(", "));
            self.line(&mut st, &event);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

enum Done {
    Pretrained(()),
    Unit(rebound::UnitOutcome),
    DpoUnit(rebound::UnitOutcome),
    Ablation(rebound::AblationOutcome),
    Resist(Box<(String, String, ResistResults)>),
    Instruments(instruments::InstrumentsOutcome),
}

fn world_config(cfg: &DemoConfig) -> WorldConfig {
    let max_tokens = cfg.bases.iter().map(|b| b.tokens).max().unwrap_or(0);
    WorldConfig {
        seed: cfg.seed,
        // Sequence-token budget plus slack (records are whole, so cuts land below it) plus
        // the held-out pre-training sample.
        pretrain_tokens: (max_tokens
            + max_tokens / 20
            + 1000
            + HELD_OUT_TOKENS
            + HELD_OUT_TOKENS_PER_NEGATIVE * cfg.n_minus.iter().copied().max().unwrap_or(0))
            as u64,
        positive_fraction: cfg.positive_fraction,
        n_align: cfg.positives_needed(),
        n_perturb: cfg.n_minus.iter().copied().max().unwrap_or(0).max(1),
        n_eval: cfg.eval_prompts,
        ..WorldConfig::default()
    }
}

/// Run the demo into `out` with `workers` parallel single-threaded jobs; returns the printed
/// summary. Plan (world, data, job graph) -> run (the graph) -> report. Finished stages on
/// disk (world, pre-trained models, rebound units, resistance cells) are reused, so a killed
/// demo resumes. Everything is checked and planned before `out` is touched: a refused demo
/// (bad settings, another demo's settings in `out`, another demo running there) changes
/// nothing.
pub fn run(cfg: &DemoConfig, out: &Path, workers: usize) -> Result<String> {
    let started = std::time::Instant::now();
    cfg.validate_settings()?;
    out_dir::check_settings(cfg, out)?;
    let plan = plan(cfg, out)?;
    let _lock = out_dir::claim(cfg, out)?;
    let run = commit(cfg, &plan, out)?;
    let measured = execute(cfg, &plan, out, workers)?;
    report(cfg, &plan, &run, measured, out, started)
}

/// What the demo will run, and on what: the world and the data every job draws from, the
/// exact pre-training tokens of each base, and the job graph.
struct Plan {
    world_dir: std::path::PathBuf,
    wcfg: WorldConfig,
    world: World,
    /// The world was generated by this run (not found in `world_dir`): it is to be written.
    fresh_world: bool,
    scorer: Box<dyn crate::score::Scorer>,
    prompts: Vec<String>,
    /// Index of the first pre-training record that no base saw.
    held_out_from: usize,
    probes: measures::Probes,
    /// Exact pre-training tokens per base.
    pretrain_tokens: Vec<(String, usize)>,
    jobs: Vec<Job>,
    deps: Vec<Vec<usize>>,
    /// The base that the resistance run and the ablation use.
    resist_base: usize,
    /// The DPO variant's preference pairs (empty without it).
    pairs: Vec<crate::data::prefs::PrefRecord>,
}

impl Plan {
    fn data(&self) -> DemoData<'_> {
        DemoData {
            prompts: &self.prompts,
            align: self.world.align(Task::Reviews),
            perturb: self.world.perturb(Task::Reviews),
            held_out_pretrain: &self.world.pretrain()[self.held_out_from..],
            probes: &self.probes,
            pairs: &self.pairs,
        }
    }
}

/// Reuse the world in `out` or generate it (in memory), check the settings against it, and
/// lay out the job graph. Reads `out`, writes nothing.
fn plan(cfg: &DemoConfig, out: &Path) -> Result<Plan> {
    let world_dir = out.join("world");
    let wcfg = world_config(cfg);
    let (world, fresh_world) = match World::load(&world_dir) {
        Ok(w) if *w.config() == wcfg => (w, false),
        _ => {
            eprintln!("[demo] generating the world");
            (World::generate(&wcfg)?, true)
        }
    };
    cfg.validate(&world)?;
    let tok = if fresh_world {
        scratch_tokenizer(&world)?
    } else {
        TextTokenizer::from_dir(&world_dir, &[], None)?
    };
    let scorer = crate::score::world::by_name("world-sentiment")?;
    let prompts: Vec<String> = world
        .eval_prompts(Task::Reviews)
        .iter()
        .take(cfg.eval_prompts)
        .cloned()
        .collect();
    // Exact pre-training tokens of each base (the world is tokenized once per base, not once
    // per job); a budget that holds no whole record is refused here.
    let pretrain_tokens: Vec<(String, usize)> = cfg
        .bases
        .iter()
        .map(|b| {
            let used = take_tokens(&world, &tok, b.tokens, BASE_BUDGET)
                .with_context(|| format!("base {}", b.name()))?
                .1;
            Ok((b.name(), used))
        })
        .collect::<Result<_>>()?;
    let max_tokens = cfg.bases.iter().map(|b| b.tokens).max().unwrap_or(0);
    let held_out_from = take_tokens(&world, &tok, max_tokens, BASE_BUDGET)?.0.len();
    let probes = measures::probes(&world, cfg.seed, cfg.probe_records)?;
    let (jobs, deps, resist_base) = job_graph(cfg);
    if cfg.resist_slice_records > 0 {
        sections::resist_config(cfg, &cfg.bases[resist_base].dir(out), &world_dir)?;
    }
    let pairs = match cfg.dpo {
        Some(_) => preferences::pairs(
            cfg.seed,
            cfg.positives_needed(),
            world.eval_prompts(Task::Reviews),
            world.pretrain(),
        )?,
        None => Vec::new(),
    };
    Ok(Plan {
        world_dir,
        wcfg,
        world,
        fresh_world,
        scorer,
        prompts,
        held_out_from,
        probes,
        pretrain_tokens,
        jobs,
        deps,
        resist_base,
        pairs,
    })
}

/// The world's tokenizer as its directory will give it (`TextTokenizer` reads files): its
/// two files written to a scratch directory, so a fresh world is tokenized, and the plan
/// checked, before anything goes to `--out`.
fn scratch_tokenizer(world: &World) -> Result<TextTokenizer> {
    use crate::data::world::{tokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    std::fs::write(
        dir.path().join(TOKENIZER_FILE),
        tokenizer::to_json(world.tokenizer())?,
    )?;
    std::fs::write(
        dir.path().join(TOKENIZER_CONFIG_FILE),
        serde_json::to_string_pretty(&tokenizer::config_json())?,
    )?;
    TextTokenizer::from_dir(dir.path(), &[], None)
}

/// Write the run's identity (its settings), then its world, into the claimed `out`.
fn commit(cfg: &DemoConfig, plan: &Plan, out: &Path) -> Result<RunDir> {
    let run = RunDir::create(out)?;
    run.write_json(out_dir::CONFIG_FILE, cfg)?;
    if plan.fresh_world {
        plan.world.write(&plan.world_dir)?;
    }
    std::fs::copy(plan.world_dir.join("world.json"), out.join("world.json"))
        .context("cannot copy world.json")?;
    Ok(run)
}

/// One job graph: pre-training of each base, then its rebound units, and the resistance
/// run and the ablation on the largest tiny base. A free worker takes the first ready job,
/// so costly jobs come first. Returns the jobs, their dependencies and the resistance base.
fn job_graph(cfg: &DemoConfig) -> (Vec<Job>, Vec<Vec<usize>>, usize) {
    let resist_base = cfg
        .bases
        .iter()
        .position(|b| {
            b.size == "tiny"
                && Some(b.tokens)
                    == cfg
                        .bases
                        .iter()
                        .filter(|b| b.size == "tiny")
                        .map(|b| b.tokens)
                        .max()
        })
        .unwrap_or(0);
    let cost = |i: usize| size_cost(&cfg.bases[i].size);
    let mut order: Vec<usize> = (0..cfg.bases.len()).collect();
    order.sort_by(|&a, &b| {
        (cost(b) * cfg.bases[b].tokens as f64).total_cmp(&(cost(a) * cfg.bases[a].tokens as f64))
    });
    let mut jobs: Vec<Job> = order.iter().map(|&i| Job::Pretrain(i)).collect();
    let pretrain_job = |i: usize| order.iter().position(|&o| o == i).unwrap_or(0);
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    let mut by_cost: Vec<usize> = (0..cfg.bases.len()).collect();
    by_cost.sort_by(|&a, &b| cost(b).total_cmp(&cost(a)));
    for &i in &by_cost {
        if cfg.resist_slice_records > 0 && i == resist_base {
            jobs.push(Job::Resist);
            deps.push(vec![pretrain_job(i)]);
        }
        if cfg.instruments && i == resist_base {
            if let Some(&seed) = cfg.seeds.first() {
                jobs.push(Job::Instruments(i, seed));
                deps.push(vec![pretrain_job(i)]);
            }
        }
        if i == resist_base {
            for a in 0..cfg.ablation.len() {
                for &seed in &cfg.seeds {
                    jobs.push(Job::Ablation(i, a, seed));
                    deps.push(vec![pretrain_job(i)]);
                }
            }
        }
        for &seed in &cfg.seeds {
            jobs.push(Job::Unit(i, seed));
            deps.push(vec![pretrain_job(i)]);
        }
        if cfg.dpo.is_some() {
            for &seed in &cfg.seeds {
                jobs.push(Job::DpoUnit(i, seed));
                deps.push(vec![pretrain_job(i)]);
            }
        }
    }
    (jobs, deps, resist_base)
}

/// Everything the jobs measured, in job order.
#[derive(Default)]
struct Measured {
    rows: Vec<ReboundRow>,
    /// The DPO variant's rows.
    dpo_rows: Vec<ReboundRow>,
    rates: Vec<RatePoint>,
    base_scores: Vec<BaseScore>,
    ablation_rates: Vec<RatePoint>,
    resist: Option<(String, String, ResistResults)>,
    instruments: Option<instruments::InstrumentsOutcome>,
}

/// Run the plan's job graph on `workers` workers and gather what the jobs measured.
fn execute(cfg: &DemoConfig, plan: &Plan, out: &Path, workers: usize) -> Result<Measured> {
    let data = plan.data();
    let jobs: Vec<&Job> = plan.jobs.iter().collect();
    let progress = JobProgress::new(jobs.len());
    let done = progress.around(|| {
        run_graph(jobs, plan.deps.clone(), workers, |job, _| {
            let what = job.describe(cfg);
            progress.start(&what);
            let r = run_job(cfg, plan, &data, job, out)?;
            progress.done(&what);
            Ok(r)
        })
    })?;
    progress.finish();
    let mut m = Measured::default();
    for d in done {
        match d {
            Done::Unit(u) => {
                if let Some(r) = u.rows.first() {
                    m.base_scores.push(BaseScore {
                        base: r.base.clone(),
                        seed: r.seed,
                        score: u.base_score,
                        margin: u.base_exact.margin,
                        first_word: u.base_exact.first_word,
                    });
                }
                m.rows.extend(u.rows);
                m.rates.extend(u.rates);
            }
            Done::DpoUnit(u) => m.dpo_rows.extend(u.rows),
            Done::Ablation(u) => m.ablation_rates.extend(u.rates),
            Done::Resist(r) => m.resist = Some(*r),
            Done::Instruments(o) => m.instruments = Some(o),
            Done::Pretrained(()) => {}
        }
    }
    Ok(m)
}

/// One job of the graph.
fn run_job(cfg: &DemoConfig, plan: &Plan, data: &DemoData, job: &Job, out: &Path) -> Result<Done> {
    let unit = |i: usize, seed: u64| UnitInputs {
        cfg,
        base: &cfg.bases[i],
        pretrain_tokens: plan.pretrain_tokens[i].1,
        seed,
        data,
        out,
    };
    Ok(match *job {
        Job::Pretrain(i) => Done::Pretrained(pretrain_base(
            cfg,
            &cfg.bases[i],
            &plan.wcfg,
            &plan.world_dir,
            out,
        )?),
        Job::Unit(i, seed) | Job::DpoUnit(i, seed) => {
            let how = match (job, &cfg.dpo) {
                (Job::DpoUnit(..), Some(v)) => Alignment::Dpo(v),
                _ => Alignment::Sft,
            };
            let u = run_unit(&unit(i, seed), plan.scorer.as_ref(), how)
                .with_context(|| job.describe(cfg))?;
            match how {
                Alignment::Sft => Done::Unit(u),
                Alignment::Dpo(_) => Done::DpoUnit(u),
            }
        }
        Job::Ablation(i, a, seed) => {
            let arm = &cfg.ablation[a];
            let u = rebound::run_ablation_unit(&unit(i, seed), arm, a)
                .with_context(|| format!("ablation arm {:?} seed {seed}", arm.name))?;
            Done::Ablation(u)
        }
        Job::Instruments(i, seed) => Done::Instruments(
            instruments::run_instruments(&unit(i, seed))
                .with_context(|| format!("instruments on {} seed {seed}", cfg.bases[i].name()))?,
        ),
        Job::Resist => Done::Resist(Box::new(sections::resistance(
            cfg,
            &cfg.bases[plan.resist_base].dir(out),
            &cfg.bases[plan.resist_base].name(),
            &plan.world_dir,
            &out.join("resist"),
        )?)),
    })
}

/// Write the measured rows, the report and `results.json`; returns the printed summary.
fn report(
    cfg: &DemoConfig,
    plan: &Plan,
    run: &RunDir,
    m: Measured,
    out: &Path,
    started: std::time::Instant,
) -> Result<String> {
    run.write_jsonl("results.jsonl", &m.rows)?;
    run.write_jsonl("rates.jsonl", &m.rates)?;
    run.write_table_csv("rates.csv", &rates_table(&m.rates)?)?;

    let mut md = String::from("# elastica demo: alignment elasticity in a synthetic world\n\n");
    md.push_str(&format!(
        "Everything below was computed from scratch by `elastica demo` (world seed {}): a synthetic review/dialogue world, Llama-family models pre-trained on it with exact token budgets, and the paper's experiments on them.\n\n",
        cfg.seed
    ));
    md.push_str(&settings_section(cfg, &plan.pretrain_tokens));
    let (rebound_md, mut claims, rebound_analysis) =
        rebound_report::section(cfg, run, &m.rows, &m.base_scores)?;
    md.push_str(&rebound_md);
    let dpo = if cfg.dpo.is_some() {
        run.write_jsonl("results_dpo.jsonl", &m.dpo_rows)?;
        let (dpo_md, dpo_claims, dpo) = dpo_report::section(
            cfg,
            m.dpo_rows,
            &m.rows,
            &rebound_analysis.strengths,
            &m.base_scores,
        )?;
        md.push_str(&dpo_md);
        claims.extend(dpo_claims);
        Some(dpo)
    } else {
        None
    };

    let el = elasticity::analyse(&m.rates, cfg.slope_l_max);
    run.write_table_csv("elasticity.csv", &el.table()?)?;
    md.push_str(&el.section(run, &m.rates, !m.ablation_rates.is_empty())?);
    claims.extend(el.claims());
    let ablation = if m.ablation_rates.is_empty() {
        None
    } else {
        run.write_jsonl("ablation_rates.jsonl", &m.ablation_rates)?;
        let ab = elasticity::analyse(&m.ablation_rates, cfg.slope_l_max);
        run.write_table_csv("ablation.csv", &ab.table()?)?;
        md.push_str(&ab.ablation_section(cfg)?);
        claims.extend(ab.ablation_claims());
        Some(ab)
    };
    let resistance = match m.resist {
        Some((res_md, res_claim, res)) => {
            md.push_str(&res_md);
            claims.push(res_claim);
            Some(res)
        }
        None => None,
    };
    if let Some(ins) = &m.instruments {
        md.push_str(&ins.section(run)?);
    }
    let theory = if cfg.theory {
        let (th_md, th_claims, th) = sections::theory(&out.join("theory"))?;
        md.push_str(&th_md);
        claims.extend(th_claims);
        Some(th)
    } else {
        None
    };

    md.push_str("## Summary of the paper's claims, as measured here\n\n");
    for c in &claims {
        md.push_str(c);
        md.push('\n');
    }
    // The library changes the last bits of every product: results repeat bit for bit on a
    // rerun with the same one, not across libraries.
    md.push_str(&format!(
        "\nTotal time {:.0} s. Matrix products: {}.\n",
        started.elapsed().as_secs_f64(),
        crate::model::fused::blas::status()
    ));
    run.write_text("report.md", &md)?;
    run.write_json(
        "results.json",
        &DemoResults {
            config: cfg,
            base_scores: &m.base_scores,
            pretrain_tokens: &plan.pretrain_tokens,
            rebound: &m.rows,
            rates: &m.rates,
            elasticity: &el,
            rebound_analysis: &rebound_analysis,
            ablation_rates: &m.ablation_rates,
            ablation: ablation.as_ref(),
            resistance: resistance.as_ref(),
            theory,
            instruments: m.instruments.as_ref(),
            dpo_rebound: dpo.as_ref(),
        },
    )?;
    let mut summary = String::from("elastica demo summary\n");
    for c in &claims {
        summary.push_str(c);
        summary.push('\n');
    }
    summary.push_str(&format!(
        "report: {} ({:.0} s)\n",
        run.path("report.md").display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(summary)
}

/// Every setting the run used, so a reader can repeat or question it.
fn settings_section(cfg: &DemoConfig, pretrain_tokens: &[(String, usize)]) -> String {
    let mut md = String::from(
        "## Settings

",
    );
    md.push_str(&format!(
        "- bases (size, requested / exact pre-training sequence tokens): {}
",
        cfg.bases
            .iter()
            .zip(pretrain_tokens)
            .map(|(b, (_, t))| format!("{} ({}, {} / {t})", b.name(), b.size, b.tokens))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str(&format!(
        "- pre-training: lr {}, batch {} records, world positive share {}
",
        cfg.pretrain_lr, cfg.pretrain_batch_size, cfg.positive_fraction
    ));
    md.push_str(&format!(
        "- rebound: n+ {:?}, n- {:?}, seeds {:?}; alignment and perturbation SFT lr {} (constant), batch {}, 1 epoch, no shuffling
",
        cfg.n_plus, cfg.n_minus, cfg.seeds, cfg.align_lr, cfg.batch_size
    ));
    md.push_str(&format!(
        "- sampled score: {} held-out openings, {} new tokens, temperature {}; exact measures on {} held-out reviews of each sentiment
",
        cfg.eval_prompts, cfg.max_new_tokens, cfg.temperature, cfg.probe_records
    ));
    md.push_str(&format!(
        "- rebound strength measured on `{}`; drop rate fitted on the first {} points of the n- grid
",
        cfg.rebound_measure, cfg.drop_fit_points
    ));
    md.push_str(&format!(
        "- compression: {} records per tracked set, slopes over l <= {}, rates also after each of the first {} perturbation step(s)
",
        cfg.rate_records, cfg.slope_l_max, cfg.rate_first_steps
    ));
    if let Some(d) = &cfg.dpo {
        md.push_str(&format!(
            "- DPO variant: alignment by {} ({}, lr {} constant, batch {} pairs, 1 epoch) on n+ preference pairs, perturbation as above\n",
            d.loss.method_name(), d.describe_loss().replace('β', "beta").replace('γ', "gamma"), d.lr, cfg.batch_size
        ));
    }
    for a in &cfg.ablation {
        md.push_str(&format!(
            "- ablation arm \"{}\": perturbation lr {}, D_t = {}\n",
            a.name,
            a.lr,
            if a.perturb == "pretrain" {
                "held-out pre-training text"
            } else {
                "negative reviews"
            }
        ));
    }
    md.push_str(&format!(
        "- resistance: {} records per slice, {} prompts, seeds {:?}; theory: {}; instruments beyond the paper: {}\n\n",
        cfg.resist_slice_records, cfg.resist_prompts, cfg.resist_seeds, cfg.theory, cfg.instruments
    ));
    md
}

/// Relative compute per token of a size preset (the demo's scheduling order only).
fn size_cost(size: &str) -> f64 {
    match size {
        "tiny" => 1.0,
        "small" => 4.0,
        _ => 16.0,
    }
}

/// Pre-train one base into `out/models/<name>` unless it is already there with these settings.
fn pretrain_base(
    cfg: &DemoConfig,
    base: &BaseSpec,
    wcfg: &WorldConfig,
    world_dir: &Path,
    out: &Path,
) -> Result<()> {
    let base_dir = base.dir(out);
    let pc = PretrainConfig {
        size: base.size.clone(),
        tokens: base.tokens,
        seed: cfg.seed,
        lr: cfg.pretrain_lr,
        batch_size: cfg.pretrain_batch_size,
    };
    // A base is reused only if it was pre-trained with these settings on this world.
    let stamp = serde_json::to_string(&(&pc, wcfg))?;
    let stamp_path = base_dir.join("demo_pretrain.json");
    let same = std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str());
    if same && base_dir.join("model.safetensors").exists() {
        return Ok(());
    }
    // Checkpoints of other settings must not be resumed from; those of a killed run with the
    // same settings are (the stamp is written before training starts).
    if !same && base_dir.exists() {
        std::fs::remove_dir_all(&base_dir)
            .with_context(|| format!("cannot clear {}", base_dir.display()))?;
    }
    crate::util::fsx::atomic_write(&stamp_path, stamp.as_bytes())?;
    pretrain(world_dir, &pc, &base_dir, false)
        .with_context(|| format!("pre-training {}", base.name()))?;
    Ok(())
}

fn rates_table(rates: &[RatePoint]) -> Result<Table> {
    Table::from_rows_fixed(rates, &[("l", 5), ("k", 3), ("bits_per_token", 5)])
}
