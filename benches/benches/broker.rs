//! The broker's hot paths: a bare cross-core queue hop, and in-process
//! publish → acknowledge → deliver through the engine, with the channel owned
//! by the clients' own shard or by another one (the cross-core hop), under
//! the `none` and `fsync` durability policies.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use starling_broker::{
    Durability, Engine, EngineConfig, LocalClient, LoopbackAuthorizer, Principal,
};
use starling_protocol::SubscribeStart;

/// Round trip of one message through two bounded lock-free queues between
/// two threads: the primitive every cross-core hop uses.
fn queue_hop(c: &mut Criterion) {
    let to_peer = Arc::new(ArrayQueue::<u64>::new(1024));
    let from_peer = Arc::new(ArrayQueue::<u64>::new(1024));
    let (inbound, outbound) = (to_peer.clone(), from_peer.clone());
    let peer = thread::spawn(move || loop {
        if let Some(value) = inbound.pop() {
            if value == u64::MAX {
                return;
            }
            while outbound.push(value).is_err() {}
        } else {
            std::hint::spin_loop();
        }
    });
    c.bench_function("cross_core/array_queue_round_trip", |b| {
        b.iter(|| {
            while to_peer.push(1).is_err() {}
            loop {
                if let Some(value) = from_peer.pop() {
                    break value;
                }
                std::hint::spin_loop();
            }
        })
    });
    while to_peer.push(u64::MAX).is_err() {}
    peer.join().unwrap();
}

/// A channel whose owner is (or is not) `shard`.
fn channel_owned(engine: &Engine, shard: usize, owned: bool) -> String {
    (0..)
        .map(|i| format!("bench-{i}"))
        .find(|name| (engine.routing().shard_of(name) == shard) == owned)
        .expect("some name matches")
}

fn publish_deliver(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_deliver");
    group.throughput(Throughput::Elements(1));
    for durability in [Durability::None, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            shards: 2,
            partitions: 4,
            data_dir: dir.path().to_path_buf(),
            durability,
            ..EngineConfig::default()
        };
        let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new()).unwrap();
        // Clients are dealt to shards round-robin: both of these land on shard 0.
        let mut publisher: LocalClient = engine.connect(Principal::embedded("publisher"));
        let _spacer = engine.connect(Principal::embedded("spacer"));
        let mut subscriber = engine.connect(Principal::embedded("subscriber"));
        for (label, owned) in [("same_shard", true), ("cross_shard", false)] {
            let channel = channel_owned(&engine, 0, owned);
            subscriber
                .subscribe(&channel, SubscribeStart::Live)
                .unwrap();
            let body = vec![b'x'; 256];
            let name = format!("{durability:?}/{label}").to_lowercase();
            group.bench_function(name, |b| {
                b.iter(|| {
                    publisher.publish(&channel, body.clone()).unwrap();
                    subscriber
                        .next_delivery(Duration::from_secs(5))
                        .expect("delivered")
                })
            });
        }
        drop((publisher, subscriber));
        engine.shutdown().expect("a clean stop");
    }
    group.finish();
}

criterion_group!(benches, queue_hop, publish_deliver);
criterion_main!(benches);
