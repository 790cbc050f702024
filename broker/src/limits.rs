//! Abuse limits: publish rates per connection and per user (messages/s and
//! bytes/s), and connections per address (open at once, and new ones per
//! second). Every limit is 0 (off) by default; docs/SECURITY.md lists them
//! in the hardening checklist.
//!
//! Rates use GCRA (the generic cell rate algorithm): one "theoretical
//! arrival time" per limit, one second of burst. A connection's limiter is
//! plain memory of its shard; a user's is shared by the user's connections
//! on every shard as atomics (no lock per message), found once per
//! connection in a registry that only connection set-up locks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;

use crate::EngineConfig;

/// Nanoseconds in the burst every limit allows on top of its rate.
const BURST_NS: u64 = 1_000_000_000;

/// GCRA: admits `cost` units at `rate_per_s` with one second of burst.
/// `tat` is the theoretical arrival time (ns since the limiter's epoch).
fn admit(tat: u64, now_ns: u64, cost: u64, rate_per_s: u64) -> Option<u64> {
    if rate_per_s == 0 {
        return Some(tat);
    }
    let increment = cost.saturating_mul(1_000_000_000) / rate_per_s;
    let new_tat = tat.max(now_ns).saturating_add(increment);
    (new_tat - now_ns <= BURST_NS + increment.min(BURST_NS)).then_some(new_tat)
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// The limits that apply to a connection's publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub messages_per_s: u64,
    pub bytes_per_s: u64,
}

impl RateLimits {
    pub fn is_off(&self) -> bool {
        self.messages_per_s == 0 && self.bytes_per_s == 0
    }
}

/// A connection's limiter (owned by its shard).
#[derive(Debug)]
pub struct ConnectionLimiter {
    epoch: Instant,
    messages_tat: u64,
    bytes_tat: u64,
}

impl ConnectionLimiter {
    pub fn new() -> ConnectionLimiter {
        ConnectionLimiter {
            epoch: Instant::now(),
            messages_tat: 0,
            bytes_tat: 0,
        }
    }

    /// Admits one message of `bytes`, or says which limit it passes.
    pub fn admit(&mut self, limits: RateLimits, bytes: u64) -> Result<(), String> {
        let now = now_ns(self.epoch);
        let messages =
            admit(self.messages_tat, now, 1, limits.messages_per_s).ok_or_else(|| {
                format!(
                    "at most {} messages/s per connection",
                    limits.messages_per_s
                )
            })?;
        let bytes_tat = admit(self.bytes_tat, now, bytes, limits.bytes_per_s)
            .ok_or_else(|| format!("at most {} bytes/s per connection", limits.bytes_per_s))?;
        self.messages_tat = messages;
        self.bytes_tat = bytes_tat;
        Ok(())
    }
}

impl Default for ConnectionLimiter {
    fn default() -> Self {
        ConnectionLimiter::new()
    }
}

/// A user's limiter, shared by all of the user's connections.
#[derive(Debug)]
pub struct UserLimiter {
    epoch: Instant,
    messages_tat: AtomicU64,
    bytes_tat: AtomicU64,
}

fn admit_shared(tat: &AtomicU64, now: u64, cost: u64, rate_per_s: u64) -> bool {
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        let Some(next) = admit(current, now, cost, rate_per_s) else {
            return false;
        };
        match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

impl UserLimiter {
    /// Admits one message of `bytes` for the user, or says which limit it
    /// passes. (A message refused by the byte limit has used a message
    /// slot: close enough for an abuse limit.)
    pub fn admit(&self, limits: RateLimits, bytes: u64) -> Result<(), String> {
        let now = now_ns(self.epoch);
        if !admit_shared(&self.messages_tat, now, 1, limits.messages_per_s) {
            return Err(format!(
                "at most {} messages/s per user",
                limits.messages_per_s
            ));
        }
        if !admit_shared(&self.bytes_tat, now, bytes, limits.bytes_per_s) {
            return Err(format!("at most {} bytes/s per user", limits.bytes_per_s));
        }
        Ok(())
    }
}

/// The user limiters in use, by user name.
#[derive(Default)]
pub struct UserLimiters {
    users: Mutex<HashMap<Arc<str>, Weak<UserLimiter>>>,
}

impl UserLimiters {
    /// The limiter of `user` (made on first use; forgotten when the user's
    /// last connection goes).
    pub fn get(&self, user: &Arc<str>) -> Arc<UserLimiter> {
        let mut users = self.users.lock();
        if let Some(limiter) = users.get(user).and_then(Weak::upgrade) {
            return limiter;
        }
        let limiter = Arc::new(UserLimiter {
            epoch: Instant::now(),
            messages_tat: AtomicU64::new(0),
            bytes_tat: AtomicU64::new(0),
        });
        users.insert(user.clone(), Arc::downgrade(&limiter));
        if users.len().is_power_of_two() && users.len() >= 1024 {
            users.retain(|_, limiter| limiter.strong_count() > 0);
        }
        limiter
    }
}

/// Connections per address: how many are open, and how fast new ones come.
pub struct AddressLimits {
    open_max: u32,
    new_per_s: u64,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Owned by the acceptor thread alone (no contention); behind a mutex
    /// only so that the struct can be shared.
    arrivals: Mutex<HashMap<IpAddr, u64>>,
    epoch: Instant,
}

/// The most addresses whose arrival rate is remembered; beyond it the
/// oldest are forgotten (a flood of addresses cannot grow memory).
const ARRIVALS_TRACKED_MAX: usize = 100_000;

impl AddressLimits {
    pub fn new(config: &EngineConfig) -> AddressLimits {
        AddressLimits {
            open_max: config.connections_per_address_max,
            new_per_s: config.new_connections_per_s_per_address,
            open: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Whether a new connection from `address` may open; counts it if so.
    pub fn admit(&self, address: IpAddr) -> Result<(), String> {
        if self.new_per_s > 0 {
            let now = now_ns(self.epoch);
            let mut arrivals = self.arrivals.lock();
            let tat = arrivals.get(&address).copied().unwrap_or(0);
            match admit(tat, now, 1, self.new_per_s) {
                Some(next) => {
                    arrivals.insert(address, next);
                }
                None => {
                    return Err(format!(
                        "more than {} new connections/s from {address}",
                        self.new_per_s
                    ))
                }
            }
            if arrivals.len() > ARRIVALS_TRACKED_MAX {
                arrivals.retain(|_, tat| *tat > now);
            }
        }
        if self.open_max > 0 {
            let mut open = self.open.lock();
            let count = open.entry(address).or_insert(0);
            if *count >= self.open_max {
                return Err(format!(
                    "{address} already has {} connections open",
                    self.open_max
                ));
            }
            *count += 1;
        }
        Ok(())
    }

    /// A connection from `address` closed.
    pub fn closed(&self, address: IpAddr) {
        if self.open_max > 0 {
            let mut open = self.open.lock();
            if let Some(count) = open.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_rate_and_a_second_of_burst() {
        // 10 per second: a burst of about 10 at once, then one per 100 ms.
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..50 {
            if let Some(next) = admit(tat, 0, 1, 10) {
                tat = next;
                admitted += 1;
            }
        }
        assert!((10..=12).contains(&admitted), "{admitted}");
        assert!(admit(tat, 50_000_000, 1, 10).is_none());
        assert!(admit(tat, 200_000_000, 1, 10).is_some());
        assert_eq!(admit(5, 0, 1_000_000, 0), Some(5), "0 is off");
    }

    #[test]
    fn users_share_one_limiter() {
        let limiters = UserLimiters::default();
        let alice: Arc<str> = Arc::from("alice");
        let first = limiters.get(&alice);
        let second = limiters.get(&alice);
        assert!(Arc::ptr_eq(&first, &second));
        let limits = RateLimits {
            messages_per_s: 5,
            bytes_per_s: 0,
        };
        let admitted = (0..40)
            .filter(|i| {
                let limiter = if i % 2 == 0 { &first } else { &second };
                limiter.admit(limits, 10).is_ok()
            })
            .count();
        assert!((5..=8).contains(&admitted), "{admitted}");
    }
}
