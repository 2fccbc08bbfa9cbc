//! A process that writes its standard output and error into a log file keeps that file bounded
//! itself, by rotation: past its limit the file is renamed to `NAME.1` (replacing the previous
//! one) and a fresh file takes its place on the same descriptors.
//!
//! Why the writer rotates, and not the process that reads the log: a replica's output goes
//! straight into its log file, so the replica keeps running (and can be adopted) when the control
//! plane dies. Any cut made from outside (copy the tail, truncate, write it back) races with the
//! writer and loses what it wrote in between. Here the rename and the `dup2` that points the
//! descriptors at the new file are each atomic: every write lands, whole, in one file or the other.
//! The two files together hold at most about twice the limit.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the file a process's stdout and stderr are written to; with
/// [`LOG_LIMIT_ENV`], [`bound_from_env`] keeps it bounded.
pub const LOG_FILE_ENV: &str = "SLUICE_LOG_FILE";
/// The size (bytes) past which the file named by [`LOG_FILE_ENV`] is rotated.
pub const LOG_LIMIT_ENV: &str = "SLUICE_LOG_LIMIT_BYTES";

/// How often the file's size is checked.
const CHECK_PERIOD: Duration = Duration::from_millis(250);

/// The rotated-out part of log `path` (`NAME.1`), read before `path` itself.
pub fn previous_part(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The descriptors a rotation points at the fresh file.
pub enum Descriptors {
    /// This process's stdout and stderr.
    Stdio,
    /// Descriptors of the caller's choosing (tests).
    Owned(Vec<OwnedFd>),
}

/// Keeps log `path` within `limit` bytes per part: a thread checks it every `period` and rotates it
/// when it is larger. Runs for the life of the process.
pub fn keep_bounded(path: PathBuf, limit: u64, period: Duration, descriptors: Descriptors) -> std::io::Result<()> {
    std::thread::Builder::new().name("log-rotation".into()).spawn(move || {
        let mut descriptors = descriptors;
        loop {
            std::thread::sleep(period);
            if let Err(e) = rotate_if_full(&path, limit, &mut descriptors) {
                // Nowhere better to say it than the log itself; the next check tries again.
                tracing::warn!(error = %e, path = %path.display(), "cannot rotate the log");
            }
        }
    })?;
    Ok(())
}

/// When this process was started with [`LOG_FILE_ENV`] and [`LOG_LIMIT_ENV`] (the control plane
/// starts replicas so), keeps that log bounded. A malformed limit is an error, named.
pub fn bound_from_env() -> Result<(), String> {
    let (Some(path), Some(limit)) = (std::env::var_os(LOG_FILE_ENV), std::env::var(LOG_LIMIT_ENV).ok()) else {
        return Ok(());
    };
    let limit: u64 = limit.parse().map_err(|_| format!("{LOG_LIMIT_ENV}={limit:?} is not a number of bytes"))?;
    keep_bounded(PathBuf::from(path), limit, CHECK_PERIOD, Descriptors::Stdio)
        .map_err(|e| format!("cannot start the log rotation thread: {e}"))
}

/// Rotates log `path` when it holds more than `limit` bytes.
fn rotate_if_full(path: &Path, limit: u64, descriptors: &mut Descriptors) -> std::io::Result<()> {
    if std::fs::metadata(path)?.len() > limit { rotate(path, descriptors) } else { Ok(()) }
}

/// Renames the full file aside and points the descriptors at a fresh one. Writes through the
/// descriptors before the `dup2` land in the renamed file, those after it in the new one.
fn rotate(path: &Path, descriptors: &mut Descriptors) -> std::io::Result<()> {
    std::fs::rename(path, previous_part(path))?;
    let fresh: File = OpenOptions::new().create(true).append(true).open(path)?;
    match descriptors {
        Descriptors::Stdio => {
            nix::unistd::dup2_stdout(&fresh)?;
            nix::unistd::dup2_stderr(&fresh)?;
        }
        Descriptors::Owned(fds) => {
            for fd in fds {
                nix::unistd::dup2(&fresh, fd)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A log written continuously through a descriptor stays within its bound per part, and no
    /// line is lost or reordered in the rotations: the previous part and the current one hold an
    /// unbroken run of the newest lines.
    #[test]
    fn rotation_bounds_the_log_and_loses_no_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replica-0.log");
        let limit = 16 * 1024;
        let log = OpenOptions::new().create(true).append(true).open(&path).expect("open the log");
        // The writer's descriptor is the one rotations redirect, as a replica's fd 1 is.
        let mut descriptors = Descriptors::Owned(vec![log.into()]);
        let lines = 5_000;
        for i in 0..lines {
            let Descriptors::Owned(fds) = &mut descriptors else { unreachable!() };
            let writer = File::from(fds.pop().expect("the descriptor"));
            writeln!(&writer, "line {i:06} {}", "x".repeat(90)).expect("write");
            fds.push(writer.into());
            if i % 10 == 0 {
                rotate_if_full(&path, limit, &mut descriptors).expect("rotate");
            }
        }
        let line_len = 103;
        let previous = std::fs::read_to_string(previous_part(&path)).expect("the previous part");
        let current = std::fs::read_to_string(&path).expect("the current part");
        for (part, text) in [("previous", &previous), ("current", &current)] {
            assert!(text.len() as u64 <= limit + 10 * line_len, "the {part} part holds {} bytes", text.len());
        }
        let numbers: Vec<usize> = previous
            .lines()
            .chain(current.lines())
            .map(|l| l.strip_prefix("line ").and_then(|r| r.get(..6)).expect("a whole line").parse().expect("a number"))
            .collect();
        assert!(numbers.len() as u64 > limit / line_len, "only {} lines kept", numbers.len());
        let first = numbers[0];
        assert_eq!(numbers, (first..lines).collect::<Vec<_>>(), "lines lost or out of order");
    }

    #[test]
    fn the_previous_part_is_named_after_the_log() {
        assert_eq!(previous_part(Path::new("/d/replica-0.log")), Path::new("/d/replica-0.log.1"));
    }
}
