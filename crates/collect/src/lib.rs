//! Model data collection (`collect_model_data` in a deployment config): the inputs and
//! predictions of sampled requests, written as JSON lines by a thread of their own, partitioned as
//! Azure ML does, `<root>/<service>/<model>/<version>/<inputs|predictions>/<yyyy>/<mm>/<dd>/`,
//! each line carrying the request id and time so inputs and predictions join.
//!
//! The request path only decides whether to sample and hands the bytes over through a bounded
//! queue: when the writer falls behind, records are dropped and counted, and the request is never
//! slowed. Files rotate by size and age; past the disk budget the oldest files go.
#![forbid(unsafe_code)]

mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

pub use writer::{Usage, usage};

/// Where and how much to collect.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// The collection root; the service's data goes under `<root>/<service>/`.
    pub root: PathBuf,
    pub service: String,
    /// Share of successful scoring requests recorded, in (0, 1].
    pub sample_rate: f64,
    /// A file is closed and a new one started past this size...
    pub max_file_bytes: u64,
    /// ...or this age.
    pub max_file_age: Duration,
    /// Most bytes the service's collected data may take; the oldest files go past it.
    pub budget_bytes: u64,
    /// Records waiting for the writer at most; more are dropped.
    pub queue: usize,
}

impl CollectConfig {
    /// Collection for `service` under `root` with the defaults: every request, 16 MiB or one
    /// hour per file, 1 GiB in all, 1024 records queued.
    pub fn new(root: PathBuf, service: &str, sample_rate: f64) -> Self {
        CollectConfig {
            root,
            service: service.to_owned(),
            sample_rate,
            max_file_bytes: 16 * 1024 * 1024,
            max_file_age: Duration::from_secs(3600),
            budget_bytes: 1024 * 1024 * 1024,
            queue: 1024,
        }
    }
}

/// One sampled request: what the model was asked and what it answered, as the wire carried them.
#[derive(Debug)]
pub struct Record {
    pub request_id: String,
    pub time: SystemTime,
    /// The request body (OIP v2 or `/score` JSON; for the binary extension, its JSON header
    /// only, which is what `json_length` gives).
    pub inputs: Vec<u8>,
    /// Length of the JSON part of `inputs`, when it is followed by binary data.
    pub json_length: Option<usize>,
    /// The response body, which names the model and version that answered.
    pub predictions: Vec<u8>,
}

/// The handle the scoring server holds.
#[derive(Debug)]
pub struct Collector {
    queue: SyncSender<Record>,
    /// Sampling without a random source per request: every request adds the rate to an
    /// accumulator (in millionths) and is sampled when it crosses a whole unit.
    accumulator: AtomicU64,
    step: u64,
    stats: Arc<Stats>,
}

/// Counters of one collector.
#[derive(Debug, Default)]
pub struct Stats {
    pub recorded: AtomicU64,
    /// Records dropped because the writer was behind (or failed to write).
    pub dropped: AtomicU64,
    /// Files removed to stay within the budget.
    pub evicted_files: AtomicU64,
}

const UNIT: u64 = 1_000_000;

impl Collector {
    /// Starts the writer thread.
    pub fn start(config: CollectConfig) -> std::io::Result<Arc<Collector>> {
        if !(config.sample_rate > 0.0 && config.sample_rate <= 1.0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the collection sample rate must be in (0, 1], not {}", config.sample_rate),
            ));
        }
        let step = ((config.sample_rate * UNIT as f64).round() as u64).clamp(1, UNIT);
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let stats = Arc::new(Stats::default());
        writer::spawn(config, rx, stats.clone())?;
        Ok(Arc::new(Collector { queue: tx, accumulator: AtomicU64::new(0), step, stats }))
    }

    /// Whether to record the request being answered: deterministic, evenly spread.
    pub fn sample(&self) -> bool {
        let before = self.accumulator.fetch_add(self.step, Ordering::Relaxed);
        (before % UNIT) + self.step >= UNIT
    }

    /// Hands `record` to the writer, or drops and counts it when the writer is behind.
    pub fn record(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

#[cfg(test)]
mod tests;
