//! Where a grid's cells compute. [`CellDevice`] holds the experiment config's `device`,
//! `backend` and `dtype` keys; the experiment records it in the run directory
//! (`device.json`), so every process that runs a cell (the local executor, a Slurm array
//! task, `elastica cell run` typed by hand) computes the same way. What may change per
//! process is the device alone: the local executor's `--devices` gives each running cell one
//! device of its list ([`DevicePool`]), a Slurm task with a GPU runs on `cuda` (the GPU the
//! job was given is its `cuda:0`), and `cell run --device` overrides it.
//!
//! The device and the backend are not part of a cell's definition (its hash): a grid planned
//! on one machine resumes on another, and the backends agree to 1e-5. The precision (`dtype`)
//! is what a cell measures with, so a run directory holds one: [`CellDevice::check_precision`]
//! refuses to run, resume or `cell run` cells of a run in another dtype, before anything is
//! written. `result.json` records where each cell ran.
//!
//! This layer keeps the settings as the config wrote them; `experiments::device` resolves
//! them to a backend (and refuses what this build cannot run).

use super::manifest::MANIFEST_FILE;
use crate::util::fsx::atomic_write_json;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

/// The run directory's record of how its cells compute.
pub const DEVICE_FILE: &str = "device.json";

/// A device, a backend and a precision, as text (`"cuda:1"`, `"torch"`, `"bf16"`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellDevice {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `fused` or `torch`; `None` = the device's default (fused on the CPU, torch on CUDA).
    pub backend: Option<String>,
    /// `f32` or `bf16`; `None` = f32.
    pub dtype: Option<String>,
}

impl Default for CellDevice {
    fn default() -> Self {
        CellDevice {
            device: CPU.to_string(),
            backend: None,
            dtype: None,
        }
    }
}

/// The default device.
pub const CPU: &str = "cpu";

/// Whether `device` names a GPU (`cuda`, `cuda:N`).
pub fn is_gpu(device: &str) -> bool {
    let d = device.trim();
    d == "cuda" || d == "gpu" || d.starts_with("cuda:")
}

impl CellDevice {
    /// Whether the cells ask for a GPU.
    pub fn is_gpu(&self) -> bool {
        is_gpu(&self.device)
    }

    /// The same backend and precision on `device`.
    pub fn on(&self, device: &str) -> CellDevice {
        CellDevice {
            device: device.trim().to_string(),
            ..self.clone()
        }
    }

    /// The `elastica cell run` flags that ask for these settings.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--device".to_string(), self.device.clone()];
        if let Some(b) = &self.backend {
            a.extend(["--backend".to_string(), b.clone()]);
        }
        if let Some(d) = &self.dtype {
            a.extend(["--dtype".to_string(), d.clone()]);
        }
        a
    }

    /// One line for logs: `cuda:1 (torch, bf16)`, or just the device for the defaults.
    pub fn label(&self) -> String {
        let extra: Vec<&str> = [self.backend.as_deref(), self.dtype.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if extra.is_empty() {
            self.device.clone()
        } else {
            format!("{} ({})", self.device, extra.join(", "))
        }
    }

    /// The precision as the config spells it, `f32` when unset.
    pub fn precision(&self) -> String {
        self.dtype
            .as_deref()
            .unwrap_or("f32")
            .trim()
            .to_ascii_lowercase()
    }

    /// Refuse to compute the cells of the run in `run_dir` in another precision than the one
    /// it was made with (`device.json`; a planned run without one was made in f32). A bf16
    /// and an f32 result of one cell are different measurements, and the cell's hash does not
    /// tell them apart (so that every f32 run keeps its hashes): one run, one precision.
    pub fn check_precision(&self, run_dir: &Path) -> Result<()> {
        let file = run_dir.join(DEVICE_FILE);
        let recorded = if file.exists() {
            CellDevice::read(run_dir)?
        } else if run_dir.join(MANIFEST_FILE).exists() {
            CellDevice::default()
        } else {
            return Ok(());
        };
        let (was, want) = (recorded.precision(), self.precision());
        if was != want {
            bail!(
                "{}: the cells of this run compute in dtype = \"{was}\", but dtype = \"{want}\" \
                 was asked for. The precision is part of what a cell measures, so a run holds \
                 one: give the {want} run a new --out directory, or keep dtype = \"{was}\" to \
                 run or resume this one",
                file.display()
            );
        }
        Ok(())
    }

    /// The settings recorded in `run_dir`; the default (the CPU) when none were.
    pub fn read(run_dir: &Path) -> Result<CellDevice> {
        let p = run_dir.join(DEVICE_FILE);
        if !p.exists() {
            return Ok(CellDevice::default());
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a device record (keys device, backend, dtype); it is written by \
                 the experiment command, from its config's device keys",
                p.display()
            )
        })
    }

    /// Record these settings in `run_dir` (replacing an earlier record).
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        atomic_write_json(&run_dir.join(DEVICE_FILE), self)
    }
}

/// The local executor's devices: each running cell holds one, and gives it back when it
/// ends. With as many workers as devices, a starting cell always finds one free, and no two
/// running cells hold the same one.
pub struct DevicePool {
    free: Mutex<Vec<String>>,
}

impl DevicePool {
    pub fn new(devices: &[String]) -> DevicePool {
        // Taken from the back: reversed, so the first cell gets the first device.
        DevicePool {
            free: Mutex::new(devices.iter().rev().cloned().collect()),
        }
    }

    /// Hold a free device until the returned guard is dropped.
    pub fn take(&self) -> Result<HeldDevice<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.pop() {
            Some(device) => Ok(HeldDevice { pool: self, device }),
            None => bail!("no free device: more cells run at once than devices are listed"),
        }
    }
}

/// A device a running cell holds.
pub struct HeldDevice<'a> {
    pool: &'a DevicePool,
    pub device: String,
}

impl Drop for HeldDevice<'_> {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(std::mem::take(&mut self.device));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_render_as_flags() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CellDevice::read(dir.path()).unwrap(), CellDevice::default());
        let d = CellDevice {
            device: "cuda:1".into(),
            backend: Some("torch".into()),
            dtype: Some("bf16".into()),
        };
        d.write(dir.path()).unwrap();
        assert_eq!(CellDevice::read(dir.path()).unwrap(), d);
        assert!(d.is_gpu() && !CellDevice::default().is_gpu());
        assert_eq!(
            d.on("cuda").args(),
            ["--device", "cuda", "--backend", "torch", "--dtype", "bf16"]
        );
        assert_eq!(CellDevice::default().args(), ["--device", "cpu"]);
        assert_eq!(d.label(), "cuda:1 (torch, bf16)");
        assert_eq!(CellDevice::default().label(), "cpu");
        std::fs::write(
            dir.path().join(DEVICE_FILE),
            "{\"device\": \"cpu\", \"x\": 1}",
        )
        .unwrap();
        let e = format!("{:#}", CellDevice::read(dir.path()).unwrap_err());
        assert!(
            e.contains(DEVICE_FILE) && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_run_keeps_the_precision_it_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let bf16 = CellDevice {
            dtype: Some("BF16".into()),
            ..CellDevice::default()
        };
        // Nothing planned yet: any precision may start the run.
        bf16.check_precision(dir.path()).unwrap();
        // Planned before device.json existed: f32.
        std::fs::write(dir.path().join(MANIFEST_FILE), "{}").unwrap();
        let e = format!("{:#}", bf16.check_precision(dir.path()).unwrap_err());
        assert!(
            e.contains("dtype = \"f32\"") && e.contains("dtype = \"bf16\""),
            "{e}"
        );
        let f32 = CellDevice {
            dtype: Some("f32".into()),
            ..CellDevice::default()
        };
        f32.check_precision(dir.path()).unwrap();
        bf16.on("cuda").write(dir.path()).unwrap();
        bf16.check_precision(dir.path()).unwrap();
        let e = format!(
            "{:#}",
            CellDevice::default()
                .check_precision(dir.path())
                .unwrap_err()
        );
        assert!(e.contains(DEVICE_FILE) && e.contains("new --out"), "{e}");
    }

    #[test]
    fn a_pool_never_hands_out_a_held_device() {
        let pool = DevicePool::new(&["cuda:0".into(), "cuda:1".into()]);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.device.as_str(), b.device.as_str()), ("cuda:0", "cuda:1"));
        assert!(pool.take().is_err());
        drop(a);
        assert_eq!(pool.take().unwrap().device, "cuda:0");
    }
}
