//! Finding `libonnxruntime` without a manual step: an explicit path wins; otherwise the library
//! lives under the data directory, fetched once from the pinned PyPI wheel with pip.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime release Sluice is built and tested against (PyPI `onnxruntime`). Everything
/// that provisions by version follows it: the data directory's layout, the tests'
/// `target/test-runtime`, the container image (`deploy/build-image.sh` reads it from here).
pub const ORT_VERSION: &str = "1.32.0";

const SHARED_PROVIDERS: &str = "libonnxruntime_providers_shared.so";

/// Why no ONNX Runtime library could be had; each message ends with what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "the ONNX Runtime library given by --ort-lib / SLUICE_ORT_LIB ({0}) does not exist; point it at a libonnxruntime.so, or unset it to let sluice fetch one"
    )]
    ExplicitMissing(PathBuf),
    #[error(
        "could not run `{python} -m pip` to fetch ONNX Runtime {ORT_VERSION} ({reason}); install Python 3 with pip (Debian: apt-get install python3-pip), set SLUICE_PYTHON to a python with pip, or set SLUICE_ORT_LIB to an existing libonnxruntime.so"
    )]
    NoPip { python: String, reason: String },
    #[error(
        "`pip download onnxruntime=={ORT_VERSION}` failed: {0}; check that PyPI is reachable (or a pip index is configured), or set SLUICE_ORT_LIB to an existing libonnxruntime.so"
    )]
    Download(String),
    #[error("the onnxruntime wheel {wheel} could not be unpacked: {reason}; delete {dir} and retry")]
    Unpack { wheel: PathBuf, dir: PathBuf, reason: String },
    #[error("cannot prepare {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The library's file name in the wheel and in the provisioned folder.
fn library() -> String {
    format!("libonnxruntime.so.{ORT_VERSION}")
}

/// Where a provisioned library lives under the data directory.
pub fn provisioned_dir(home: &Path) -> PathBuf {
    home.join("runtimes").join(format!("onnxruntime-{ORT_VERSION}"))
}

/// Returns the path of `libonnxruntime` to load: `explicit` if given, else the copy under
/// `home`, fetching it first if it is not there yet.
pub fn locate_or_provision(explicit: Option<&Path>, home: &Path) -> Result<PathBuf, ProvisionError> {
    if let Some(path) = explicit {
        return if path.is_file() { Ok(path.to_path_buf()) } else { Err(ProvisionError::ExplicitMissing(path.into())) };
    }
    let dir = provisioned_dir(home);
    let lib = dir.join(library());
    if lib.is_file() {
        return Ok(lib);
    }
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    provision(&dir, &python)?;
    Ok(lib)
}

fn provision(dir: &Path, python: &str) -> Result<(), ProvisionError> {
    let io = |source| ProvisionError::Io { dir: dir.to_path_buf(), source };
    let parent = dir.parent().unwrap_or(dir);
    fs::create_dir_all(parent).map_err(io)?;
    eprintln!(
        "sluice: ONNX Runtime {ORT_VERSION} is not installed yet; fetching the onnxruntime=={ORT_VERSION} wheel from PyPI with pip (one time, about 28 MB) into {}",
        dir.display()
    );
    // Everything happens in a scratch folder next to the destination and is renamed into place at
    // the end, so a crash or a concurrent `sluice` never sees a half-unpacked library.
    let scratch = tempfile::Builder::new().prefix(".onnxruntime-").tempdir_in(parent).map_err(io)?;
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .arg("-d")
        .arg(scratch.path())
        .output()
        .map_err(|e| ProvisionError::NoPip { python: python.into(), reason: e.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(ProvisionError::NoPip { python: python.into(), reason: "pip is not installed".into() });
        }
        return Err(ProvisionError::Download(last_line(&stderr)));
    }
    let wheel = fs::read_dir(scratch.path())
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ProvisionError::Download("pip reported success but left no wheel".into()))?;
    let staged = scratch.path().join("lib");
    fs::create_dir_all(&staged).map_err(io)?;
    unpack(&wheel, &staged).map_err(|reason| ProvisionError::Unpack {
        wheel: wheel.clone(),
        dir: dir.to_path_buf(),
        reason,
    })?;
    match fs::rename(&staged, dir) {
        Ok(()) => {}
        // Another process finished first: its copy is as good as ours.
        Err(_) if dir.join(library()).is_file() => {}
        Err(e) => return Err(io(e)),
    }
    eprintln!("sluice: ONNX Runtime {ORT_VERSION} installed in {}", dir.display());
    Ok(())
}

fn unpack(wheel: &Path, into: &Path) -> Result<(), String> {
    let file = fs::File::open(wheel).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let library = library();
    for name in [library.as_str(), SHARED_PROVIDERS] {
        let mut entry = archive.by_name(&format!("onnxruntime/capi/{name}")).map_err(|e| format!("{name}: {e}"))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        fs::write(into.join(name), bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn last_line(s: &str) -> String {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_must_exist() {
        let err = locate_or_provision(Some(Path::new("/nonexistent/libonnxruntime.so")), Path::new("/tmp"))
            .expect_err("missing file");
        assert!(err.to_string().contains("SLUICE_ORT_LIB"), "{err}");
    }

    #[test]
    fn missing_python_names_the_fix() {
        let home = tempfile::tempdir().expect("tempdir");
        // A python that does not exist stands in for a machine without pip.
        let dir = provisioned_dir(home.path());
        let err = provision(&dir, "/nonexistent/python3").expect_err("no python");
        assert!(matches!(err, ProvisionError::NoPip { .. }), "{err}");
        assert!(err.to_string().contains("SLUICE_ORT_LIB"), "{err}");
        assert!(!dir.exists(), "nothing half-made is left behind");
    }
}
