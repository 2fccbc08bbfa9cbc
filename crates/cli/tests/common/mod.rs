//! Helpers for tests that run the `sluice` binary as a user would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sluice_e2e::{ort_library, workspace};

/// `sluice` with a data directory, the test ONNX Runtime, and quiet logs.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
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
}

impl Server {
    /// Starts `cmd` and waits for the first line that names a loopback URL.
    pub fn start(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("server printed its address before exiting").expect("line");
            if let Some(at) = line.find("http://127.0.0.1:") {
                let url: String = line[at..].chars().take_while(|c| !c.is_whitespace() && *c != ',').collect();
                break url;
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child: Some(child), url }
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

/// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill runs");
    assert!(ok.success(), "kill -{name} {pid}");
}
