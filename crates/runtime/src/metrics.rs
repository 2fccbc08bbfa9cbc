use sluice_telemetry::{Counter, Histogram};

/// Error classes counted per model; bounded, so they are safe as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Overloaded,
    Timeout,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] =
        [ErrorKind::BadRequest, ErrorKind::Overloaded, ErrorKind::Timeout, ErrorKind::Internal];

    /// The `error_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Metrics of one model version, updated lock-free on the request path.
#[derive(Debug)]
pub struct ModelMetrics {
    pub requests: Counter,
    pub errors: [Counter; 4],
    /// Requests dropped from the queue because their client had gone.
    pub abandoned: Counter,
    /// Whole request, from the server's point of view.
    pub request: Histogram,
    /// From admission until an instance took the request, per request.
    pub queue: Histogram,
    /// One engine run, per batch (a batch of one when batching is off).
    pub inference: Histogram,
    /// Rows per engine run.
    pub batch_size: Histogram,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            requests: Counter::default(),
            errors: Default::default(),
            abandoned: Counter::default(),
            request: Histogram::default(),
            queue: Histogram::default(),
            inference: Histogram::default(),
            batch_size: Histogram::sizes(),
        }
    }
}

impl ModelMetrics {
    /// Records one engine run of `rows` rows and the queue time of each request in it.
    pub fn record_run(
        &self,
        queue_times: impl IntoIterator<Item = std::time::Duration>,
        inference: std::time::Duration,
        rows: Option<usize>,
    ) {
        queue_times.into_iter().for_each(|t| self.queue.observe(t));
        self.inference.observe(inference);
        if let Some(rows) = rows {
            self.batch_size.observe_value(rows as f64);
        }
    }

    pub fn error(&self, kind: ErrorKind) -> &Counter {
        &self.errors[kind as usize]
    }
}
