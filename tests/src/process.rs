//! Tests that run the `sluice` binary as a user would: the binary, built for this test run,
//! processes that are stopped when a test fails, signals, and the example plugin.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::{ort_library, workspace};

/// The `sluice` executable: `SLUICE_BIN` when set, else built once per test process with
/// `cargo build` (a no-op when it is fresh), in this test build's profile, with `--features torch`
/// when this crate has that feature. Built here rather than taken from `CARGO_BIN_EXE_sluice`
/// because that is only set for tests inside the binary's own crate, and the end-to-end tests live
/// in this one.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SLUICE_BIN") {
            return PathBuf::from(bin);
        }
        let mut build = Command::new(env!("CARGO"));
        // Without the variables cargo set for this test process: a build script that reruns when
        // one of them changes (ring's does, for CARGO_MANIFEST_DIR) would otherwise rebuild it
        // and everything above it on every test binary's first call.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_") || CARGO_TEST_VARIABLES.contains(&name.as_ref()) {
                build.env_remove(name.as_ref());
            }
        }
        build
            .args(["build", "-p", "sluice-cli", "--bin", "sluice", "--message-format=json-render-diagnostics"])
            .current_dir(workspace())
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        if cfg!(feature = "torch") {
            build.args(["--features", "torch"]);
        }
        let out = build.output().expect("cargo runs");
        assert!(out.status.success(), "building the sluice binary failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "sluice")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the sluice executable it built")
    })
    .clone()
}

/// What cargo sets for a running test besides `CARGO_PKG_*`.
const CARGO_TEST_VARIABLES: [&str; 7] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "OUT_DIR",
];

/// `sluice` with a data directory, the test ONNX Runtime, and quiet logs.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::new(sluice_bin());
    cmd.env("SLUICE_HOME", home)
        .env("SLUICE_ORT_LIB", ort_library())
        .env("SLUICE_LOG", "warn")
        .env_remove("SLUICE_CONTROL_URL")
        .current_dir(workspace());
    cmd
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8(out.stderr).expect("utf8")
}

/// A running `sluice` process; killed if the test fails before stopping it.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    /// The whole line that named the URL (it may name other listeners too).
    pub line: String,
}

impl Server {
    /// Starts `cmd` and waits for the first line that names a loopback URL.
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (url, line) = loop {
            let Some(line) = lines.next() else {
                // It exited (or closed stdout) first: say why, from what it wrote to stderr.
                let out = child.wait_with_output().expect("wait");
                panic!(
                    "{cmd:?} exited ({}) before printing its address; stderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let line = line.expect("line");
            // `https://` when the server terminates TLS.
            if let Some(at) = line.find("https://127.0.0.1:").or_else(|| line.find("http://127.0.0.1:")) {
                let url: String = line[at..].chars().take_while(|c| !c.is_whitespace() && *c != ',').collect();
                break (url, line);
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child: Some(child), url, line }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and returns (exit success, stderr).
    pub fn terminate(mut self) -> (bool, String) {
        let child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let out = child.wait_with_output().expect("wait");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGKILL to a process this test did not spawn itself (or cannot wait for), returning once the
/// kernel has torn it down: its sockets are closed and its port can be bound again. A signal is
/// delivered asynchronously, so a successor started right after `kill` may find the port taken.
pub fn kill_and_wait_gone(pid: u32) {
    signal(pid, "KILL");
    let started = std::time::Instant::now();
    // A dead process whose parent has not reaped it yet stays a zombie ('Z'), but has released
    // its files by then.
    let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    };
    while !gone() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "process {pid} survived SIGKILL");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(ok.success(), "kill -{name} {pid}");
}

/// The example accelerator plugin (`crates/plugin-example`), built once if this test run has not
/// built it yet.
pub fn example_plugin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = sluice_bin();
            let bin_dir = bin.parent().expect("target dir").to_path_buf();
            let lib = bin_dir.join("libsluice_plugin_example.so");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-q", "-p", "sluice-plugin-example"]).current_dir(workspace());
            if bin_dir.ends_with("release") {
                build.arg("--release");
            }
            // Cheap when it is up to date; makes sure the library matches this source tree.
            assert!(build.status().expect("cargo runs").success(), "building the example plugin");
            assert!(lib.is_file(), "{} was not built", lib.display());
            lib
        })
        .clone()
}

/// A small MLP for the example plugin (4 -> 3 relu -> 2) and its floating-point forward pass.
pub struct PluginMlp {
    pub json: serde_json::Value,
}

impl Default for PluginMlp {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginMlp {
    pub fn new() -> Self {
        PluginMlp {
            json: serde_json::json!({
                "input": "x", "output": "y",
                "layers": [
                    { "weights": [[0.5, -0.25, 0.125, 1.0], [-1.0, 0.5, 0.75, 0.25], [0.3, 0.3, -0.6, 0.1]],
                      "bias": [0.1, -0.2, 0.05], "relu": true },
                    { "weights": [[1.0, -0.5, 0.25], [0.5, 0.5, -1.0]], "bias": [0.0, 0.3], "relu": false }
                ]
            }),
        }
    }

    /// The float answer for each row of `x`.
    pub fn forward(&self, x: &[[f64; 4]]) -> Vec<Vec<f64>> {
        let layers = self.json["layers"].as_array().expect("layers");
        x.iter()
            .map(|row| {
                let mut a: Vec<f64> = row.to_vec();
                for l in layers {
                    let w = l["weights"].as_array().expect("weights");
                    let b = l["bias"].as_array().expect("bias");
                    a = w
                        .iter()
                        .zip(b)
                        .map(|(wr, bv)| {
                            let s: f64 = wr
                                .as_array()
                                .expect("row")
                                .iter()
                                .zip(&a)
                                .map(|(w, x)| w.as_f64().expect("f64") * x)
                                .sum();
                            let v = s + bv.as_f64().expect("f64");
                            if l["relu"] == true { v.max(0.0) } else { v }
                        })
                        .collect();
                }
                a
            })
            .collect()
    }
}

/// The running `sluice serve` processes (replicas) whose command line names a path under `home`,
/// found in `/proc`; exited processes left unreaped (zombies) do not count.
pub fn replica_processes(home: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let home = home.as_os_str().as_encoded_bytes();
            args.contains(&&b"serve"[..]) && args.iter().any(|a| a.starts_with(home))
        })
        .filter(|pid| {
            // The state follows the command name's closing parenthesis.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
                .is_some_and(|rest| !rest.starts_with(['Z', 'X']))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// SIGKILLs every replica process of `home` ([`replica_processes`]), by pid: what a failed test
/// left running.
pub fn kill_replicas(home: &Path) {
    for pid in replica_processes(home) {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}
