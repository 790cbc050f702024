//! Retention: deleting whole sealed segments from the oldest end.

use crate::segment::Segment;
use crate::worker::CheckpointJob;
use crate::{Partition, RetentionRule, StorageError};

/// What [`Partition::apply_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted.
    pub segments_deleted: usize,
    /// Bytes they held.
    pub bytes_deleted: u64,
    /// Stream position of the first byte still in the log afterwards.
    pub log_start: u64,
}

/// The rule governing `channel`: the one with the longest matching prefix
/// (the first of equals), or `None` (keep forever).
pub(crate) fn rule_for(rules: &[RetentionRule], channel: &[u8]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, rule) in rules.iter().enumerate() {
        let prefix = rule.prefix.as_bytes();
        if channel.starts_with(prefix) && best.is_none_or(|(_, len)| prefix.len() > len) {
            best = Some((index, prefix.len()));
        }
    }
    best.map(|(index, _)| index)
}

/// Whether every record of `segment` is expired. `size_bytes` is the
/// partition size before deleting it.
fn segment_expired(
    rules: &[RetentionRule],
    segment: &Segment,
    now_ms: u64,
    size_bytes: u64,
) -> bool {
    if segment.summary.has_unmatched {
        return false;
    }
    rules
        .iter()
        .zip(&segment.summary.rule_timestamp_max_ms)
        .all(|(rule, timestamp_max_ms)| {
            let Some(timestamp_max_ms) = timestamp_max_ms else {
                return true;
            };
            let too_old = rule
                .max_age_ms
                .is_some_and(|age| *timestamp_max_ms < now_ms.saturating_sub(age));
            let too_far_back = rule
                .max_bytes
                .is_some_and(|max| size_bytes - segment.len >= max);
            too_old || too_far_back
        })
}

impl Partition {
    /// Deletes whole sealed segments from the oldest end while every record
    /// in the segment is expired under its channel's rule: older than
    /// `now_ms - max_age_ms`, or outside the newest `max_bytes` of the
    /// partition (the partition keeps at least `max_bytes`). Channels that
    /// match no rule are kept forever, and so is any segment holding one of
    /// their records. The active segment is never deleted.
    ///
    /// The segments leave the partition at once (reads stop cleanly at the
    /// new start of the log); the background thread writes a checkpoint
    /// (so the seqs of channels whose every record goes away keep counting
    /// after a restart) and then deletes the files
    /// ([`Partition::wait_for_background`] waits for it). Sizes are logical
    /// bytes (the zero tail of a preallocated segment is not counted).
    pub fn apply_retention(&mut self, now_ms: u64) -> Result<RetentionReport, StorageError> {
        let mut size_bytes = self.size_bytes();
        let mut delete = 0;
        while delete + 1 < self.segments.len()
            && segment_expired(
                &self.config.retention,
                &self.segments[delete],
                now_ms,
                size_bytes,
            )
        {
            size_bytes -= self.segments[delete].len;
            delete += 1;
        }
        let mut report = RetentionReport {
            log_start: self.log_start,
            ..RetentionReport::default()
        };
        if delete == 0 {
            return Ok(report);
        }
        let log_start = self.segments[delete].base;
        // The checkpoint lists every channel as of the flushed end (so the
        // seqs of channels whose every record goes away keep counting); the
        // background thread syncs the active segment if needed, writes it,
        // and only then deletes the files. Until then the files stay on
        // disk, and a crash leaves a consistent older state.
        // The handle is duplicated first: a failure leaves the log as it
        // was (before, the segments were already taken out of the log and
        // `log_start` moved: their files were never deleted, and their
        // records came back after a restart).
        let sync = if self.unsynced {
            let active = self
                .segments
                .last()
                .expect("the active segment is never deleted");
            match active.file.try_clone() {
                Ok(file) => Some(file),
                Err(error) => {
                    return Err(StorageError::io(
                        "duplicate the handle of",
                        &active.path,
                        error,
                    ))
                }
            }
        } else {
            None
        };
        let deleted: Vec<Segment> = self.segments.drain(..delete).collect();
        self.log_start = log_start;
        let state = self.checkpoint_state();
        self.checkpointed = Some((state.log_start, state.position));
        let mut paths = Vec::with_capacity(deleted.len());
        for segment in deleted {
            report.segments_deleted += 1;
            report.bytes_deleted += segment.len;
            paths.push(segment.path);
        }
        self.worker.submit(CheckpointJob {
            state,
            sync,
            delete: paths,
        });
        report.log_start = log_start;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str) -> RetentionRule {
        RetentionRule {
            prefix: prefix.to_string(),
            max_age_ms: None,
            max_bytes: None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let rules = vec![rule("dm/"), rule(""), rule("dm/bots/")];
        assert_eq!(rule_for(&rules, b"dm/bots/x"), Some(2));
        assert_eq!(rule_for(&rules, b"dm/alice"), Some(0));
        assert_eq!(rule_for(&rules, b"general"), Some(1));
        assert_eq!(rule_for(&rules[..1], b"general"), None);
    }
}
