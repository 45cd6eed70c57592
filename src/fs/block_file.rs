//! The on-disk form of cached blocks. The blocks of one object version are kept in group
//! files of `GROUP_BLOCKS` aligned blocks each, named by the version's tag and the group's
//! number (both hexadecimal): a stream's blocks then cost one file per group instead of one
//! per block, and creating files (inode allocation, which on a busy filesystem scans past
//! recently freed inodes) was most of what caching a stream cost. Slot `s` of a group file
//! holds its block's data at `s * BLOCK` (aligned, for `O_DIRECT` and for the page cache's
//! large folios), and the page after the last slot holds one record per slot (the CRC-32 of
//! the slot's data, its length and a marker). A slot counts only once its record vouches for
//! its data: the record is written after the data, and a block torn by a crash fails its
//! checksum. An evicted slot has its record
//! cleared and its data punched out, so the disk holds what the index counts.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use super::block_cache::{BlockId, ObjectTag, BLOCK};

/// Blocks in one group file.
pub(super) const GROUP_BLOCKS: u32 = 8;
/// Where the slots' records start: after the last slot.
const RECORDS_AT: u64 = GROUP_BLOCKS as u64 * BLOCK;
/// The page of records (tests count what the disk holds without it).
#[cfg(test)]
pub(super) const RECORDS_PAGE: u64 = 4096;
/// Bytes of one slot's record in the header.
const RECORD: usize = 16;
const MARKER: &[u8; 4] = b"PFG1";

/// Alignment of direct writes: a multiple of every disk's logical sector size.
const DIRECT_ALIGN: usize = super::read_buffers::BUFFER_ALIGN;

/// One group file: `GROUP_BLOCKS` consecutive aligned blocks of one object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct GroupId {
    pub(super) tag: ObjectTag,
    pub(super) group: u32,
}

impl BlockId {
    pub(super) fn group(self) -> GroupId {
        GroupId {
            tag: self.tag,
            group: self.index / GROUP_BLOCKS,
        }
    }

    pub(super) fn slot(self) -> u32 {
        self.index % GROUP_BLOCKS
    }

    /// Where the block's data starts in its group file.
    pub(super) fn offset(self) -> u64 {
        u64::from(self.slot()) * BLOCK
    }

    /// Where the block's record is in its group file.
    fn record_at(self) -> u64 {
        RECORDS_AT + u64::from(self.slot()) * RECORD as u64
    }
}

impl GroupId {
    /// The group's file name.
    pub(super) fn name(self) -> String {
        format!("{:032x}-{:x}", self.tag.0, self.group)
    }

    /// The blocks of the group.
    pub(super) fn blocks(self) -> impl Iterator<Item = BlockId> {
        (0..GROUP_BLOCKS).filter_map(move |slot| {
            let index = self.group.checked_mul(GROUP_BLOCKS)?.checked_add(slot)?;
            Some(BlockId {
                tag: self.tag,
                index,
            })
        })
    }
}

/// The group a file name (`TAG-GROUP`, both hexadecimal) stands for.
pub(super) fn parse_name(name: &str) -> Option<GroupId> {
    let (tag, group) = name.split_once('-')?;
    Some(GroupId {
        tag: ObjectTag(u128::from_str_radix(tag, 16).ok()?),
        group: u32::from_str_radix(group, 16).ok()?,
    })
}

/// The record of a slot holding `data`.
fn record(data: &[u8]) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..4].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    out[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out[8..12].copy_from_slice(MARKER);
    out
}

/// The CRC-32 and length a record vouches for, if it is one.
fn parse_record(raw: &[u8]) -> Option<(u32, u32)> {
    let crc = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(raw.get(4..8)?.try_into().ok()?);
    let good = raw.get(8..12)? == MARKER && len > 0 && u64::from(len) <= BLOCK;
    good.then_some((crc, len))
}

/// The slots of a group file whose records vouch for data the file holds, as (slot, length).
pub(super) fn stored_slots(file: &std::fs::File) -> std::io::Result<Vec<(u32, u32)>> {
    let size = file.metadata()?.len();
    let mut header = vec![0u8; GROUP_BLOCKS as usize * RECORD];
    let got = match size > RECORDS_AT {
        true => file.read_at(&mut header, RECORDS_AT)?,
        false => 0,
    };
    Ok((0..GROUP_BLOCKS)
        .filter_map(|slot| {
            let at = slot as usize * RECORD;
            let (_, len) = parse_record(header.get(at..(at + RECORD).min(got))?)?;
            let end = u64::from(slot) * BLOCK + u64::from(len);
            (end <= size).then_some((slot, len))
        })
        .collect())
}

/// Whether `file` holds any data in the block-sized slot at `offset` (not a hole).
pub(super) fn holds_data(file: &std::fs::File, offset: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor `file` keeps open; no memory is passed. Moving the
    // offset of a descriptor only read with positioned reads is harmless.
    let next = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    // A failure (no data past `offset`, or no SEEK_DATA) reads as a hole.
    next >= 0 && (next as u64) < offset + BLOCK
}

/// Reads block `id` whole from its group file into a buffer from `buffer(len)` and checks
/// it against its record: `None` when the record or the data is missing or wrong.
pub(super) fn read_slot(
    file: &std::fs::File,
    id: BlockId,
    buffer: impl FnOnce(usize) -> BytesMut,
) -> Option<Bytes> {
    let mut raw = [0u8; RECORD];
    file.read_exact_at(&mut raw, id.record_at()).ok()?;
    let (crc, len) = parse_record(&raw)?;
    let mut data = buffer(len as usize);
    file.read_exact_at(&mut data, id.offset()).ok()?;
    (crc32fast::hash(&data) == crc).then(|| data.freeze())
}

/// Writes and clears slots of group files, one at a time (the cache holds it under a lock).
/// A stream's block goes to disk with `O_DIRECT`: written through the page cache, a cold
/// stream's blocks would cost a copy into fresh page-cache pages, the filesystem's
/// delayed-allocation bookkeeping and the kernel's writeback later, nearly as much CPU as the
/// read itself on a small machine, and they would push out pages that programs use. Direct
/// writes need aligned memory: a block not aligned already passes through one aligned buffer
/// (a copy in user space). Where the filesystem refuses `O_DIRECT` (tmpfs), blocks are
/// written through the page cache. The group file last written stays open: a stream writes
/// a group's slots one after another.
pub(super) struct BlockWriter {
    /// Room for one block, plus slack to start it at an aligned address.
    scratch: Vec<u8>,
    direct: bool,
    open: Option<OpenGroup>,
}

/// The group file being written: a descriptor through the page cache (records, short
/// tails), and one with `O_DIRECT` once a direct write needs it.
struct OpenGroup {
    group: GroupId,
    buffered: std::fs::File,
    direct: Option<std::fs::File>,
}

impl BlockWriter {
    pub(super) fn new() -> BlockWriter {
        BlockWriter {
            scratch: Vec::new(),
            direct: true,
            open: None,
        }
    }

    /// Writes `data` into the slot of block `id` in its group file at `path`, then the
    /// slot's record. A write cut short (a crash, a full disk) leaves a slot whose record
    /// does not vouch for it: the first read by a later mount checks every block it did not
    /// write itself, and drops such a block.
    pub(super) fn write(
        &mut self,
        path: &Path,
        id: BlockId,
        data: &[u8],
        direct: bool,
    ) -> std::io::Result<()> {
        // A filesystem refuses O_DIRECT at open (tmpfs), or takes the flag and refuses the
        // aligned write itself: either way this block, and every one after it, goes through
        // the page cache.
        let direct = direct && self.direct;
        let mut result = self.write_data(path, id, data, direct);
        if direct && result.as_ref().is_err_and(refused) {
            tracing::debug!(path = %path.display(), "the data cache's filesystem refuses O_DIRECT; blocks go through the page cache");
            self.direct = false;
            result = self.write_data(path, id, data, false);
        }
        result?;
        let group = group_file(&mut self.open, id.group(), path, true)?;
        group.buffered.write_all_at(&record(data), id.record_at())
    }

    fn write_data(
        &mut self,
        path: &Path,
        id: BlockId,
        data: &[u8],
        direct: bool,
    ) -> std::io::Result<()> {
        // The aligned head of the data goes direct; the rest (a short last block's tail)
        // through the page cache.
        let direct_len = match direct {
            true => data.len() / DIRECT_ALIGN * DIRECT_ALIGN,
            false => 0,
        };
        if direct_len > 0 {
            let head = &data[..direct_len];
            // A block of a read-ahead part is aligned already (see `BufferPool`).
            let head = match head.as_ptr().align_offset(DIRECT_ALIGN) {
                0 => head,
                _ => {
                    let scratch = aligned(&mut self.scratch, direct_len);
                    scratch.copy_from_slice(head);
                    scratch
                }
            };
            let group = group_file(&mut self.open, id.group(), path, true)?;
            let file = match &group.direct {
                Some(file) => file,
                None => group.direct.insert(open_group(path, libc::O_DIRECT, true)?),
            };
            file.write_all_at(head, id.offset())?;
        }
        let group = group_file(&mut self.open, id.group(), path, true)?;
        group
            .buffered
            .write_all_at(&data[direct_len..], id.offset() + direct_len as u64)
    }

    /// Clears the slot of block `id` in its group file at `path`: its record first (so the
    /// slot no longer counts, whatever happens next), then its data, punched out of the
    /// file. A filesystem that cannot punch holes keeps the bytes until the group's file
    /// goes.
    pub(super) fn clear(&mut self, path: &Path, id: BlockId) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let group = match group_file(&mut self.open, id.group(), path, false) {
            Ok(group) => &group.buffered,
            // Gone already: nothing to clear.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        group.write_all_at(&[0u8; RECORD], id.record_at())?;
        // SAFETY: fallocate on a descriptor `group` keeps open; no memory is passed.
        let punched = unsafe {
            libc::fallocate(
                group.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                id.offset() as libc::off_t,
                BLOCK as libc::off_t,
            )
        };
        if punched < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "a cached block's bytes could not be punched out of its group file");
        }
        Ok(())
    }

    /// Removes the file of `group`, at `path` (none of its blocks is held any more).
    pub(super) fn remove(&mut self, path: &Path, group: GroupId) -> std::io::Result<()> {
        if self.open.as_ref().is_some_and(|o| o.group == group) {
            self.open = None;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The open group file `group` (at `path`; created if need be when `create`), which becomes
/// the one kept open.
fn group_file<'a>(
    open: &'a mut Option<OpenGroup>,
    group: GroupId,
    path: &Path,
    create: bool,
) -> std::io::Result<&'a mut OpenGroup> {
    if let Some(current) = open.take_if(|o| o.group == group) {
        return Ok(open.insert(current));
    }
    *open = None;
    if create {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let buffered = open_group(path, 0, create)?;
    Ok(open.insert(OpenGroup {
        group,
        buffered,
        direct: None,
    }))
}

/// `len` bytes of `scratch`, starting at an aligned address (grown to fit).
fn aligned(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len + DIRECT_ALIGN {
        *scratch = vec![0u8; len + DIRECT_ALIGN];
    }
    let skip = scratch.as_ptr().align_offset(DIRECT_ALIGN);
    &mut scratch[skip..skip + len]
}

/// Whether an error is a filesystem refusing `O_DIRECT`.
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

fn open_group(path: &Path, flags: i32, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(flags)
        .open(path)
}

/// Starts reading `len` bytes of `file` at `offset` into the page cache, without waiting.
pub(super) fn will_need(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: an advice call on a descriptor `file` keeps open; no memory is passed. A
    // failure only means the later read waits for the disk.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_WILLNEED,
        );
    }
}

/// Fills `buf` from `file` at `offset` only from the page cache (`RWF_NOWAIT`): `WouldBlock`
/// when the bytes would have to come from the disk.
pub(super) fn read_exact_now(
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        // SAFETY: the iovec points into `buf`, which outlives the call; the descriptor is
        // open for as long as `file` lives.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let err = std::io::Error::last_os_error();
                return Err(match err.raw_os_error() {
                    // Not in the page cache, or a filesystem without RWF_NOWAIT.
                    Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) => {
                        std::io::ErrorKind::WouldBlock.into()
                    }
                    _ => err,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u32) -> BlockId {
        BlockId {
            tag: ObjectTag(0xfeed),
            index,
        }
    }

    fn read_back(path: &Path, id: BlockId) -> Option<Bytes> {
        let file = std::fs::File::open(path).unwrap();
        read_slot(&file, id, BytesMut::zeroed)
    }

    /// Every length shape (aligned, a tail, shorter than one page), from aligned and unaligned
    /// memory, direct and through the page cache: each slot reads back as its data, and its
    /// record counts it as stored.
    #[test]
    fn blocks_are_written_whole_direct_or_not() {
        // tmpfs as well, where O_DIRECT may be refused (the writer falls back).
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(shm);
        }
        let source: Vec<u8> = (0..(1 << 20) + 8192).map(|i| (i * 7 % 251) as u8).collect();
        let lens = [1 << 20, (1 << 20) - 100, 5000, 10];
        for (dir, direct) in dirs.iter().flat_map(|d| [(d, true), (d, false)]) {
            for skew in [0, 1] {
                let mut writer = BlockWriter::new();
                writer.direct = direct;
                let path = dir.path().join(format!("g/{direct}-{skew}"));
                let start = source.as_ptr().align_offset(DIRECT_ALIGN) + skew;
                for (slot, len) in lens.into_iter().enumerate() {
                    let data = &source[start..start + len];
                    writer
                        .write(&path, id(8 + slot as u32), data, true)
                        .unwrap();
                }
                for (slot, len) in lens.into_iter().enumerate() {
                    let data = &source[start..start + len];
                    let back = read_back(&path, id(8 + slot as u32));
                    assert_eq!(back.as_deref(), Some(data), "{direct} {len} {skew}");
                }
                let file = std::fs::File::open(&path).unwrap();
                let stored = stored_slots(&file).unwrap();
                let expected: Vec<(u32, u32)> = (0..4).zip(lens.map(|l| l as u32)).collect();
                assert_eq!(stored, expected);
            }
        }
    }

    /// A cleared slot no longer counts and its bytes leave the disk; the others stay whole.
    #[test]
    fn a_cleared_slot_is_gone_and_its_neighbours_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let mut writer = BlockWriter::new();
        let data: Vec<u8> = (0..BLOCK as usize).map(|i| (i % 253) as u8).collect();
        for index in 0..3 {
            writer.write(&path, id(index), &data, false).unwrap();
        }
        let allocated = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).unwrap().blocks() * 512
        };
        let before = allocated();
        // From another writer, as after a remount.
        BlockWriter::new().clear(&path, id(1)).unwrap();
        assert_eq!(read_back(&path, id(1)), None);
        assert_eq!(read_back(&path, id(0)).as_deref(), Some(&data[..]));
        assert_eq!(read_back(&path, id(2)).as_deref(), Some(&data[..]));
        let file = std::fs::File::open(&path).unwrap();
        let slots: Vec<u32> = stored_slots(&file).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(slots, vec![0, 2]);
        assert!(
            allocated() <= before - BLOCK,
            "{} of {before} bytes",
            allocated()
        );
        writer.remove(&path, id(0).group()).unwrap();
        assert!(!path.exists());
    }

    /// A changed byte in a slot's data, or a damaged record, is caught; a file cut short
    /// loses its records, so none of its slots counts.
    #[test]
    fn a_damaged_slot_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        let mut writer = BlockWriter::new();
        let data = vec![7u8; 10_000];
        for index in 0..3 {
            writer.write(&path, id(index), &data, false).unwrap();
        }
        let mut raw = std::fs::read(&path).unwrap();
        raw[5] ^= 1;
        raw[id(1).record_at() as usize + 9] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert_eq!(read_back(&path, id(0)), None);
        assert_eq!(read_back(&path, id(1)), None);
        assert_eq!(read_back(&path, id(2)).as_deref(), Some(&data[..]));
        let file = std::fs::File::open(&path).unwrap();
        let slots: Vec<u32> = stored_slots(&file).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(slots, vec![0, 2]);
        std::fs::write(&path, &raw[..RECORDS_AT as usize]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(stored_slots(&file).unwrap(), vec![]);
    }
}
