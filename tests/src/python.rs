//! Python tools the tests use (validators, official clients), pinned and installed with
//! `pip install --target` under `target/` on first use, so no test depends on what the machine
//! happens to have.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python that runs them: `SLUICE_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The folder (for `PYTHONPATH`) holding `packages`, installed into `dir` unless `ready(dir)`
/// already says they are there; `None`, with the reason printed, when pip cannot install them.
/// The install goes to a folder beside `dir` that is renamed into place, so a test binary
/// running at the same time never sees half an install.
pub fn installed(dir: &Path, packages: &[&str], ready: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if ready(dir) {
        return Some(dir.to_path_buf());
    }
    // One install at a time per folder, across the test binaries and the tests in each: a second
    // one waits here, then finds the first one's install ready.
    let lock_path = dir.with_extension("lock");
    if let Some(parent) = lock_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let lock = std::fs::File::create(&lock_path).expect("the install lock file");
    lock.lock().expect("the install lock");
    if ready(dir) {
        return Some(dir.to_path_buf());
    }
    let what = packages.join(" ");
    eprintln!("installing {what} into {} with pip (once)", dir.display());
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let out = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&staging)
        .args(packages)
        .output();
    let failure = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(format!("cannot run {}: {e}", python())),
    };
    if let Some(why) = failure {
        let _ = std::fs::remove_dir_all(&staging);
        crate::skip(&format!("pip could not install {what}: {why}"));
        return None;
    }
    // A broken install from before the lock existed goes; readers never see half of this one.
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::rename(&staging, dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(ready(dir), "pip installed {what} but python cannot import it");
    Some(dir.to_path_buf())
}

/// Runs the client script `tests/clients/<script>` with `args`, Python finding its packages in
/// `packages`; what it printed (stdout, then stderr), echoed for the test log, after checking it
/// succeeded. The scripts print `ok: ...` per check, which the tests count.
pub fn run_client(script: &str, args: &[&OsStr], packages: &[PathBuf]) -> String {
    let out = Command::new(python())
        .arg(crate::workspace().join("tests/clients").join(script))
        .args(args)
        .env("PYTHONPATH", std::env::join_paths(packages).expect("a PYTHONPATH"))
        .output()
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{text}");
    eprint!("{text}");
    text
}
