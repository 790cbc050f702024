//! Starling inside another Rust program: start the engine without any
//! listener, publish and subscribe through in-process clients.
//!
//! Run with `cargo run -p starling-broker --example embedded`.

use std::sync::Arc;
use std::time::Duration;

use starling_broker::{Engine, EngineConfig, LoopbackAuthorizer, Principal};
use starling_protocol::{HistoryQuery, SubscribeStart};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("starling-embedded-{}", std::process::id()));
    let config = EngineConfig {
        data_dir: data_dir.clone(),
        ..EngineConfig::default()
    };
    // No listeners: only this process talks to the engine.
    let engine = Engine::start(config, Arc::new(LoopbackAuthorizer), Vec::new())?;

    let mut bob = engine.connect(Principal::embedded("bob"));
    bob.subscribe("general", SubscribeStart::Live)?;

    let mut alice = engine.connect(Principal::embedded("alice"));
    let ack = alice.publish("general", "hello from inside the process")?;
    println!("alice published seq {} (durable: {})", ack.seq, ack.durable);

    let (channel, messages) = bob
        .next_delivery(Duration::from_secs(5))
        .ok_or("no delivery within 5 s")?;
    for message in messages.iter() {
        println!(
            "bob got {channel} #{} from {}: {}",
            message.seq,
            String::from_utf8_lossy(&message.sender),
            String::from_utf8_lossy(&message.body)
        );
    }

    let (head, page) = alice.history("general", HistoryQuery::Last, 50)?;
    println!(
        "history of general: {} message(s), head seq {head}",
        page.len()
    );

    drop((alice, bob));
    engine.shutdown()?;
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
