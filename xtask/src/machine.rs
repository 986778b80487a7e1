//! The machine line printed with every benchmark report: CPU model, number of CPUs this
//! process may use, kernel and compiler. Numbers without it cannot be compared.

use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cmd;

/// What the benchmarks ran on; the `machine` object of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs available to this process (what `nproc` prints).
    pub nproc: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// `rustc -V`.
    pub rustc: String,
}

impl Machine {
    /// Reads the machine description; a part that cannot be read is `unknown`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpu_model(&cpuinfo)
            .or_else(|| cmd::output(Command::new("uname").arg("-m")).ok())
            .unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
        let kernel =
            cmd::output(Command::new("uname").arg("-sr")).unwrap_or_else(|_| "unknown".into());
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let rustc = cmd::output(Command::new(rustc).arg("-V")).unwrap_or_else(|_| "unknown".into());
        Machine { cpu, nproc, kernel, rustc }
    }

    /// `machine: <cpu> | nproc <n> | <kernel> | <rustc>`.
    pub fn line(&self) -> String {
        format!("machine: {} | nproc {} | {} | {}", self.cpu, self.nproc, self.kernel, self.rustc)
    }
}

/// The first `model name` (x86) or `Hardware`/`Processor` (some ARM kernels) in
/// `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "Processor"].iter().find_map(|wanted| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == *wanted && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn line_format() {
        let m = Machine {
            cpu: "X".into(),
            nproc: 2,
            kernel: "Linux 6.1".into(),
            rustc: "rustc 1.95.0".into(),
        };
        assert_eq!(m.line(), "machine: X | nproc 2 | Linux 6.1 | rustc 1.95.0");
    }
}
