//! The on-disk form of one cached block: its file name (the object version's tag and the
//! block's index, in hexadecimal), the CRC-32 trailer after its data, the write that makes a
//! block appear whole or not at all, and the read that takes bytes only from the page cache.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;

use super::block_cache::{BlockId, ObjectTag};

/// Bytes after a block's data: CRC-32 of the data, its length, and a marker.
pub(super) const TRAILER: usize = 12;
const MARKER: &[u8; 4] = b"PFB1";

/// Writes `data` and its trailer under `tmp`, then renames it to `path`: a block is either
/// whole under its name or absent (a crash leaves at most a temporary file, removed at the
/// next start).
pub(super) fn write_block_file(path: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let result = (|| {
        let mut file = std::fs::File::create(tmp)?;
        file.write_all(data)?;
        file.write_all(&trailer(data))?;
        std::fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
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
pub(super) fn check_block(mut raw: Vec<u8>) -> Option<Bytes> {
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
    Some(Bytes::from(raw))
}

/// The block a file name (`TAG-INDEX`, both hexadecimal) stands for.
pub(super) fn parse_name(name: &str) -> Option<BlockId> {
    let (tag, index) = name.split_once('-')?;
    Some(BlockId {
        tag: ObjectTag(u128::from_str_radix(tag, 16).ok()?),
        index: u32::from_str_radix(index, 16).ok()?,
    })
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
