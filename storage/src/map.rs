//! The only module with `unsafe` code for memory maps: read-only maps of
//! segment files.
//!
//! Mapping a file is unsafe because another process (or this one) could
//! truncate or rewrite the file while it is mapped: reads of the map would
//! then see changing bytes or fault (SIGBUS). This crate rules that out for
//! every byte it reads through a map:
//!
//! - a [`SegmentMap`] is only made by a `Partition`, which holds an exclusive
//!   lock on its partition directory for its whole life, so no other starling
//!   process opens the files for writing;
//! - the partition only ever *appends* to a segment past its flushed length:
//!   bytes below it are never rewritten, and it truncates or zeroes a torn
//!   tail only during recovery, before the segment is read through a map;
//! - retention unlinks whole files, which leaves existing maps valid.
//!
//! A segment that is still being written is mapped **once**, at the size it
//! may grow to (`segment_bytes_max`), not again each time a read passes the
//! last map's end: remapping (and unmapping the old map, which costs a TLB
//! shootdown on every core) on the append path stalled a shard for
//! milliseconds. Such a map reaches past the bytes written so far, and past
//! the file's end when the segment is not preallocated; those bytes change
//! (or do not exist) while the map lives. So a map never hands out a
//! reference to all of itself: the type holds a raw map ([`memmap2::MmapRaw`],
//! which never makes references to its interior), and a [`MapSlice`] makes a
//! slice only of a range that was flushed when the slice was made, which
//! stays unchanged for as long as the map exists.
//!
//! Mapped bytes are handed out behind an `Arc<SegmentMap>` (see
//! [`MapSlice`]) so a map outlives the segment that made it for as long as a
//! `Record` refers to it.

use std::fs::File;
use std::io;
use std::sync::Arc;

/// A read-only map of the first `len` bytes of a segment file (which may
/// reach past the bytes written so far).
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: memmap2::MmapRaw,
}

impl SegmentMap {
    /// Maps the first `len` bytes of `file`; `len` may exceed the file's
    /// current length (the pages past its end are never read) but must not
    /// be zero.
    pub(crate) fn map(file: &File, len: u64) -> io::Result<SegmentMap> {
        assert!(len > 0);
        let len = usize::try_from(len)
            .map_err(|_| io::Error::other("segment larger than the address space"))?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw_read_only(file)?;
        Ok(SegmentMap { map })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The bytes `start..end` of the map, kept alive by the returned slice.
    ///
    /// # Safety
    ///
    /// `start..end` must lie inside the map and inside bytes of the file that
    /// are not modified or truncated while the map exists: bytes the
    /// partition had flushed when it learned the range, or any bytes of a
    /// file during recovery, which reads before it writes (see the module
    /// documentation).
    pub(crate) unsafe fn slice(self: &Arc<Self>, start: usize, end: usize) -> MapSlice {
        assert!(
            start <= end && end <= self.len(),
            "a map slice lies in the map"
        );
        MapSlice {
            map: Arc::clone(self),
            start,
            end,
        }
    }
}

/// A range of a map that keeps the map alive: the owner behind zero-copy
/// `Bytes` handed out to readers.
pub(crate) struct MapSlice {
    map: Arc<SegmentMap>,
    /// INVARIANT: `start <= end <= map.len()`, and the file's bytes
    /// `start..end` are never modified or truncated while the map exists
    /// (the contract of [`SegmentMap::slice`], the only constructor).
    start: usize,
    end: usize,
}

impl MapSlice {
    #[cfg(test)]
    pub(crate) fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range lies inside the live map (`self.map` keeps it
        // mapped), and its bytes never change while the map exists (the
        // struct invariant), so a shared slice of them is sound for the
        // lifetime of `&self`. The map is readable (PROT_READ).
        unsafe {
            std::slice::from_raw_parts(self.map.map.as_ptr().add(self.start), self.end - self.start)
        }
    }
}
