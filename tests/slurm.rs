//! The Slurm executor against a real Slurm: a one-node cluster (munged, slurmctld, slurmd)
//! started from a temporary directory, a 2 x 2 rebound grid on the tiny-llama fixture run
//! with `--executor slurm`, one array task cancelled midway with `scancel`, `resubmit`, and
//! `collect`; results.csv must equal the local executor's for the same grid and seed. A task
//! requeued midway (`scontrol requeue`) must resume from its checkpoint. Then a
//! scaling study submitted with `--no-wait` (followed with `status`, reported by `collect`)
//! and a resist grid (four chained waves) whose pair losses must equal the local ones.
//!
//! It runs only with `ELASTICA_SLURM_TEST=1` (`.ci/run` sets it after installing Debian's
//! `slurm-wlm` and `munge`); without it the test prints why it skipped. With it, a Slurm
//! that cannot start fails the test with the reason. Needs root (slurmd runs the jobs).
//! Accounting is off (`accounting_storage/none`), so the executor's `squeue` path is the one
//! exercised. Every daemon is stopped by its pid when the test ends, also on a panic.

mod common;

use common::{cell_result, tiny_llama, write_refusal_data};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GATE: &str = "ELASTICA_SLURM_TEST";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_elastica")
}

/// A program from PATH or the sbin directories (daemons live in /usr/sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain([
            "/usr/sbin",
            "/sbin",
            "/usr/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
        ])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A one-node Slurm cluster; dropping it cancels its jobs and stops the daemons by pid.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// (name, process), in start order.
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .map_err(|e| e.to_string())?;
        if uid != 0 {
            return Err(format!(
                "the Slurm test must run as root (slurmd starts the jobs), but uid is {uid}"
            ));
        }
        let mut progs = Vec::new();
        for p in [
            "munged",
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
            "scancel",
            "sinfo",
        ] {
            progs.push(find_program(p).ok_or_else(|| {
                format!(
                    "{p} is not installed; install Slurm and munge with `apt-get install \
                     slurm-wlm munge` (.ci/run does this)"
                )
            })?);
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let s = dir.path();
        for d in ["state", "spool", "log", "munge"] {
            std::fs::create_dir_all(s.join(d)).map_err(|e| e.to_string())?;
        }
        // munged refuses keys that others can read.
        let key = s.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| e.to_string())?;
        std::fs::write(&key, &bytes).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| e.to_string())?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| e.to_string())?
            .trim()
            .split('.')
            .next()
            .unwrap_or("localhost")
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // slurmd drains a node that has less memory than configured.
        let mem_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(1000, |kb| (kb / 1024 * 8 / 10).clamp(100, 4000));
        let port = |_: ()| {
            std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| e.to_string())
        };
        let (ctld_port, d_port) = (port(())?, port(())?);
        let sp = s.display();
        let conf = format!(
            "ClusterName=elastica-test\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={sp}/munge/munge.socket\n\
             CredType=cred/munge\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             StateSaveLocation={sp}/state\n\
             SlurmdSpoolDir={sp}/spool\n\
             SlurmctldPidFile={sp}/slurmctld.pid\n\
             SlurmdPidFile={sp}/slurmd.pid\n\
             SlurmctldLogFile={sp}/log/slurmctld.log\n\
             SlurmdLogFile={sp}/log/slurmd.log\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={d_port}\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/filetxt\n\
             JobCompLoc={sp}/log/jobcomp.txt\n\
             SchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             ReturnToService=2\n\
             MpiDefault=none\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        );
        let conf_path = s.join("slurm.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut cluster = Cluster {
            conf: conf_path.clone(),
            dir,
            daemons: Vec::new(),
        };
        let s = cluster.dir.path().to_path_buf();
        let spawn = |name: &'static str, prog: &Path, args: Vec<String>| -> Result<Child, String> {
            let out = std::fs::File::create(s.join(format!("log/{name}.stdout")))
                .map_err(|e| e.to_string())?;
            Command::new(prog)
                .args(args)
                .env("SLURM_CONF", &conf_path)
                .stdin(Stdio::null())
                .stdout(out.try_clone().map_err(|e| e.to_string())?)
                .stderr(out)
                .spawn()
                .map_err(|e| format!("cannot start {name}: {e}"))
        };
        let m = s.join("munge");
        let munged = spawn(
            "munged",
            &progs[0],
            vec![
                "-F".into(),
                "--force".into(),
                format!("--key-file={}", key.display()),
                format!("--socket={}", m.join("munge.socket").display()),
                format!("--pid-file={}", m.join("munged.pid").display()),
                format!("--log-file={}", m.join("munged.log").display()),
                format!("--seed-file={}", m.join("seed").display()),
            ],
        )?;
        cluster.daemons.push(("munged", munged));
        cluster.wait_for(
            || m.join("munge.socket").exists(),
            10,
            "munged did not create its socket",
        )?;
        let conf_arg = || {
            vec![
                "-D".to_string(),
                "-f".into(),
                cluster.conf.display().to_string(),
            ]
        };
        let ctld = spawn("slurmctld", &progs[1], conf_arg())?;
        cluster.daemons.push(("slurmctld", ctld));
        let slurmd = spawn("slurmd", &progs[2], conf_arg())?;
        cluster.daemons.push(("slurmd", slurmd));
        let sinfo = progs[6].clone();
        let conf = cluster.conf.clone();
        cluster.wait_for(
            || {
                Command::new(&sinfo)
                    .args(["-h", "-o", "%T"])
                    .env("SLURM_CONF", &conf)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
                    .unwrap_or(false)
            },
            60,
            "the node did not become idle in sinfo",
        )?;
        Ok(cluster)
    }

    /// Poll `ok` for up to `secs` seconds; the error carries the daemons' logs.
    fn wait_for(
        &mut self,
        mut ok: impl FnMut() -> bool,
        secs: u64,
        what: &str,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if ok() {
                return Ok(());
            }
            let mut exited = None;
            for (name, child) in &mut self.daemons {
                if let Ok(Some(st)) = child.try_wait() {
                    exited = Some(format!("{name} exited ({st}) during start-up"));
                }
            }
            if let Some(e) = exited {
                return Err(format!("{e}\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("{what} within {secs} s\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        let s = self.dir.path();
        let mut out = String::new();
        for f in [
            "munge/munged.log",
            "log/munged.stdout",
            "log/slurmctld.log",
            "log/slurmctld.stdout",
            "log/slurmd.log",
            "log/slurmd.stdout",
        ] {
            out += &format!("--- {f}:\n{}\n", tail(&s.join(f), 15));
        }
        out
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(find_program(prog).unwrap_or_else(|| prog.into()));
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (only this cluster's: SLURM_CONF points at its controller), then the
        // daemons in reverse start order: slurmd, slurmctld, munged.
        if self.daemons.len() == 3 {
            let _ = self.command("scancel").args(["-u", "root"]).output();
            std::thread::sleep(Duration::from_millis(500));
        }
        while let Some((_, mut child)) = self.daemons.pop() {
            // SIGTERM lets each daemon shut down cleanly; without a `kill` program, SIGKILL.
            let term = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !term {
                let _ = child.kill();
            }
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if t0.elapsed() > Duration::from_secs(10) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}

/// The 2 x 2 grid (n+ in {4, 8}, n- in {0, 4}, one seed) with a fast-polling [slurm], and
/// perturb cells with a time limit of their own (`[executor.resources.perturb]`, kept when
/// `--executor slurm` switches the local executor to Slurm).
fn config(dir: &Path) -> PathBuf {
    config_with_model(dir, &tiny_llama())
}

fn config_with_model(dir: &Path, model: &str) -> PathBuf {
    let top = format!(
        "model = \"{model}\"\nn_positive = [4, 8]\nn_negative = [0, 4]\nseeds = [1]\nkl_epsilon = 0.05"
    );
    let tables = r#"[slurm]
cpus_per_task = 1
poll_seconds = 0.5
time = "10"
[executor]
kind = "local"
jobs = 1
[executor.resources.perturb]
time = "9""#;
    common::refusal_rebound_config(dir, &top, "save_every = 2", tables)
}

fn run(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env("SLURM_CONF", &cluster.conf)
        .env_remove("ELASTICA_INJECT_FAULT")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn grids_on_a_real_slurm_cancel_resubmit_no_wait_collect() {
    if std::env::var(GATE).map_or(true, |v| v.is_empty() || v == "0") {
        eprintln!(
            "skipped: set {GATE}=1 to run the Slurm integration test (needs root and Debian's \
             slurm-wlm and munge; .ci/run installs them and sets it)"
        );
        return;
    }
    let t_start = Instant::now();
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(e) => panic!("{GATE} is set but Slurm could not start: {e}"),
    };
    eprintln!("slurm up in {:.1} s", t_start.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path());
    let c = cfg.to_str().unwrap();

    // The local executor's results for the same grid and seed.
    let local = tmp.path().join("local");
    let r = run(
        &cluster,
        &[
            "rebound",
            "--config",
            c,
            "--out",
            local.to_str().unwrap(),
            "--threads",
            "1",
        ],
    );
    assert!(r.status.success(), "{}", text(&r));

    // The Slurm run: align.p8.s1 (manifest index 4) hangs after optimizer step 3 (its step-2
    // checkpoint is on disk), and is cancelled there with scancel on its array index.
    let out = tmp.path().join("slurm");
    let o = out.to_str().unwrap();
    let mut child = Command::new(bin())
        .args([
            "rebound",
            "--config",
            c,
            "--out",
            o,
            "--executor",
            "slurm",
            "--threads",
            "1",
        ])
        .env("RAYON_NUM_THREADS", "1")
        .env("SLURM_CONF", &cluster.conf)
        .env(
            "ELASTICA_INJECT_FAULT",
            "align.p8.s1@train-step-3:sleep=600",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = out.join("cells/align.p8.s1/model/train_log.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        if t0.elapsed() > Duration::from_secs(90) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "align.p8.s1 never reached step 3 on Slurm\n{}\n{}\ntask log:\n{}",
                text(&o),
                cluster.logs(),
                tail(&out.join("logs/cell-4.out"), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let jobs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("slurm/jobs.json")).unwrap())
            .unwrap();
    let subs = jobs["submissions"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "two waves: {jobs}");
    assert_eq!(subs[0]["indices"], serde_json::json!([0, 1, 4]));
    assert_eq!(subs[1]["indices"], serde_json::json!([2, 3, 5, 6]));
    assert_eq!(subs[1]["after"], subs[0]["job_id"]);
    let job0 = subs[0]["job_id"].as_str().unwrap().to_string();
    // The perturb cells ([executor.resources.perturb] time = "9") have their own script,
    // and Slurm got their time limit; the others keep [slurm] time = "10".
    let perturb = std::fs::read_to_string(out.join("slurm/cells-perturb.sbatch")).unwrap();
    assert!(perturb.contains("#SBATCH --time=9\n"), "{perturb}");
    let common = std::fs::read_to_string(out.join("slurm/cells.sbatch")).unwrap();
    assert!(common.contains("#SBATCH --time=10\n"), "{common}");
    let q = cluster
        .command("squeue")
        .args(["-h", "-j", subs[1]["job_id"].as_str().unwrap(), "-o", "%l"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&q.stdout).contains("9:00"),
        "{}",
        text(&q)
    );
    let r = cluster
        .command("scancel")
        .arg(format!("{job0}_4"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));

    // The waiting command ends once every task has ended, naming the cancelled cell and its
    // log; the cells behind it are skipped, every other cell finished.
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("the waiting rebound command did not return after the scancel");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = child.wait_with_output().unwrap();
    let err = text(&first);
    assert!(!first.status.success(), "{err}");
    assert!(err.contains("1 failed, 2 skipped"), "{err}");
    assert!(
        err.contains("align.p8.s1") && err.contains("logs/cell-4.out") && err.contains("CANCELLED"),
        "{err}"
    );
    assert!(err.contains("elastica resubmit"), "{err}");
    // status lists the failure and, for scripts, exits 1.
    let r = run(&cluster, &["status", o]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    let table = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        table.contains(&format!(
            "| 4 | align.p8.s1 | rebound.align | failed | 1 | {job0}_4 |"
        )),
        "{table}"
    );
    assert!(
        table.contains("| 6 | perturb.p8.n4.s1 | rebound.perturb | skipped |"),
        "{table}"
    );
    assert!(table.contains("done 4, failed 1, skipped 2"), "{table}");

    let done = [
        "base.s1",
        "align.p4.s1",
        "perturb.p4.n0.s1",
        "perturb.p4.n4.s1",
    ];
    let before: Vec<_> = done
        .iter()
        .map(|id| mtime(&out.join("cells").join(id).join("result.json")))
        .collect();

    // A task submitted for another manifest refuses to run.
    let r = run(
        &cluster,
        &[
            "cell",
            "run",
            "--manifest",
            out.join("manifest.json").to_str().unwrap(),
            "--index",
            "0",
            "--manifest-hash",
            "0000",
        ],
    );
    assert!(
        !r.status.success() && text(&r).contains("re-planned"),
        "{}",
        text(&r)
    );

    // resubmit submits only the three missing cells, in two waves, and waits for them.
    let r = run(&cluster, &["resubmit", o]);
    assert!(r.status.success(), "{}\n{}", text(&r), cluster.logs());
    let err = text(&r);
    assert!(
        err.contains("submitting 3 of 7 cells (4 already done)"),
        "{err}"
    );
    assert!(
        err.contains("4 already done, 3 finished now, 0 failed"),
        "{err}"
    );
    for (id, t) in done.iter().zip(&before) {
        assert_eq!(
            *t,
            mtime(&out.join("cells").join(id).join("result.json")),
            "{id} was redone"
        );
        assert_eq!(cell_result(&out, id)["attempts"], 1, "{id}");
    }
    // The cancelled cell resumed from its own checkpoint.
    let a8 = cell_result(&out, "align.p8.s1");
    assert_eq!(a8["attempts"], 2);
    assert_eq!(a8["output"]["train"]["resumed_from"], 2);

    // collect merges the per-cell results into the report: the same numbers as local.
    let r = run(&cluster, &["collect", o]);
    assert!(r.status.success(), "{}", text(&r));
    let want = std::fs::read_to_string(local.join("results.csv")).unwrap();
    let got = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(got, want, "Slurm and local results differ");
    assert_eq!(want.lines().count(), 6);
    assert!(out.join("report.md").exists());
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["executor"], "slurm");
    eprintln!(
        "rebound phase done at {:.1} s",
        t_start.elapsed().as_secs_f64()
    );

    // Requeue (what preemption or a node failure does): align.p8.s1 hangs a few seconds
    // after step 3 and is requeued there; Slurm runs the task again, it resumes from its
    // step-2 checkpoint, and the waiting command ends with every cell done and the same
    // results as the local executor.
    let rq = tmp.path().join("requeue");
    let mut child = Command::new(bin())
        .args(["rebound", "--config", c, "--out", rq.to_str().unwrap()])
        .args(["--executor", "slurm", "--threads", "1"])
        .env("RAYON_NUM_THREADS", "1")
        .env("SLURM_CONF", &cluster.conf)
        .env("ELASTICA_INJECT_FAULT", "align.p8.s1@train-step-3:sleep=8")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = rq.join("cells/align.p8.s1/model/train_log.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(90) && child.try_wait().unwrap().is_none(),
            "align.p8.s1 never reached step 3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let jobs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rq.join("slurm/jobs.json")).unwrap())
            .unwrap();
    let job = jobs["submissions"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cluster
        .command("scontrol")
        .args(["requeue", &format!("{job}_4")])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r));
    // Slurm holds a requeued job for a while (reason BeginTime) once it has left the node;
    // make it eligible now instead of waiting.
    let t0 = Instant::now();
    let mut held = false;
    loop {
        let q = cluster
            .command("squeue")
            .args(["-h", "-r", "-j", &job, "-o", "%K|%T|%r"])
            .output()
            .unwrap();
        let q = String::from_utf8_lossy(&q.stdout).into_owned();
        let task = q
            .lines()
            .find(|l| l.starts_with("4|"))
            .unwrap_or("")
            .to_string();
        held |= task.contains("PENDING");
        if task.contains("BeginTime") {
            let r = cluster
                .command("scontrol")
                .args(["update", &format!("JobId={job}_4"), "StartTime=now"])
                .output()
                .unwrap();
            assert!(r.status.success(), "{}", text(&r));
        } else if held && task.contains("RUNNING") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the requeued task did not start again: {q}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(90) {
            let q = cluster.command("squeue").args(["-r"]).output().unwrap();
            let _ = child.kill();
            panic!("the requeued grid did not finish\n{}", text(&q));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        tail(&rq.join("logs/cell-4.out"), 30)
    );
    let a8 = cell_result(&rq, "align.p8.s1");
    assert_eq!(a8["attempts"], 2, "{a8}");
    assert_eq!(a8["output"]["train"]["resumed_from"], 2);
    let task_log = std::fs::read_to_string(rq.join("logs/cell-4.out")).unwrap();
    assert!(task_log.contains("restart 1"), "{task_log}");
    assert_eq!(
        std::fs::read_to_string(rq.join("results.csv")).unwrap(),
        want,
        "a requeued run differs from the local one"
    );
    eprintln!(
        "requeue phase done at {:.1} s",
        t_start.elapsed().as_secs_f64()
    );

    // scaling with --no-wait: the command returns at once; `status` follows the cells and
    // `collect` writes the scaling report.
    let scfg = tmp.path().join("scaling.toml");
    let model = format!(
        "{}/tests/fixtures/models/tiny-llama",
        env!("CARGO_MANIFEST_DIR")
    );
    let head = format!(
        "x_label = \"parameters\"\n\
         models = [{{name = \"small\", path = \"{model}\", x = 1e5}}, \
         {{name = \"large\", path = \"{model}\", x = 1e6}}]\nn_positive = [8]\n"
    );
    // A config left with `jobs = 1` under kind = "slurm" loads (with a warning), as does
    // --threads 2 with cpus_per_task = 1 (the cells use their task's CPUs: said so).
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("model = \"{model}\"\n"), &head)
        .replace("n_positive = [4, 8]\n", "")
        .replace("kind = \"local\"\n", "kind = \"slurm\"\n");
    std::fs::write(&scfg, body).unwrap();
    let sout = tmp.path().join("scaling");
    let so = sout.to_str().unwrap();
    // large.align.p8.s1 (index 5) hangs at its start, so that the run can be cancelled with
    // one task running and the perturb wave pending.
    let r = Command::new(bin())
        .args(["scaling", "--config", scfg.to_str().unwrap(), "--out", so])
        .args(["--no-wait", "--threads", "2"])
        .env("RAYON_NUM_THREADS", "1")
        .env("SLURM_CONF", &cluster.conf)
        .env("ELASTICA_INJECT_FAULT", "large.align.p8.s1@start:sleep=600")
        .output()
        .unwrap();
    let t = text(&r);
    assert!(r.status.success(), "{t}");
    assert!(t.contains("elastica collect"), "{t}");
    assert!(t.contains("jobs = 1 is ignored"), "{t}");
    assert!(t.contains("does not apply to Slurm cells"), "{t}");
    assert!(!sout.join("report.md").exists(), "--no-wait wrote a report");
    let t0 = Instant::now();
    loop {
        let r = run(&cluster, &["status", so]);
        assert!(r.status.success(), "{}", text(&r));
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        if out.contains("pending 4, running 1, done 3, failed 0") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the scaling grid did not reach its hanging cell: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // cancel: the running and the pending cells are cancelled; status says so (exit 1).
    let r = run(&cluster, &["cancel", so]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("cancelled jobs"), "{}", text(&r));
    let t0 = Instant::now();
    loop {
        let r = run(&cluster, &["status", so]);
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        if out.contains("done 3, failed 0, cancelled 5") {
            assert_eq!(r.status.code(), Some(1), "{}", text(&r));
            assert!(
                out.contains("| 5 | large.align.p8.s1 | rebound.align | cancelled |"),
                "{out}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the cancelled cells are not listed as cancelled: {}",
            text(&r)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = run(&cluster, &["cancel", so]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("nothing to cancel"), "{}", text(&r));
    // A waiting resubmit runs the cancelled cells and writes the report itself.
    let r = run(&cluster, &["resubmit", so]);
    assert!(r.status.success(), "{}\n{}", text(&r), cluster.logs());
    assert!(
        text(&r).contains("submitting 5 of 8 cells (3 already done)"),
        "{}",
        text(&r)
    );
    assert!(sout.join("report.md").exists(), "resubmit wrote no report");
    let scsv = std::fs::read_to_string(sout.join("scaling.csv")).unwrap();
    assert_eq!(scsv.lines().count(), 3, "{scsv}");
    let report = std::fs::read_to_string(sout.join("report.md")).unwrap();
    assert!(report.contains("Scaling: rebound strength vs parameters"));
    eprintln!(
        "scaling phase done at {:.1} s",
        t_start.elapsed().as_secs_f64()
    );

    // resist: a chain of dependent waves (theta1 -> theta2, generations, pairs) on Slurm
    // gives the same pair losses as the local executor.
    let data = tmp.path().join("resist.jsonl");
    let words = [
        "the cat sat",
        "a dog ran",
        "birds fly",
        "fish swim",
        "rain falls",
    ];
    common::write_jsonl(
        &data,
        (0..12).map(|i| {
            serde_json::json!({
                "prompt": format!("about {}", words[i % 5]),
                "response": format!("{} and {}", words[(i * 3 + 1) % 5], words[(i * 2) % 5]),
            })
        }),
    );
    let rcfg = tmp.path().join("resist.toml");
    std::fs::write(
        &rcfg,
        format!(
            "model = {model:?}\nslices = 2\neval_prompts = 4\nseeds = [3]\n\
             [data]\npath = {:?}\nschema = \"jsonl\"\n[generate]\nmax_new_tokens = 6\n\
             [train]\nlr = 1e-3\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\n\
             template = \"raw\"\nsave_every = 1\n[slurm]\npoll_seconds = 0.5\n",
            data.display()
        ),
    )
    .unwrap();
    let mut csv = Vec::new();
    for (name, executor) in [("resist-local", "local"), ("resist-slurm", "slurm")] {
        let dir = tmp.path().join(name);
        let r = run(
            &cluster,
            &[
                "resist",
                "--config",
                rcfg.to_str().unwrap(),
                "--out",
                dir.to_str().unwrap(),
                "--threads",
                "1",
                "--executor",
                executor,
            ],
        );
        assert!(r.status.success(), "{executor}: {}", text(&r));
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap())
                .unwrap();
        assert_eq!(st["executor"], executor);
        assert_eq!(st["failed"], serde_json::json!([]));
        csv.push(std::fs::read_to_string(dir.join("pairs.csv")).unwrap());
    }
    assert_eq!(
        csv[0], csv[1],
        "resist pair losses differ between local and Slurm"
    );
    eprintln!("slurm test took {:.1} s", t_start.elapsed().as_secs_f64());
}

/// Run elastica with PATH set to `path` (an empty directory: no squeue, no scancel).
fn run_with_path(args: &[&str], path: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .env("PATH", path)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("ELASTICA_INJECT_FAULT")
        .output()
        .unwrap()
}

/// What a researcher sees when the cluster's tools or inputs are missing, without a Slurm:
/// a cell whose model is not mounted on the node writes error.txt and `status` shows that
/// error (exit 1); without squeue the submitted cells are "unknown", not failed (exit 3);
/// `cancel` says when there is nothing to cancel and when scancel is missing.
#[test]
fn status_and_cancel_without_slurm_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let no_tools = tmp.path().join("empty-path");
    std::fs::create_dir_all(&no_tools).unwrap();
    // The base model on "shared storage" that the compute node will not see.
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(tiny_llama()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    write_refusal_data(tmp.path(), 12);
    let cfg = config_with_model(tmp.path(), model.to_str().unwrap());
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let r = run_with_path(
        &[
            "rebound",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            o,
            "--plan-only",
        ],
        &no_tools,
    );
    assert!(r.status.success(), "{}", text(&r));

    // Never submitted: nothing to cancel, said clearly.
    let r = run_with_path(&["cancel", o], &no_tools);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("nothing to cancel") && text(&r).contains("never submitted"),
        "{}",
        text(&r)
    );

    // As if submitted as job 999: every cell recorded, none ran yet.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let n = manifest["cells"].as_array().unwrap().len();
    std::fs::create_dir_all(out.join("slurm")).unwrap();
    std::fs::write(
        out.join("slurm/jobs.json"),
        serde_json::json!({"submissions": [{
            "job_id": "999", "indices": (0..n).collect::<Vec<_>>(), "array": format!("0-{}", n - 1),
            "manifest_hash": manifest["hash"], "submitted_unix": 0}]})
        .to_string(),
    )
    .unwrap();

    // Without squeue the state of submitted cells is unknown, not failed: exit status 3.
    let r = run_with_path(&["status", o], &no_tools);
    let t = text(&r);
    assert_eq!(r.status.code(), Some(3), "{t}");
    assert!(t.contains(&format!("state unknown {n}")), "{t}");
    assert!(
        !t.contains("failed 1") && !t.contains("elastica resubmit"),
        "{t}"
    );
    assert!(
        t.contains("| 0 | base.s1 | rebound.base | unknown | 0 | 999_0 |"),
        "{t}"
    );

    // The model is not mounted on the compute node: the task fails in its input check, and
    // that error lands in error.txt (with the attempt counted), where status shows it.
    std::fs::rename(&model, tmp.path().join("model-elsewhere")).unwrap();
    let m = out.join("manifest.json");
    let r = run_with_path(
        &[
            "cell",
            "run",
            "--manifest",
            m.to_str().unwrap(),
            "--index",
            "0",
        ],
        &no_tools,
    );
    assert!(!r.status.success(), "{}", text(&r));
    let err = std::fs::read_to_string(out.join("cells/base.s1/error.txt")).unwrap();
    assert!(
        err.contains("does not exist") && err.contains(model.to_str().unwrap()),
        "{err}"
    );
    let r = run_with_path(&["status", o], &no_tools);
    let t = text(&r);
    assert_eq!(r.status.code(), Some(1), "{t}");
    assert!(
        t.contains("| 0 | base.s1 | rebound.base | failed | 1 | 999_0 |")
            && t.contains("does not exist"),
        "{t}"
    );
    assert!(t.contains("did not finish"), "{t}");

    // No scancel on PATH (nor squeue): a clear message with the command to run by hand.
    let r = run_with_path(&["cancel", o], &no_tools);
    let t = text(&r);
    assert!(!r.status.success(), "{t}");
    assert!(
        t.contains("scancel is not on PATH") && t.contains("scancel 999"),
        "{t}"
    );
}
