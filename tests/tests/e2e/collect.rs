//! Model data collection in the scoring server: sampled successful requests reach the
//! collector's files, and its counters are on `/metrics`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_collect::{CollectConfig, Collector};
use sluice_e2e::{TestServer, expected, load, model_path, test_config, v2_request};
use sluice_server::ServerConfig;

/// Lines in every file under `dir`.
fn lines_under(dir: &Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += std::fs::read_to_string(&path).expect("read").lines().count();
            }
        }
    }
    count
}

#[tokio::test]
async fn collected_and_dropped_records_are_counted_on_metrics() {
    let root = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(CollectConfig::new(root.path().to_path_buf(), "svc", 0.5)).expect("collector");
    let config = ServerConfig { collector: Some(collector), ..ServerConfig::default() };
    let model = load("mlp-small", "1", &model_path("mlp-small"), test_config());
    let server = TestServer::start(vec![model], config).await;

    let body = v2_request(&expected("mlp-small"));
    for _ in 0..10 {
        assert_eq!(server.post_json("/v2/models/mlp-small/infer", &body).await.0, 200);
    }
    // A refused request is not one the model saw: not collected.
    let (status, _) = server.post_json("/v2/models/mlp-small/infer", &json!({ "inputs": "nonsense" })).await;
    assert_eq!(status, 400);

    let metrics = || async { server.client.get(server.url("/metrics")).send().await.expect("metrics").text().await };
    let started = Instant::now();
    // Half of the ten successful requests, written off the request path (and flushed when the
    // writer has nothing more to do): each one line of inputs and one of predictions.
    let text = loop {
        let text = metrics().await.expect("text");
        let lines = lines_under(&root.path().join("svc"));
        if text.contains("\nsluice_collected_records_total 5\n") && lines == 10 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "five records were not written ({lines} lines): {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("# TYPE sluice_collect_dropped_records_total counter"), "{text}");
    assert!(text.contains("\nsluice_collect_dropped_records_total 0\n"), "{text}");
    assert!(text.contains("\nsluice_collect_evicted_files_total 0\n"), "{text}");

    // A server without collection has no such series.
    let plain = TestServer::bundled(&["mlp-small"]).await;
    let text = plain.client.get(plain.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(!text.contains("sluice_collect"), "{text}");
    plain.stop().await;
    server.stop().await;
}
