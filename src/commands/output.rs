//! Where the benchmark's results go: files checked before anything is measured and written
//! atomically, stdout that may close under it, and the signals that end a run early.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

/// Fails, naming the reason, when the report could not be written to `path` at the end of the
/// run: a directory, a missing or unwritable directory to put it in, an existing file this user
/// may not write. Nothing is created.
pub fn check_writable(path: &Path) -> Result<()> {
    let refuse = |why: String| Err(anyhow!("cannot write {}: {why}", path.display()));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return refuse("it is a directory".into()),
        Ok(_) => {
            if let Err(error) = may_write(path, false) {
                return refuse(format!("the file is {}", denial(&error)));
            }
        }
        // The directory check below names which part of the path is missing, not a folder, or
        // closed to this user.
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::PermissionDenied
            ) => {}
        Err(error) => return refuse(error.to_string()),
    }
    // The report is written beside the file and renamed over it: its directory must take new
    // files, whether or not the file exists.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => refuse(format!("{} is not a directory", dir.display())),
        Ok(_) => match may_write(dir, true) {
            Ok(()) => Ok(()),
            Err(error) => refuse(format!("directory {} is {}", dir.display(), denial(&error))),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            refuse(format!("directory {} does not exist", dir.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => refuse(format!(
            "directory {} cannot be reached by this user{}",
            dir.display(),
            user()
        )),
        Err(error) => refuse(format!("{}: {error}", dir.display())),
    }
}

/// Why writing was refused, after "the file is" or "directory D is".
fn denial(error: &std::io::Error) -> String {
    #[cfg(unix)]
    match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            return format!("not writable by this user{}", user());
        }
        Some(libc::EROFS) => return "on a read-only file system".into(),
        _ => {}
    }
    format!("not writable: {error}")
}

/// ` (uid N)`: which user was refused, since it is not always the one the reader thinks of
/// (sudo, containers, setpriv).
fn user() -> String {
    #[cfg(unix)]
    {
        // SAFETY: geteuid cannot fail and touches no memory.
        let uid = unsafe { libc::geteuid() };
        format!(" (uid {uid})")
    }
    #[cfg(not(unix))]
    String::new()
}

/// Asks the kernel whether this process's effective user may write `path` (and, for a
/// directory, create files in it). Root passes wherever the kernel would let root write.
#[cfg(unix)]
fn may_write(path: &Path, directory: bool) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mode = if directory {
        libc::W_OK | libc::X_OK
    } else {
        libc::W_OK
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let result = unsafe { libc::faccessat(libc::AT_FDCWD, name.as_ptr(), mode, libc::AT_EACCESS) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Without faccessat: try it, leaving nothing behind.
#[cfg(not(unix))]
fn may_write(path: &Path, directory: bool) -> std::io::Result<()> {
    if directory {
        let probe = path.join(format!(".paged-kv-bench.{}.probe", std::process::id()));
        std::fs::File::create(&probe)?;
        std::fs::remove_file(&probe)
    } else {
        std::fs::OpenOptions::new().write(true).open(path).map(drop)
    }
}

/// Writes a sibling temporary file, then renames it over `path`, so that a failure never
/// leaves a half-written file behind.
pub fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let temporary = temporary_path(path);
    let result =
        std::fs::write(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Standard output that a reader may close: once a write finds the pipe closed, later writes
/// are skipped and [`Stdout::closed`] says so, so that the run can end quietly instead of
/// measuring for nobody. Any other failure is kept for the caller to report.
#[derive(Default)]
pub struct Stdout {
    closed: bool,
    failed: Option<std::io::Error>,
}

impl Stdout {
    pub fn write(&mut self, text: &str) {
        if self.closed || self.failed.is_some() || text.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => self.closed = true,
            Err(error) => self.failed = Some(error),
        }
    }

    /// The reader went away.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Whether to go on writing: neither closed nor failed.
    pub fn open(&self) -> bool {
        !self.closed && self.failed.is_none()
    }

    /// A write that failed for another reason than a closed pipe.
    pub fn failure(&mut self) -> Option<anyhow::Error> {
        self.failed
            .take()
            .map(|error| anyhow::Error::new(error).context("writing to stdout"))
    }
}

/// SIGINT and SIGTERM, caught: the first sets a flag that the sweep checks between rows and
/// samples, so that what was measured is still printed and saved; a second ends the process at
/// once (for a run stuck where no check comes).
pub struct Interrupt {
    signal: Arc<AtomicUsize>,
}

#[cfg(unix)]
const SIGNALS: [(i32, &str); 2] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")];
#[cfg(not(unix))]
const SIGNALS: [(i32, &str); 2] = [(2, "SIGINT"), (15, "SIGTERM")];

impl Interrupt {
    pub fn install() -> Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        for (number, name) in SIGNALS {
            let register = || -> std::io::Result<()> {
                // Registered first, so that it sees the flag as the previous signal left it.
                signal_hook::flag::register_conditional_shutdown(
                    number,
                    128 + number,
                    Arc::clone(&armed),
                )?;
                signal_hook::flag::register_usize(number, Arc::clone(&signal), number as usize)?;
                signal_hook::flag::register(number, Arc::clone(&armed))?;
                Ok(())
            };
            register().with_context(|| format!("cannot catch {name}"))?;
        }
        Ok(Self { signal })
    }

    /// The signal that came, if one did: its number and name.
    pub fn received(&self) -> Option<(i32, &'static str)> {
        let number = self.signal.load(Ordering::SeqCst) as i32;
        SIGNALS.into_iter().find(|&(n, _)| n == number)
    }

    pub fn requested(&self) -> bool {
        self.signal.load(Ordering::SeqCst) != 0
    }
}
