use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::*;

fn record(id: &str, inputs: &str, predictions: &str) -> Record {
    Record {
        request_id: id.into(),
        time: SystemTime::now(),
        inputs: inputs.as_bytes().to_vec(),
        json_length: None,
        predictions: predictions.as_bytes().to_vec(),
    }
}

/// Waits until the writer has taken `n` records (written or dropped).
fn settled(c: &Collector, n: u64) {
    let start = Instant::now();
    while c.stats().recorded.load(Ordering::Relaxed) + c.stats().dropped.load(Ordering::Relaxed) < n {
        assert!(start.elapsed() < Duration::from_secs(20), "the writer did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The writer flushes once its queue is empty; give it that moment.
    std::thread::sleep(Duration::from_millis(50));
}

fn lines(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).expect("under").display().to_string();
                for line in std::fs::read_to_string(e.path()).expect("read").lines() {
                    out.push((rel.clone(), serde_json::from_str(line).expect("a JSON line")));
                }
            }
        }
    }
    out
}

#[test]
fn inputs_and_predictions_are_partitioned_and_join_by_request_id() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(CollectConfig::new(root.path().into(), "fraud", 1.0)).expect("start");
    c.record(record(
        "r-1",
        r#"{"inputs":[{"name":"x","data":[1]}]}"#,
        r#"{"model_name":"gbm","model_version":"3","outputs":[]}"#,
    ));
    let mut binary = record("r-2", "", r#"{"model_name":"gbm","model_version":"3"}"#);
    binary.inputs = b"{\"inputs\":[]}\x00\x01\x02\x03".to_vec();
    binary.json_length = Some(13);
    c.record(binary);
    c.record(record("r-3", "not json", "not json either"));
    settled(&c, 3);
    let all = lines(&root.path().join("fraud"));
    let utc = sluice_core::time::Utc::now();
    let day = format!("{:04}/{:02}/{:02}", utc.year, utc.month, utc.day);
    let find = |id: &str, kind: &str| {
        all.iter().find(|(path, v)| v["request_id"] == id && path.contains(&format!("/{kind}/"))).cloned()
    };
    let (path, inputs) = find("r-1", "inputs").expect("r-1 inputs");
    assert!(path.starts_with(&format!("gbm/3/inputs/{day}/")), "{path}");
    assert_eq!(inputs["inputs"]["inputs"][0]["name"], "x");
    let (path, predictions) = find("r-1", "predictions").expect("r-1 predictions");
    assert!(path.starts_with(&format!("gbm/3/predictions/{day}/")), "{path}");
    assert_eq!(predictions["time"], inputs["time"], "the two halves carry the same time");
    let (_, binary) = find("r-2", "inputs").expect("r-2");
    assert_eq!(
        (binary["inputs"]["inputs"].as_array().map(Vec::len), &binary["binary_data_omitted"]),
        (Some(0), &Value::Bool(true))
    );
    let (path, text) = find("r-3", "inputs").expect("r-3");
    assert!(path.starts_with("unknown/unknown/"), "{path}");
    assert_eq!(text["inputs"], "not json");
}

#[test]
fn the_sample_rate_is_kept_exactly_and_spread() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(CollectConfig::new(root.path().into(), "s", 0.25)).expect("start");
    let picks: Vec<bool> = (0..100).map(|_| c.sample()).collect();
    assert_eq!(picks.iter().filter(|p| **p).count(), 25);
    assert!(picks.chunks(4).all(|w| w.iter().filter(|p| **p).count() == 1), "one in every four");
    assert!(Collector::start(CollectConfig::new(root.path().into(), "s", 0.0)).is_err());
    assert!(Collector::start(CollectConfig::new(root.path().into(), "s", 1.5)).is_err());
}

#[test]
fn files_rotate_by_size_and_the_oldest_go_past_the_budget() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = CollectConfig::new(root.path().into(), "s", 1.0);
    config.max_file_bytes = 4 * 1024;
    config.budget_bytes = 64 * 1024;
    let c = Collector::start(config).expect("start");
    let payload = format!(r#"{{"data":"{}"}}"#, "x".repeat(1000));
    for i in 0..300 {
        c.record(record(&format!("r-{i}"), &payload, r#"{"model_name":"m","model_version":"1"}"#));
        // Paced so the queue never drops: this test is about files, not the queue.
        if i % 50 == 0 {
            settled(&c, i + 1);
        }
    }
    settled(&c, 300);
    assert_eq!(c.stats().dropped.load(Ordering::Relaxed), 0);
    let used = usage(&root.path().join("s"));
    assert!(used.bytes <= 64 * 1024 + 8 * 1024, "{used:?} is over the budget (plus the open files)");
    assert!(used.files > 4, "rotated by size: {used:?}");
    assert!(c.stats().evicted_files.load(Ordering::Relaxed) > 0);
    // What is kept is the newest: the last request's lines are there, the first's are gone.
    let all = lines(&root.path().join("s"));
    assert!(all.iter().any(|(_, v)| v["request_id"] == "r-299"));
    assert!(!all.iter().any(|(_, v)| v["request_id"] == "r-0"));
}

#[test]
fn a_writer_that_falls_behind_drops_and_counts_never_blocks() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = CollectConfig::new(root.path().into(), "s", 1.0);
    config.queue = 1;
    let c = Collector::start(config).expect("start");
    let payload = format!(r#"{{"data":"{}"}}"#, "y".repeat(50_000));
    let started = Instant::now();
    let n = 2000;
    for i in 0..n {
        c.record(record(&format!("r-{i}"), &payload, r#"{"model_name":"m","model_version":"1"}"#));
    }
    let handing_over = started.elapsed();
    settled(&c, n);
    let dropped = c.stats().dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "a one-record queue behind 100 KB records must overflow");
    assert_eq!(c.stats().recorded.load(Ordering::Relaxed) + dropped, n);
    // Handing over never waits for the disk (a loose bound: copying the records dominates).
    assert!(handing_over < Duration::from_secs(5), "{handing_over:?}");
}
