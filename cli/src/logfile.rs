//! A daemon's log file, rotated by size, and reading it back across the rotation.
//!
//! `kith node run` (the daemon `create` and `start` spawn) writes its log through a
//! [`RotatingLog`]: when `node.log` would grow past [`Rotation::max_bytes`] with the next
//! line, it is renamed `node.log.1`, older files shift (`.1` → `.2` …), and at most
//! [`Rotation::files`] files are kept, `node.log` included. Lines are never split between
//! files; a file exceeds the size only if a single line does. Files are created mode 0600.
//!
//! The daemon's standard error points at the current file too ([`RotatingLog::open_as_stderr`]
//! re-points it after every rotation), so a panic or the final `error: …` line lands in the
//! same file as the log. Nothing here is async; the writer is a mutex over a file.
//!
//! The limits come from the environment, read when the daemon starts:
//! `KITH_LOG_MAX_BYTES` (default 10 MiB) and `KITH_LOG_FILES` (default 5).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::{Result, bail};
use tracing_subscriber::fmt::MakeWriter;

/// 10 MiB: weeks of an idle node's log, and the last minutes of a busy one, in a file an
/// editor still opens at once.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// 5 files (`node.log` and four rotated): 50 MiB of history at the default size.
pub const DEFAULT_LOG_FILES: usize = 5;

/// 100 files: every rotation renames each kept file once, so the count bounds its cost.
pub const MAX_LOG_FILES: usize = 100;

/// The environment variable that sets [`Rotation::max_bytes`].
pub const LOG_MAX_BYTES_ENV: &str = "KITH_LOG_MAX_BYTES";

/// The environment variable that sets [`Rotation::files`].
pub const LOG_FILES_ENV: &str = "KITH_LOG_FILES";

/// When a log is rotated and how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The size a file may reach before the next line goes to a fresh one.
    pub max_bytes: u64,
    /// How many files are kept, the current one included (1 keeps no rotated file).
    pub files: usize,
}

impl Default for Rotation {
    /// [`DEFAULT_LOG_MAX_BYTES`] and [`DEFAULT_LOG_FILES`].
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            files: DEFAULT_LOG_FILES,
        }
    }
}

impl Rotation {
    /// The defaults, overridden by [`LOG_MAX_BYTES_ENV`] and [`LOG_FILES_ENV`] where set.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self::parse(
            var(LOG_MAX_BYTES_ENV).as_deref(),
            var(LOG_FILES_ENV).as_deref(),
        )
    }

    fn parse(max_bytes: Option<&str>, files: Option<&str>) -> Result<Self> {
        let mut rotation = Self::default();
        if let Some(v) = max_bytes {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => rotation.max_bytes = n,
                _ => bail!(
                    "{LOG_MAX_BYTES_ENV}={v:?} is not a size: write a number of bytes, e.g. {DEFAULT_LOG_MAX_BYTES}"
                ),
            }
        }
        if let Some(v) = files {
            match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LOG_FILES).contains(&n) => rotation.files = n,
                _ => bail!(
                    "{LOG_FILES_ENV}={v:?} is not a file count: write a number from 1 to {MAX_LOG_FILES}, e.g. {DEFAULT_LOG_FILES}"
                ),
            }
        }
        Ok(rotation)
    }
}

/// A log file that rotates itself by size; a [`MakeWriter`] for `tracing_subscriber`.
///
/// Each event's line is written whole under one lock, so the size check and the write see
/// the same file.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    rotation: Rotation,
    /// Whether standard error follows the current file.
    as_stderr: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// After a failed rotation, the size at which to try again: a log that cannot rotate
    /// (its directory gone, no descriptor left) keeps writing and retries once per
    /// `max_bytes` more, not at every line.
    retry_at: Option<u64>,
}

impl RotatingLog {
    /// Append to the log at `path` (created mode 0600 if missing), rotating it by `rotation`.
    pub fn open(path: impl Into<PathBuf>, rotation: Rotation) -> io::Result<Self> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(Self {
            path,
            rotation,
            as_stderr: false,
            state: Mutex::new(State {
                file,
                retry_at: None,
            }),
        })
    }

    /// As [`RotatingLog::open`], and point this process's standard error at the log now and
    /// after every rotation: a daemon's panics and last `error:` line then go where its log
    /// goes, never to a file renamed away.
    pub fn open_as_stderr(path: impl Into<PathBuf>, rotation: Rotation) -> io::Result<Self> {
        let mut log = Self::open(path, rotation)?;
        nix::unistd::dup2_stderr(&log.lock().file)?;
        log.as_stderr = true;
        Ok(log)
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while writing leaves the state usable: at worst a line is cut short.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rotate first if `incoming` more bytes would take the current file past the size. An
    /// empty file takes any line, so a line larger than the size still gets written.
    fn make_room(&self, state: &mut State, incoming: usize) {
        // The file's own size, not a count of ours: standard error writes to it too.
        let Ok(len) = state.file.metadata().map(|m| m.len()) else {
            return;
        };
        let incoming = u64::try_from(incoming).unwrap_or(u64::MAX);
        if len == 0 || len.saturating_add(incoming) <= self.rotation.max_bytes {
            return;
        }
        if state.retry_at.is_some_and(|at| len < at) {
            return;
        }
        match self.rotate() {
            Ok(fresh) => {
                state.file = fresh;
                state.retry_at = None;
            }
            Err(e) => {
                state.retry_at = Some(len.saturating_add(self.rotation.max_bytes));
                let _ = writeln!(
                    state.file,
                    "kith: cannot rotate the log {}: {e}; writing on, and trying again later",
                    self.path.display()
                );
            }
        }
    }

    /// Shift the rotated files up by one, dropping those past the count, make the current
    /// file `.1` and a fresh one current; returns the fresh one. The fresh file is made
    /// before anything is renamed, so a failure to make it (no descriptor left) leaves the
    /// files as they were.
    fn rotate(&self) -> io::Result<File> {
        let fresh_path = sibling(&self.path, "new");
        match fs::remove_file(&fresh_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fresh = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&fresh_path)?;
        let keep = self.rotation.files.saturating_sub(1);
        for (n, old) in rotated(&self.path)? {
            if n >= keep {
                remove_if_there(&old)?;
            }
        }
        if keep > 0 {
            for n in (1..keep).rev() {
                rename_if_there(&numbered(&self.path, n), &numbered(&self.path, n + 1))?;
            }
            rename_if_there(&self.path, &numbered(&self.path, 1))?;
        }
        fs::rename(&fresh_path, &self.path)?;
        if self.as_stderr {
            nix::unistd::dup2_stderr(&fresh)?;
        }
        Ok(fresh)
    }
}

impl<'a> MakeWriter<'a> for RotatingLog {
    type Writer = LogWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter {
            log: self,
            state: self.lock(),
        }
    }
}

/// One event's access to a [`RotatingLog`]: it holds the log's lock while it lives.
#[derive(Debug)]
pub struct LogWriter<'a> {
    log: &'a RotatingLog,
    state: MutexGuard<'a, State>,
}

impl Write for LogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.log.make_room(&mut self.state, buf.len());
        self.state.file.write(buf)
    }

    /// One size check for the whole buffer (an event's line), so a line is never split
    /// between two files.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.log.make_room(&mut self.state, buf.len());
        self.state.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.state.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// The `n`th rotated file of the log at `path`: `node.log.n`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    sibling(path, &n.to_string())
}

/// The rotated files of the log at `path` that exist, by number (`node.log.3` → 3), in no
/// particular order.
fn rotated(path: &Path) -> io::Result<Vec<(usize, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let n = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<usize>().ok());
        if let Some(n) = n.filter(|n| *n > 0) {
            found.push((n, entry.path()));
        }
    }
    Ok(found)
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The files of the log at `path` that exist, oldest first: the rotated ones from the
/// highest number down, then the current one.
pub fn log_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut rotated = rotated(path)?;
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    Ok(files)
}

/// A file's text; a file that went away (rotated off since it was listed) is empty.
fn read_lossy(path: &Path) -> io::Result<String> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Every line of the log at `path`, across its rotated files, oldest first, handed to
/// `each` one file at a time (a file at most in memory).
pub fn for_each_line(path: &Path, mut each: impl FnMut(&str)) -> io::Result<()> {
    for file in log_files(path)? {
        read_lossy(&file)?.lines().for_each(&mut each);
    }
    Ok(())
}

/// The last `n` lines of the log at `path`, across its rotated files, oldest first. Only
/// the newest files that hold them are read.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut newest_first: Vec<Vec<String>> = Vec::new();
    let mut have = 0;
    for file in log_files(path)?.iter().rev() {
        if have >= n {
            break;
        }
        let text = read_lossy(file)?;
        let lines: Vec<&str> = text.lines().collect();
        let take = (n - have).min(lines.len());
        let from = lines.len() - take;
        newest_first.push(
            lines
                .get(from..)
                .unwrap_or_default()
                .iter()
                .map(|l| (*l).to_owned())
                .collect(),
        );
        have += take;
    }
    Ok(newest_first.into_iter().rev().flatten().collect())
}

/// A place in a log, to read what was written after it even if the log rotated since: the
/// current file's identity and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark {
    dev: u64,
    ino: u64,
    len: u64,
}

impl LogMark {
    /// The end of `file`, the log's current file.
    pub fn end_of(file: &File) -> io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
        })
    }

    fn is(&self, m: &fs::Metadata) -> bool {
        m.dev() == self.dev && m.ino() == self.ino
    }
}

/// The last line of the log at `path` written after `mark` that `pick` maps to something,
/// mapped; across a rotation, the file that was current at the mark is found by its
/// identity. If that file was rotated off, every file there is searched.
pub fn rfind_since<T>(
    path: &Path,
    mark: &LogMark,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> Option<T> {
    for file in log_files(path).ok()?.iter().rev() {
        let Ok(bytes) = fs::read(file) else {
            continue;
        };
        let at_mark = fs::metadata(file).is_ok_and(|m| mark.is(&m));
        let from = if at_mark {
            usize::try_from(mark.len).unwrap_or(usize::MAX)
        } else {
            0
        };
        let text = String::from_utf8_lossy(bytes.get(from..).unwrap_or_default());
        if let Some(found) = text.lines().rev().find_map(&mut pick) {
            return Some(found);
        }
        if at_mark {
            return None;
        }
    }
    None
}

/// Reads a log as it grows, across rotations: `kith node logs --follow`.
///
/// It holds the current file open, so a rotation (a rename) does not lose what was written
/// to it; when the log's path names another file, what is left of the old one is read and
/// the new one is followed from its start, after any file rotated in between. Only a
/// follower that falls behind by the whole log (every kept file rotated off between two
/// polls) misses lines.
pub struct Follower {
    path: PathBuf,
    file: File,
    /// Bytes of the line being written, not ended yet.
    partial: Vec<u8>,
}

impl Follower {
    /// Start following the log at `path`: the lines it holds now (the last `tail` of them
    /// across the rotated files, or all), handed to `each` oldest first, and a follower for
    /// what comes after. At most one file's lines (or `tail` lines) are held at a time.
    pub fn start(
        path: &Path,
        tail: Option<usize>,
        mut each: impl FnMut(String),
    ) -> io::Result<Self> {
        let file = File::open(path)?;
        let current = file.metadata()?;
        let mut follower = Self {
            path: path.to_path_buf(),
            file,
            partial: Vec::new(),
        };
        // With a tail, only its last lines are kept while reading; without, each file's
        // lines go out as soon as it is read.
        let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut take = |line: String| match tail {
            None => each(line),
            Some(0) => {}
            Some(n) => {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        };
        for older in log_files(path)? {
            // The current file is read through its handle below, even if it rotated since.
            if fs::metadata(&older)
                .is_ok_and(|m| m.dev() == current.dev() && m.ino() == current.ino())
                || older == path
            {
                continue;
            }
            read_lossy(&older)?.lines().for_each(|l| take(l.to_owned()));
        }
        follower.read_lines()?.into_iter().for_each(&mut take);
        kept.into_iter().for_each(each);
        Ok(follower)
    }

    /// The lines ended since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = self.read_lines()?;
        let same = match (fs::metadata(&self.path), self.file.metadata()) {
            (Ok(now), Ok(ours)) => now.dev() == ours.dev() && now.ino() == ours.ino(),
            // Between the rename and the new file: look again next time.
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => true,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if !same {
            // Rotated: what is left of the old file was read above. Then every file rotated
            // since it (the log may have turned more than once between two polls), then the
            // new current file, opened first so a rotation meanwhile cannot hide one.
            let old = self.file.metadata()?;
            let current = File::open(&self.path)?;
            let new = current.metadata()?;
            if !self.partial.is_empty() {
                lines
                    .push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned());
            }
            let is = |m: &fs::Metadata, f: &fs::Metadata| m.dev() == f.dev() && m.ino() == f.ino();
            let files: Vec<(PathBuf, Option<fs::Metadata>)> = log_files(&self.path)?
                .into_iter()
                .map(|p| {
                    let m = fs::metadata(&p).ok();
                    (p, m)
                })
                .collect();
            // After our old file if it is still there; all of them if it was rotated off.
            let after = files
                .iter()
                .position(|(_, m)| m.as_ref().is_some_and(|m| is(m, &old)))
                .map_or(0, |i| i + 1);
            for (file, meta) in files.get(after..).unwrap_or_default() {
                if meta.as_ref().is_none_or(|m| is(m, &new)) {
                    continue;
                }
                lines.extend(read_lossy(file)?.lines().map(str::to_owned));
            }
            self.file = current;
            lines.extend(self.read_lines()?);
        }
        Ok(lines)
    }

    /// Read the open file to its end; return the lines that ended.
    fn read_lines(&mut self) -> io::Result<Vec<String>> {
        use std::io::Read as _;
        let mut bytes = std::mem::take(&mut self.partial);
        self.file.read_to_end(&mut bytes)?;
        let ended = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.partial = bytes.split_off(ended);
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn line(i: usize) -> String {
        // 20 bytes each.
        format!("line {i:014}\n")
    }

    fn write_lines(log: &RotatingLog, range: std::ops::Range<usize>) {
        for i in range {
            log.make_writer().write_all(line(i).as_bytes()).unwrap();
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn all_lines(path: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for_each_line(path, |l| v.push(l.to_owned())).unwrap();
        v
    }

    #[test]
    fn a_log_rotates_before_the_line_that_would_pass_the_size_and_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let rotation = Rotation {
            max_bytes: 100,
            files: 3,
        };
        let log = RotatingLog::open(&path, rotation).unwrap();
        // Five 20-byte lines fill a file exactly; the sixth starts the next.
        write_lines(&log, 0..5);
        assert_eq!(names(dir.path()), ["node.log"]);
        write_lines(&log, 5..6);
        assert_eq!(names(dir.path()), ["node.log", "node.log.1"]);
        // 40 lines make 8 files' worth; 3 are kept: the newest 15 lines.
        write_lines(&log, 6..40);
        assert_eq!(names(dir.path()), ["node.log", "node.log.1", "node.log.2"]);
        for file in log_files(&path).unwrap() {
            let len = fs::metadata(&file).unwrap().len();
            assert_eq!(len, 100, "{} is {len} bytes", file.display());
        }
        let expected: Vec<String> = (25..40).map(|i| line(i).trim_end().to_owned()).collect();
        assert_eq!(
            all_lines(&path),
            expected,
            "oldest file first, lines in order"
        );
        assert_eq!(
            fs::read_to_string(numbered(&path, 2)).unwrap(),
            (25..30).map(line).collect::<String>()
        );
    }

    #[test]
    fn every_log_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = RotatingLog::open(
            &path,
            Rotation {
                max_bytes: 50,
                files: 4,
            },
        )
        .unwrap();
        write_lines(&log, 0..10);
        let files = log_files(&path).unwrap();
        assert_eq!(files.len(), 4);
        for file in files {
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_line_longer_than_the_size_gets_a_file_of_its_own_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = RotatingLog::open(
            &path,
            Rotation {
                max_bytes: 30,
                files: 3,
            },
        )
        .unwrap();
        write_lines(&log, 0..1);
        let long = format!("{}\n", "x".repeat(99));
        log.make_writer().write_all(long.as_bytes()).unwrap();
        write_lines(&log, 1..2);
        assert_eq!(fs::read_to_string(numbered(&path, 1)).unwrap(), long);
        assert_eq!(fs::read_to_string(numbered(&path, 2)).unwrap(), line(0));
        assert_eq!(fs::read_to_string(&path).unwrap(), line(1));
    }

    #[test]
    fn one_file_kept_means_the_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = RotatingLog::open(
            &path,
            Rotation {
                max_bytes: 40,
                files: 1,
            },
        )
        .unwrap();
        write_lines(&log, 0..5);
        assert_eq!(names(dir.path()), ["node.log"]);
        assert_eq!(fs::read_to_string(&path).unwrap(), line(4));
    }

    #[test]
    fn files_past_a_smaller_count_are_dropped_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let big = Rotation {
            max_bytes: 20,
            files: 6,
        };
        write_lines(&RotatingLog::open(&path, big).unwrap(), 0..6);
        assert_eq!(log_files(&path).unwrap().len(), 6);
        let small = Rotation {
            max_bytes: 20,
            files: 2,
        };
        write_lines(&RotatingLog::open(&path, small).unwrap(), 6..7);
        assert_eq!(names(dir.path()), ["node.log", "node.log.1"]);
        assert_eq!(
            all_lines(&path),
            ["line 00000000000005", "line 00000000000006"]
        );
    }

    #[test]
    fn tail_spans_files_and_keeps_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = RotatingLog::open(
            &path,
            Rotation {
                max_bytes: 60,
                files: 5,
            },
        )
        .unwrap();
        write_lines(&log, 0..11);
        let want = |r: std::ops::Range<usize>| -> Vec<String> {
            r.map(|i| line(i).trim_end().to_owned()).collect()
        };
        assert_eq!(tail(&path, 0).unwrap(), Vec::<String>::new());
        assert_eq!(tail(&path, 2).unwrap(), want(9..11));
        assert_eq!(tail(&path, 7).unwrap(), want(4..11));
        assert_eq!(tail(&path, 1000).unwrap(), want(0..11));
    }

    #[test]
    fn what_was_written_since_a_mark_is_found_after_the_log_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let rotation = Rotation {
            max_bytes: 100,
            files: 5,
        };
        let log = RotatingLog::open(&path, rotation).unwrap();
        log.make_writer().write_all(b"error: an old one\n").unwrap();
        let mark = LogMark::end_of(&open_append(&path).unwrap()).unwrap();
        let error = |l: &str| l.strip_prefix("error: ").map(str::to_owned);
        assert_eq!(rfind_since(&path, &mark, error), None, "nothing since");
        log.make_writer()
            .write_all(b"error: the new one\n")
            .unwrap();
        write_lines(&log, 0..12);
        assert!(numbered(&path, 2).exists(), "rotated twice");
        assert_eq!(
            rfind_since(&path, &mark, error).as_deref(),
            Some("the new one")
        );
    }

    #[test]
    fn limits_come_from_the_environment_or_are_refused_with_what_to_write() {
        assert_eq!(Rotation::parse(None, None).unwrap(), Rotation::default());
        assert_eq!(
            Rotation::parse(Some("4096"), Some("3")).unwrap(),
            Rotation {
                max_bytes: 4096,
                files: 3
            }
        );
        let e = Rotation::parse(Some("10MB"), None).unwrap_err().to_string();
        assert!(e.contains("KITH_LOG_MAX_BYTES=\"10MB\""), "{e}");
        assert!(Rotation::parse(Some("0"), None).is_err());
        let e = Rotation::parse(None, Some("0")).unwrap_err().to_string();
        assert!(e.contains("from 1 to 100"), "{e}");
        assert!(Rotation::parse(None, Some("101")).is_err());
    }

    /// A log of three 200-byte files: ten of [`line`]'s lines each.
    fn ten_lines_a_file(path: &Path) -> RotatingLog {
        let rotation = Rotation {
            max_bytes: 200,
            files: 3,
        };
        RotatingLog::open(path, rotation).unwrap()
    }

    #[test]
    fn a_follower_sees_every_line_once_across_a_rotation_and_waits_for_unended_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = ten_lines_a_file(&path);
        write_lines(&log, 0..5);
        let mut history = Vec::new();
        let mut follower = Follower::start(&path, Some(2), |l| history.push(l)).unwrap();
        assert_eq!(history, [line(3).trim_end(), line(4).trim_end()]);
        assert!(follower.poll().unwrap().is_empty());

        // Fifteen more lines rotate the 200-byte file once (10 lines a file).
        write_lines(&log, 5..12);
        let mut seen = follower.poll().unwrap();
        write_lines(&log, 12..20);
        seen.extend(follower.poll().unwrap());
        let want: Vec<String> = (5..20).map(|i| line(i).trim_end().to_owned()).collect();
        assert_eq!(seen, want);

        // Twice between two polls: the file in between is read too.
        write_lines(&log, 20..40);
        let want: Vec<String> = (20..40).map(|i| line(i).trim_end().to_owned()).collect();
        assert_eq!(follower.poll().unwrap(), want);

        // Half a line is not a line yet.
        log.make_writer().write_all(b"half").unwrap();
        assert!(follower.poll().unwrap().is_empty());
        log.make_writer().write_all(b" and the rest\n").unwrap();
        assert_eq!(follower.poll().unwrap(), ["half and the rest"]);
    }

    #[test]
    fn a_follower_hands_over_all_kept_lines_across_files_in_order_or_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let log = ten_lines_a_file(&path);
        // 25 lines: two rotated files of 10 and the current one of 5.
        write_lines(&log, 0..25);
        let mut all = Vec::new();
        Follower::start(&path, None, |l| all.push(l)).unwrap();
        let want: Vec<String> = (0..25).map(|i| line(i).trim_end().to_owned()).collect();
        assert_eq!(all, want);
        let mut last = Vec::new();
        Follower::start(&path, Some(12), |l| last.push(l)).unwrap();
        assert_eq!(last, want[13..]);
        let mut none = Vec::new();
        Follower::start(&path, Some(0), |l| none.push(l)).unwrap();
        assert!(none.is_empty());
    }
}
