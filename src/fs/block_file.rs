//! The on-disk form of one cached block: its file name (the object version's tag and the
//! block's index, in hexadecimal), the CRC-32 trailer after its data that tells a whole block
//! from a torn one, and the read that takes bytes only from the page cache.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use super::block_cache::{BlockId, ObjectTag};

/// Bytes after a block's data: CRC-32 of the data, its length, and a marker.
pub(super) const TRAILER: usize = 12;
const MARKER: &[u8; 4] = b"PFB1";

/// Alignment of direct writes: a multiple of every disk's logical sector size.
const DIRECT_ALIGN: usize = super::read_buffers::BUFFER_ALIGN;

/// Writes block files, one at a time (the cache holds it under a lock). A streamed block goes
/// to disk with `O_DIRECT`: written through the page cache, a cold stream's blocks would cost a
/// copy into fresh page-cache pages, the filesystem's delayed-allocation bookkeeping and the
/// kernel's writeback later, nearly as much CPU as the read itself on a small machine, and
/// they would push out pages that programs use. Direct writes need aligned memory: a block not
/// aligned already passes through one aligned buffer (a copy in user space). Where the
/// filesystem refuses `O_DIRECT` (tmpfs), blocks are written through the page cache.
pub(super) struct BlockWriter {
    /// Room for one block, plus slack to start it at an aligned address.
    scratch: Vec<u8>,
    direct: bool,
}

impl BlockWriter {
    pub(super) fn new() -> BlockWriter {
        BlockWriter {
            scratch: Vec::new(),
            direct: true,
        }
    }

    /// Writes `data` and its trailer to `path`. A write cut short (a crash, a full disk)
    /// leaves a file whose trailer does not vouch for it: the first read by a later mount
    /// checks every block it did not write itself, and drops such a file. (No temporary name
    /// and rename: a block is never read from its file while being written, and the create
    /// and rename would cost more CPU than the checksum.)
    pub(super) fn write(&mut self, path: &Path, data: &[u8], direct: bool) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A filesystem refuses O_DIRECT at open (tmpfs), or takes the flag and refuses the
        // aligned write itself: either way this block, and every one after it, goes through
        // the page cache.
        let direct = direct && self.direct;
        let mut result = self.write_file(path, data, direct);
        if direct && result.as_ref().is_err_and(refused) {
            tracing::debug!(path = %path.display(), "the data cache's filesystem refuses O_DIRECT; blocks go through the page cache");
            self.direct = false;
            result = self.write_file(path, data, false);
        }
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn write_file(&mut self, path: &Path, data: &[u8], direct: bool) -> std::io::Result<()> {
        let file = open_new(path, if direct { libc::O_DIRECT } else { 0 })?;
        // The aligned head of the data goes direct; the rest and the trailer (a few bytes)
        // through the page cache, once O_DIRECT is off.
        let direct_len = match direct {
            true => data.len() / DIRECT_ALIGN * DIRECT_ALIGN,
            false => 0,
        };
        if direct_len > 0 {
            let head = &data[..direct_len];
            // A block of a read-ahead part is aligned already (see `BufferPool`).
            let aligned = match head.as_ptr().align_offset(DIRECT_ALIGN) {
                0 => head,
                _ => {
                    let scratch = self.aligned(direct_len);
                    scratch.copy_from_slice(head);
                    scratch
                }
            };
            file.write_all_at(aligned, 0)?;
        }
        if direct {
            clear_direct(&file)?;
        }
        file.write_all_at(&data[direct_len..], direct_len as u64)?;
        file.write_all_at(&trailer(data), data.len() as u64)
    }

    /// `len` bytes of the scratch buffer, starting at an aligned address.
    fn aligned(&mut self, len: usize) -> &mut [u8] {
        if self.scratch.len() < len + DIRECT_ALIGN {
            self.scratch = vec![0u8; len + DIRECT_ALIGN];
        }
        let skip = self.scratch.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.scratch[skip..skip + len]
    }
}

/// Whether an error is a filesystem refusing `O_DIRECT`.
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

fn open_new(path: &Path, flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .open(path)
}

fn clear_direct(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor `file` keeps open; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The trailer of a block holding `data`.
pub(super) fn trailer(data: &[u8]) -> [u8; TRAILER] {
    let mut out = [0u8; TRAILER];
    out[..4].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    out[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out[8..].copy_from_slice(MARKER);
    out
}

/// The data of a block file, if its trailer vouches for it.
pub(super) fn check_block(mut raw: BytesMut) -> Option<Bytes> {
    if raw.len() < TRAILER {
        return None;
    }
    let len = raw.len() - TRAILER;
    let tail = &raw[len..];
    let crc = u32::from_le_bytes(tail[..4].try_into().ok()?);
    let stored_len = u32::from_le_bytes(tail[4..8].try_into().ok()?);
    if &tail[8..] != MARKER || stored_len as usize != len || crc32fast::hash(&raw[..len]) != crc {
        return None;
    }
    raw.truncate(len);
    Some(raw.freeze())
}

/// The block a file name (`TAG-INDEX`, both hexadecimal) stands for.
pub(super) fn parse_name(name: &str) -> Option<BlockId> {
    let (tag, index) = name.split_once('-')?;
    Some(BlockId {
        tag: ObjectTag(u128::from_str_radix(tag, 16).ok()?),
        index: u32::from_str_radix(index, 16).ok()?,
    })
}

/// Starts reading all of `file` into the page cache, without waiting for it.
pub(super) fn will_need(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: an advice call on a descriptor `file` keeps open; no memory is passed. A
    // failure only means the later read waits for the disk.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
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

    /// Every length shape (aligned, a tail, shorter than one page), from aligned and unaligned
    /// memory, direct and through the page cache: the file is the data and its trailer.
    #[test]
    fn blocks_are_written_whole_direct_or_not() {
        // tmpfs as well, where O_DIRECT may be refused (the writer falls back).
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(shm);
        }
        let source: Vec<u8> = (0..(1 << 20) + 8192).map(|i| (i * 7 % 251) as u8).collect();
        for (dir, direct) in dirs.iter().flat_map(|d| [(d, true), (d, false)]) {
            let mut writer = BlockWriter::new();
            writer.direct = direct;
            for (n, len) in [1 << 20, (1 << 20) - 100, 5000, 10].into_iter().enumerate() {
                for skew in [0, 1] {
                    let start = source.as_ptr().align_offset(DIRECT_ALIGN) + skew;
                    let data = &source[start..start + len];
                    let path = dir.path().join(format!("b/{direct}-{n}-{skew}"));
                    writer.write(&path, data, true).unwrap();
                    let back = check_block(std::fs::read(&path).unwrap()[..].into());
                    assert_eq!(back.as_deref(), Some(data), "{direct} {len} {skew}");
                }
            }
        }
    }
}
