//! The only module with `unsafe` code: read-only memory maps of segment files.
//!
//! Mapping a file is unsafe because another process (or this one) could
//! truncate or rewrite the file while it is mapped: reads of the map would
//! then see changing bytes or fault (SIGBUS). This crate rules that out:
//!
//! - a [`SegmentMap`] is only made by a `Partition`, which holds an exclusive
//!   lock on its partition directory for its whole life, so no other starling
//!   process opens the files for writing;
//! - the partition only ever *appends* to a segment past the mapped length
//!   (bytes inside the map are never rewritten; a preallocated segment's zero
//!   tail beyond the logical end is never mapped), and it truncates or zeroes
//!   a torn tail only during recovery, before any map of it exists;
//! - retention unlinks whole files, which leaves existing maps valid.
//!
//! Mapped bytes are handed out behind an `Arc<SegmentMap>` (see
//! [`MapSlice`]) so a map outlives the segment that made it for as long as a
//! `Record` refers to it.

use std::fs::File;
use std::io;
use std::sync::Arc;

/// A read-only map of the first `len` bytes of a segment file.
///
/// INVARIANT: the mapped bytes are never modified or truncated while this map
/// exists (see the module documentation for why that holds).
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: memmap2::Mmap,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file`. `len` must not exceed the file
    /// length and must not be zero.
    pub(crate) fn map(file: &File, len: u64) -> io::Result<SegmentMap> {
        assert!(len > 0);
        let len = usize::try_from(len)
            .map_err(|_| io::Error::other("segment larger than the address space"))?;
        // SAFETY: the file belongs to a partition directory that this process
        // holds an exclusive lock on; the partition never modifies or shrinks
        // bytes below `len` while a map exists (it only appends beyond the
        // flushed length and truncates only during recovery, before mapping).
        // See the module documentation.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(SegmentMap { map })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A range of a map that keeps the map alive: the owner behind zero-copy
/// `Bytes` handed out to readers.
pub(crate) struct MapSlice {
    pub(crate) map: Arc<SegmentMap>,
    /// INVARIANT: `start <= end <= map.len()`.
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}
