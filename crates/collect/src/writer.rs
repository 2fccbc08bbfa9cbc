//! The writer thread: turns records into JSON lines in day-partitioned, rotated files and keeps
//! the service's data within its budget.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::value::RawValue;
use sluice_core::time::Utc;

use crate::{CollectConfig, Record, Stats};

/// How often open files are flushed (and aged out) while records keep coming.
const FLUSH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Inputs,
    Predictions,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Inputs => "inputs",
            Kind::Predictions => "predictions",
        }
    }
}

struct Open {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    opened: Instant,
    day: (i64, u32, u32),
}

struct Writer {
    config: CollectConfig,
    dir: PathBuf,
    files: HashMap<(String, String, Kind), Open>,
    /// Bytes the service's data takes, kept up to date as files are written and removed.
    total: u64,
    stats: Arc<Stats>,
    sequence: u64,
}

pub(crate) fn spawn(config: CollectConfig, rx: Receiver<Record>, stats: Arc<Stats>) -> std::io::Result<()> {
    let dir = config.root.join(&config.service);
    std::fs::create_dir_all(&dir)?;
    let total = files_under(&dir).iter().map(|(_, len, _)| len).sum();
    let mut writer = Writer { config, dir, files: HashMap::new(), total, stats, sequence: 0 };
    std::thread::Builder::new().name("sluice-collect".into()).spawn(move || {
        loop {
            match rx.recv_timeout(FLUSH_PERIOD) {
                Ok(record) => {
                    writer.take(&record);
                    // The rest of a burst, then one flush: a burst costs one write per file.
                    while let Ok(record) = rx.try_recv() {
                        writer.take(&record);
                    }
                    writer.flush();
                }
                Err(RecvTimeoutError::Timeout) => writer.flush(),
                Err(RecvTimeoutError::Disconnected) => {
                    writer.flush();
                    break;
                }
            }
        }
    })?;
    Ok(())
}

#[derive(Serialize)]
struct InputsLine<'a> {
    request_id: &'a str,
    time: &'a str,
    model: &'a str,
    version: &'a str,
    inputs: &'a RawValue,
    /// The request's tensors in the binary extension are not kept, only its JSON header.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    binary_data_omitted: bool,
}

#[derive(Serialize)]
struct PredictionsLine<'a> {
    request_id: &'a str,
    time: &'a str,
    model: &'a str,
    version: &'a str,
    predictions: &'a RawValue,
}

/// `bytes` as a JSON value: itself when it is JSON, else a JSON string of its text.
fn as_json(bytes: &[u8]) -> Box<RawValue> {
    let text = String::from_utf8_lossy(bytes);
    RawValue::from_string(text.trim().to_owned())
        .ok()
        .filter(|v| serde_json::from_str::<serde::de::IgnoredAny>(v.get()).is_ok())
        .unwrap_or_else(|| {
            RawValue::from_string(serde_json::to_string(&text).unwrap_or_default()).expect("a JSON string is JSON")
        })
}

impl Writer {
    /// Writes `record`; one that cannot be written is dropped and counted like an overflow.
    fn take(&mut self, record: &Record) {
        if let Err(e) = self.write(record) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            eprintln!("sluice: model data collection could not write a record: {e}");
        }
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        // The answer names the model and version that served (OIP and /score both do).
        #[derive(serde::Deserialize)]
        struct Names {
            model_name: Option<String>,
            model_version: Option<String>,
        }
        let names: Names =
            serde_json::from_slice(&record.predictions).unwrap_or(Names { model_name: None, model_version: None });
        let model = sanitize(names.model_name.as_deref().unwrap_or("unknown"));
        let version = sanitize(names.model_version.as_deref().unwrap_or("unknown"));
        let utc = Utc::of(record.time);
        let time = utc.rfc3339_millis();
        let json_part = &record.inputs[..record.json_length.unwrap_or(record.inputs.len()).min(record.inputs.len())];
        let inputs = as_json(json_part);
        let predictions = as_json(&record.predictions);
        let mut line = serde_json::to_vec(&InputsLine {
            request_id: &record.request_id,
            time: &time,
            model: &model,
            version: &version,
            inputs: &inputs,
            binary_data_omitted: record.json_length.is_some(),
        })?;
        line.push(b'\n');
        self.append(&model, &version, Kind::Inputs, utc, &line)?;
        let mut line = serde_json::to_vec(&PredictionsLine {
            request_id: &record.request_id,
            time: &time,
            model: &model,
            version: &version,
            predictions: &predictions,
        })?;
        line.push(b'\n');
        self.append(&model, &version, Kind::Predictions, utc, &line)?;
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        if self.total > self.config.budget_bytes {
            self.evict();
        }
        Ok(())
    }

    fn append(&mut self, model: &str, version: &str, kind: Kind, utc: Utc, line: &[u8]) -> std::io::Result<()> {
        let key = (model.to_owned(), version.to_owned(), kind);
        let day = (utc.year, utc.month, utc.day);
        let rotate = self.files.get(&key).is_some_and(|f| {
            f.day != day || f.bytes >= self.config.max_file_bytes || f.opened.elapsed() >= self.config.max_file_age
        });
        if rotate && let Some(mut old) = self.files.remove(&key) {
            old.file.flush()?;
        }
        if !self.files.contains_key(&key) {
            let dir = self
                .dir
                .join(model)
                .join(version)
                .join(kind.dir())
                .join(format!("{:04}/{:02}/{:02}", utc.year, utc.month, utc.day));
            std::fs::create_dir_all(&dir)?;
            self.sequence += 1;
            // Names sort by time, so the oldest files are the first in a listing.
            let name = format!("{:02}{:02}{:02}-{:06}.jsonl", utc.hour, utc.minute, utc.second, self.sequence);
            let path = dir.join(name);
            let file = BufWriter::new(File::options().create(true).append(true).open(&path)?);
            self.files.insert(key.clone(), Open { path, file, bytes: 0, opened: Instant::now(), day });
        }
        let open = self.files.get_mut(&key).expect("inserted above");
        open.file.write_all(line)?;
        open.bytes += line.len() as u64;
        self.total += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) {
        let max_age = self.config.max_file_age;
        for open in self.files.values_mut() {
            let _ = open.file.flush();
        }
        // Files past their age are closed even when nothing more comes for them.
        self.files.retain(|_, f| f.opened.elapsed() < max_age);
    }

    /// Removes the oldest files until the data is 90 % of the budget (some room, so eviction is
    /// not paid on every record). Open files are written to and stay.
    fn evict(&mut self) {
        let target = self.config.budget_bytes / 10 * 9;
        let open: Vec<&Path> = self.files.values().map(|f| f.path.as_path()).collect();
        let mut files = files_under(&self.dir);
        files.sort_by_key(|(_, _, modified)| *modified);
        self.total = files.iter().map(|(_, len, _)| len).sum();
        for (path, len, _) in files {
            if self.total <= target {
                break;
            }
            if open.contains(&path.as_path()) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                self.total -= len;
                self.stats.evicted_files.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A model name or version as one path segment.
fn sanitize(s: &str) -> String {
    let clean: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if clean.is_empty() || clean.starts_with('.') { format!("_{clean}") } else { clean }
}

/// Every file under `dir` with its size and modification time.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    out
}

/// What a service's collected data takes on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Usage {
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// Modification times of the oldest and newest file, RFC 3339.
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

/// The collected data under `dir` (a service's folder).
pub fn usage(dir: &Path) -> Usage {
    let files = files_under(dir);
    let stamp = |t: SystemTime| Utc::of(t).rfc3339_seconds();
    Usage {
        path: dir.to_path_buf(),
        files: files.len() as u64,
        bytes: files.iter().map(|(_, len, _)| len).sum(),
        oldest: files.iter().map(|(_, _, m)| *m).min().map(stamp),
        newest: files.iter().map(|(_, _, m)| *m).max().map(stamp),
    }
}
