//! The per-request routing pick: weighted, sticky and mirror decisions over six versions.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_routing::split::{Split, SplitMix64, VersionSpec};

fn versions() -> Vec<VersionSpec> {
    (0..6)
        .map(|i| VersionSpec {
            name: format!("v{i}"),
            traffic_percentile: if i == 5 { 0.0 } else { 10.0 + i as f64 },
            is_default: i == 0,
            is_control: i == 1,
            shadow_percent: (i == 5).then_some(10.0),
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let split = Split::new(&versions()).expect("valid");
    let mut rng = SplitMix64::new(1);
    c.bench_function("weighted pick, 5 live versions + shadow", |b| {
        b.iter(|| {
            let u = rng.next_unit();
            (split.pick(black_box(u)), split.mirror(u).is_some())
        })
    });
    c.bench_function("sticky pick, 16-byte key", |b| b.iter(|| split.pick_sticky(black_box(b"user-12345678901"))));
}

criterion_group!(benches, pick);
criterion_main!(benches);
