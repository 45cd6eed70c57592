//! `FsError` and the one table that maps filesystem errors to errno values.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Invalid,
    #[error("bad file handle")]
    BadHandle,
    #[error("the object changed in the bucket since it was opened")]
    Changed,
    #[error("not supported")]
    NotSupported,
    #[error("no space left in the cache directory")]
    NoSpace,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("too large to move in one rename (EXDEV: the program copies and deletes instead)")]
    CrossDevice,
    #[error("the extended attribute does not exist")]
    NoAttribute,
    #[error("the extended attributes exceed S3's 2 KiB user-metadata budget")]
    TooBig,
    #[error("the buffer is too small for the value")]
    Range,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("extended attributes are off (mount with --xattrs)")]
    XattrsOff,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl FsError {
    /// An error of a read pinned to an ETag (`If-Match`): a failed precondition means the
    /// object changed in the bucket since it was opened.
    pub fn from_pinned_read(e: StoreError) -> FsError {
        match e {
            StoreError::PreconditionFailed => FsError::Changed,
            other => FsError::Store(other),
        }
    }

    /// The errno a program sees. The only place errors become numbers.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::BadHandle => libc::EBADF,
            FsError::Changed => libc::EIO,
            FsError::NotSupported => libc::ENOTSUP,
            FsError::NoSpace => libc::ENOSPC,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::CrossDevice => libc::EXDEV,
            FsError::NoAttribute => libc::ENODATA,
            FsError::TooBig => libc::E2BIG,
            FsError::Range => libc::ERANGE,
            FsError::NotPermitted => libc::EPERM,
            // ENOSYS makes the kernel stop asking for the rest of the mount.
            FsError::XattrsOff => libc::ENOSYS,
            FsError::Store(e) => match e {
                StoreError::NotFound | StoreError::NoSuchBucket => libc::ENOENT,
                StoreError::AccessDenied(_)
                | StoreError::InvalidAccessKey
                | StoreError::SignatureMismatch
                | StoreError::NoCredentials(_) => libc::EACCES,
                StoreError::QuotaExceeded(_) => libc::EDQUOT,
                StoreError::Timeout => libc::ETIMEDOUT,
                StoreError::Unreachable(_) => libc::EHOSTUNREACH,
                StoreError::PreconditionFailed
                | StoreError::WrongRegion { .. }
                | StoreError::ClockSkew
                | StoreError::Tls(_)
                | StoreError::Throttled
                | StoreError::Other(_) => libc::EIO,
            },
        }
    }

    /// Whether the error is a normal answer (a miss, a refusal) rather than a fault worth a
    /// log line.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::NotDir
                | FsError::IsDir
                | FsError::ReadOnly
                | FsError::NameTooLong
                | FsError::NotSupported
                | FsError::Exists
                | FsError::NotEmpty
                | FsError::CrossDevice
                | FsError::NoAttribute
                | FsError::Range
                | FsError::NotPermitted
                | FsError::XattrsOff
                | FsError::Store(StoreError::NotFound)
        )
    }
}

impl From<FsError> for i32 {
    fn from(e: FsError) -> i32 {
        e.errno()
    }
}
