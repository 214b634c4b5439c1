//! Reading what a file claims without trusting it: the helpers that keep a decoder from
//! allocating by a length it has not checked, and a reader from blocking on or streaming
//! without end from something that is not a file.
//!
//! A reader built on them opens with [`open_regular`] (a FIFO, a device or a directory is
//! refused before a byte is read), reads a header of fixed size with [`read_prefix`], checks
//! it, checks the length it claims against the file's size where that says anything, and
//! only then reads the claimed bytes with [`read_claimed`], which sets aside no more than it
//! is told to before the bytes arrive and sees whether more follow.
//!
//! Every file the crate writes goes through [`write_atomically`]: readers see the old file or
//! the new one, never a part.

use serde::de::{self, Deserializer, Visitor};
use std::cell::Cell;
use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File, FileType, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Deserialises a `String` through `deserialize_str`, so that a decoder borrowing from its
/// input reads a bounds-checked slice instead of allocating the length a file claims. Use it
/// (`#[serde(deserialize_with = ...)]`) on every `String` that a checkpoint stores.
pub(crate) fn read_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct StrVisitor;
    impl Visitor<'_> for StrVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
    }
    deserializer.deserialize_str(StrVisitor)
}

thread_local! {
    /// The bytes a sequence being deserialised on this thread may set aside before its
    /// elements arrive ([`read_elements`]).
    static SEQUENCE_ALLOWANCE: Cell<u64> = const { Cell::new(1 << 20) };
}

/// Runs `f` with `bytes` as the allowance of [`read_elements`] on this thread: a reader that
/// knows the input holds `bytes` more bytes (a file whose size was checked) lets a sequence
/// be allocated once, at its full length, rather than grown as it arrives.
pub(crate) fn with_sequence_allowance<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    let before = SEQUENCE_ALLOWANCE.with(|a| a.replace(bytes));
    let out = f();
    SEQUENCE_ALLOWANCE.with(|a| a.set(before));
    out
}

/// Deserialises a `Vec<T>`, setting aside room for the length the input claims only up to
/// the allowance ([`with_sequence_allowance`]; 1 MiB, serde's own cap, unless a reader says
/// more): beyond it the vector grows as elements actually arrive. Use it
/// (`#[serde(deserialize_with = ...)]`) on a stored sequence that may be large.
pub(crate) fn read_elements<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de>,
{
    struct Elements<T>(std::marker::PhantomData<T>);
    impl<'de, T: de::Deserialize<'de>> Visitor<'de> for Elements<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let size = std::mem::size_of::<T>().max(1) as u64;
            let allowed = SEQUENCE_ALLOWANCE.with(Cell::get) / size;
            let claimed = seq.size_hint().unwrap_or(0) as u64;
            let mut out = Vec::with_capacity(claimed.min(allowed) as usize);
            while let Some(value) = seq.next_element()? {
                out.push(value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Elements(std::marker::PhantomData))
}

/// The most a reader sets aside for data that a file claims before that data has arrived:
/// 64 MiB. Past it, a buffer grows only as bytes actually arrive.
pub(crate) const PREALLOCATE_LIMIT: u64 = 64 << 20;

/// Why a path could not be opened as a regular file.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The system refused: no such file, no permission.
    Io(io::Error),
    /// The path names something else, said with its article: "a directory", "a named pipe
    /// (FIFO)", "a character device", ...
    NotRegular(&'static str),
}

/// `O_NONBLOCK` where its value is known without the `libc` crate: opening a FIFO with it
/// returns at once instead of waiting for a writer. (It changes nothing for a regular file.)
const NONBLOCK: Option<i32> = if cfg!(all(
    any(target_os = "linux", target_os = "android"),
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv32",
        target_arch = "riscv64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
)) {
    Some(0o4000)
} else if cfg!(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)) {
    Some(0x4)
} else {
    None
};

/// Opens `path` for reading if it is a regular file (a symbolic link counts as what it points
/// to), and returns the file with its length. A FIFO, a device (`/dev/zero`), a directory or a
/// socket is refused, named, before a byte is read from it: a FIFO could block forever, a
/// device could stream without end. The verdict comes from the opened file's own metadata, so
/// the path cannot be swapped for something else between the check and the reads; the open
/// itself does not wait for a FIFO's writer (`O_NONBLOCK`, or on a platform whose value for it
/// is not known here, a check of the path first).
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), OpenError> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    if let Some(flags) = NONBLOCK {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(flags);
    }
    if NONBLOCK.is_none() {
        let kind = fs::metadata(path).map_err(OpenError::Io)?.file_type();
        if !kind.is_file() {
            return Err(OpenError::NotRegular(describe(kind)));
        }
    }
    let file = options.open(path).map_err(OpenError::Io)?;
    let metadata = file.metadata().map_err(OpenError::Io)?;
    if !metadata.is_file() {
        return Err(OpenError::NotRegular(describe(metadata.file_type())));
    }
    Ok((file, metadata.len()))
}

/// What a file that is not a regular file is, with its article.
fn describe(kind: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "something other than a regular file"
    }
}

/// Appends to `out` the first `len` bytes of `reader`, or all of them if it ends first, and
/// returns how many it appended. Reads no further: what follows stays in `reader`.
pub(crate) fn read_prefix(reader: impl Read, len: u64, out: &mut Vec<u8>) -> io::Result<u64> {
    reader.take(len).read_to_end(out).map(|n| n as u64)
}

/// What came of reading the bytes a file claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrived {
    /// Exactly the claimed bytes, then the end.
    Exactly,
    /// Fewer: the input ended after this many.
    Short(u64),
    /// More bytes follow the claimed ones.
    More,
}

/// Appends to `out` the `claimed` bytes that `reader` should hold, and reads one byte further
/// to see whether more follow (which also makes a gzip decoder read and check its trailer). No
/// more than `preallocate` bytes are set aside before they arrive (pass the claim itself only
/// once it has been checked against the file's size, else at most [`PREALLOCATE_LIMIT`]); past
/// that, `out` grows only as data arrives, so a claim costs memory only for bytes that are
/// really there. `out` ends with at most the claimed bytes. On an error, `out` keeps the bytes
/// that arrived before it.
///
/// # Errors
/// The reader's, and [`io::ErrorKind::OutOfMemory`] when even the preallocation cannot be had.
pub(crate) fn read_claimed(
    reader: impl Read,
    claimed: u64,
    preallocate: u64,
    out: &mut Vec<u8>,
) -> io::Result<Arrived> {
    let start = out.len();
    let reserve = usize::try_from(preallocate.min(claimed)).unwrap_or(usize::MAX);
    out.try_reserve_exact(reserve).map_err(|e| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot set aside {claimed} bytes: {e}"),
        )
    })?;
    let arrived = reader.take(claimed.saturating_add(1)).read_to_end(out)? as u64;
    Ok(match arrived.cmp(&claimed) {
        Ordering::Less => Arrived::Short(arrived),
        Ordering::Equal => Arrived::Exactly,
        Ordering::Greater => {
            out.truncate(start + claimed as usize);
            Arrived::More
        }
    })
}

/// Writes `path` through a temporary file in the same directory that is synced and then
/// renamed over it, so readers see the old file or the new one, never a part. On failure (or a
/// panic in `write`) the temporary file is removed and the previous file, if any, is left as it
/// was.
///
/// The temporary file is `.{name}.tmp-{pid}-{n}`: the process id and a count of this process's
/// writes, so two writes to one path at once, from two threads or two processes, never share
/// one (the last rename wins, and the file is always one whole write). It is created new: a
/// name that exists already (a symbolic link planted there) is skipped, never written through.
/// Each write first removes the temporary files of the same target left by writers that no
/// longer exist (killed mid-write): see [`remove_stale_temporaries`].
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let prefix = temporary_prefix(&name);
    remove_stale_temporaries(path, &prefix);
    let (tmp, mut file) = loop {
        let n = WRITES.fetch_add(1, AtomicOrdering::Relaxed);
        let name = path.with_file_name(format!("{prefix}{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&name) {
            Ok(file) => break (Temporary(name), file),
            // taken already (a file of a killed process that had this id, a link planted in a
            // shared directory): never written through, never removed; the next name is tried
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    write(&mut file)?;
    file.flush()?;
    file.sync_all()?;
    fs::rename(&tmp.0, path)?;
    tmp.renamed();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // make the rename itself durable; not every platform can open a directory
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// A temporary file, removed when dropped (on an error or a panic) unless it was renamed.
struct Temporary(PathBuf);

impl Temporary {
    /// The file is in place under its final name: nothing to remove.
    fn renamed(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// Removes the temporary files of `path` left by writers that no longer exist (see
/// [`write_atomically`], which does the same before each write): a folder that a killed run
/// left is then seen as it was before the write began.
pub(crate) fn clear_stale_temporaries(path: &Path) {
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        remove_stale_temporaries(path, &temporary_prefix(name));
    }
}

/// The start of the names of a target's temporary files: `.{name}.tmp-`.
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Removes the temporary files of `path` (in its directory, named `{prefix}{pid}` or
/// `{prefix}{pid}-{n}`) whose writer process no longer exists: what a writer killed mid-write
/// (`kill -9`, a power cut) leaves. A file is removed only when its process is known to be
/// gone (on Linux, `/proc/{pid}` is absent while `/proc/self` is there); this process's own
/// files and those of any live process (or a process id reused since) are left alone, and
/// where liveness cannot be told, nothing is removed. Failures are ignored: the write itself
/// does not depend on this.
fn remove_stale_temporaries(path: &Path, prefix: &str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let (pid, count) = rest.split_once('-').unwrap_or((rest, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let Some(pid) = (digits(pid) && digits(count))
            .then(|| pid.parse::<u32>().ok())
            .flatten()
        else {
            continue;
        };
        if pid != me && process_is_gone(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` is known not to exist (never true where that cannot be told).
fn process_is_gone(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        let proc = Path::new("/proc");
        proc.join("self").exists() && !proc.join(pid.to_string()).exists()
    } else {
        false
    }
}
