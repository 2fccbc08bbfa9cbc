//! A closed-loop HTTP/1.1 load generator that keeps latency apart by status, for the overload
//! soak (benches/overload_soak.sh): wrk reports one latency distribution for all answers, and
//! under overload the quick 503s would hide how long admitted requests took.
//!
//! ```text
//! cargo run --release -p sluice-http1 --example status_load -- ADDR PATH BODY_FILE CONNECTIONS SECONDS [RATE]
//! ```
//!
//! With RATE (requests per second over all connections), each connection sends on a schedule of
//! RATE / CONNECTIONS per second instead of as fast as answers come, catching up when behind, so
//! the offered load does not grow when refusals get cheaper.
//!
//! Prints one JSON line: per status, the count and p50/p90/p99/max latency in microseconds, plus
//! the requests per second and connection errors.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` over and over on one keep-alive connection until `end`; returns each answer's
/// (status, microseconds) and the number of connection failures (each followed by a reconnect).
async fn connection(
    addr: String,
    request: Vec<u8>,
    end: Instant,
    interval: Option<Duration>,
) -> (Vec<(u16, u32)>, u64) {
    let mut next_send = Instant::now();
    let mut seen = Vec::new();
    let mut failures = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    'connect: while Instant::now() < end {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < end {
            if let Some(interval) = interval {
                if next_send > Instant::now() {
                    tokio::time::sleep_until(next_send.into()).await;
                }
                next_send += interval;
            }
            let started = Instant::now();
            if stream.write_all(&request).await.is_err() {
                failures += 1;
                continue 'connect;
            }
            buf.clear();
            // Read one answer: its head, then Content-Length bytes of body.
            let (status, close) = loop {
                let mut chunk = [0u8; 16 * 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        failures += 1;
                        continue 'connect;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let Some(end_of_head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end_of_head]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end_of_head + 4 + length {
                    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                    break (status, head.contains("connection: close"));
                }
            };
            seen.push((status, u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)));
            if close {
                continue 'connect;
            }
        }
        break;
    }
    (seen, failures)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, path, body_file, connections, seconds, rate) = match args.as_slice() {
        [_, a, p, b, c, s] => (a, p, b, c, s, None),
        [_, a, p, b, c, s, r] => (a, p, b, c, s, Some(r.parse::<f64>().expect("rate"))),
        _ => {
            eprintln!("usage: status_load ADDR PATH BODY_FILE CONNECTIONS SECONDS [RATE]");
            std::process::exit(64);
        }
    };
    let body = std::fs::read(body_file).expect("body file");
    let connections: usize = connections.parse().expect("connections");
    let seconds: f64 = seconds.parse().expect("seconds");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let interval = rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(connections as f64 / r));
    let tasks: Vec<_> =
        (0..connections).map(|_| tokio::spawn(connection(addr.clone(), request.clone(), end, interval))).collect();
    let mut by_status: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    let mut failures = 0;
    for t in tasks {
        let (seen, failed) = t.await.expect("connection task");
        failures += failed;
        for (status, micros) in seen {
            by_status.entry(status).or_default().push(micros);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: usize = by_status.values().map(Vec::len).sum();
    let statuses: serde_json::Map<String, serde_json::Value> = by_status
        .iter_mut()
        .map(|(status, micros)| {
            micros.sort_unstable();
            let summary = serde_json::json!({
                "count": micros.len(),
                "p50_us": percentile(micros, 50.0),
                "p90_us": percentile(micros, 90.0),
                "p99_us": percentile(micros, 99.0),
                "max_us": micros.last().copied().unwrap_or(0),
            });
            (status.to_string(), summary)
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "connections": connections,
            "rate": rate,
            "seconds": elapsed,
            "rps": total as f64 / elapsed,
            "connection_failures": failures,
            "status": statuses,
        })
    );
}
