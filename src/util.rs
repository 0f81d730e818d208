//! Small shared helpers.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The temporary files of the outputs being written now ([`write_atomic`]): removed by the signal
/// handler ([`remove_temp_files_on_signal`]) when the process is interrupted.
static TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Temporary directories to remove whole on a signal (`evaluate --train`'s run without `--train-dir`).
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The run a training writes and the command that continues it: on a signal the handler names the
/// checkpoint kept, read from the run's train_state.json then (after any renames in flight: they
/// hold the lock the handler takes first), and the command.
static INTERRUPT_RUN: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

/// Sets (or clears) the run the signal handler reports on.
pub fn set_interrupt_run(run: Option<(PathBuf, String)>) {
    *INTERRUPT_RUN.lock().unwrap_or_else(|e| e.into_inner()) = run;
}

/// The signal handler's line about a training's run directory.
fn interrupt_note(dir: &Path, resume: &str) -> String {
    let epochs = std::fs::read_to_string(dir.join(crate::train::trainer::STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("epochs_done").and_then(|e| e.as_u64()));
    match epochs {
        Some(e) => format!("{}: the checkpoint after epoch {e} is kept; continue with: {resume}", dir.display()),
        None => format!("{}: no checkpoint was written yet (the first is written when epoch 1 ends)", dir.display()),
    }
}

/// A path on one of the signal handler's lists ([`TEMP_FILES`], [`TEMP_DIRS`]) while it lives;
/// dropping it takes the path off (the file or directory itself is removed by its owner).
pub struct Registered {
    list: &'static Mutex<Vec<PathBuf>>,
    path: PathBuf,
}

impl Registered {
    fn on(list: &'static Mutex<Vec<PathBuf>>, p: &Path) -> Self {
        list.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
        Registered { list, path: p.to_path_buf() }
    }
    /// A temporary file being written: removed on a signal.
    fn temp_file(p: &Path) -> Self {
        Self::on(&TEMP_FILES, p)
    }
    /// A temporary directory (e.g. a `tempfile::TempDir`): removed whole on a signal.
    pub fn temp_dir(p: &Path) -> Self {
        Self::on(&TEMP_DIRS, p)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut v = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|q| *q == self.path) {
            v.swap_remove(i);
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary files of the outputs being written, say so, and
/// exit with 130 (128 + SIGINT, what a shell reports for Ctrl-C). Without it a signal ends the process
/// before any destructor runs and leaves `.NAME.XXXXXX.tmp` files beside the outputs. (Completed
/// outputs and checkpoints are not touched: they were renamed into place whole.) Call once at start-up.
pub fn remove_temp_files_on_signal() {
    // A file-size limit (`ulimit -f`) would end the process by SIGXFSZ, leaving the temporary files
    // and no message; ignored, the write fails with EFBIG instead, reported and cleaned up as any error.
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to race with.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let _ = ctrlc::set_handler(|| {
        let v = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
        for p in v.iter() {
            let _ = std::fs::remove_file(p);
        }
        let dirs = TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
        eprintln!("interrupted: {} unfinished output file(s) removed; completed outputs are kept", v.len());
        if let Some((dir, resume)) = INTERRUPT_RUN.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            eprintln!("{}", interrupt_note(dir, resume));
        }
        // _exit, not exit: no atexit handlers, such as HDF5's library shutdown, which would run on this
        // thread while the main thread may be inside an HDF5 call
        // SAFETY: _exit ends the process at once; nothing runs after it.
        unsafe { libc::_exit(130) }
    });
}

/// Write a file atomically: `write` fills a temporary file in the same directory, which is renamed over
/// `path` only when `write` succeeded. Nothing half-written is ever left at `path`, and the temporary
/// file is removed on an error and on an interrupting signal ([`remove_temp_files_on_signal`]).
pub fn write_atomic<F>(path: &Path, write: F) -> anyhow::Result<()>
where
    F: FnOnce(&Path) -> anyhow::Result<()>,
{
    let tmp_path = registered_temp(path)?;
    // (registered by registered_temp; unregisters when dropped)
    let _registered = Registered { list: &TEMP_FILES, path: tmp_path.to_path_buf() };
    write(&tmp_path).map_err(|e| name_output(e, path))?;
    make_readable(&tmp_path)?;
    tmp_path.persist(path).map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// An error of a writer that fills `path`, naming it: the writers' own errors (a full disk, HDF5's)
/// rarely name the file, and outputs computed while they are written (an analysis's blocks) fail inside
/// the writer for reasons that are not writing's: "writing PATH" for an I/O or HDF5 error, else "PATH
/// not written".
fn name_output(e: anyhow::Error, path: &Path) -> anyhow::Error {
    let io = e.chain().any(|c| c.is::<std::io::Error>() || c.is::<hdf5::Error>());
    if io {
        // HDF5's errors do not carry the system's reason: a full disk is named here
        let said = e.chain().any(|c| c.to_string().contains("No space left"));
        let full = !said && disk_space_left(path).is_some_and(|b| b < (1 << 20));
        let e = if full { e.context(format!("no space left on the disk holding {}", path.display())) } else { e };
        e.context(format!("writing {}", path.display()))
    } else {
        e.context(format!("{} not written", path.display()))
    }
}

/// A new temporary file beside `path` (its directory created if need be), registered for removal on a
/// signal. Created and registered under the lock the signal handler takes: a signal never finds the
/// file created but not yet registered (it would be left behind). The caller unregisters it.
fn registered_temp(path: &Path) -> anyhow::Result<tempfile::TempPath> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if path.is_dir() {
        bail!("{}: is a directory; the output needs a file name", path.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: creating the output's directory", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut registry = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot write in {}", path.display(), dir.display()))?
        .into_temp_path();
    registry.push(tmp.to_path_buf());
    Ok(tmp)
}

/// tempfile creates 0600 files; outputs should be readable like any other file the user writes.
fn make_readable(_tmp: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(_tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// A file-writing function for [`write_atomic_set`]: fills the temporary file it is given.
pub type FileWriter<'a> = Box<dyn FnOnce(&Path) -> anyhow::Result<()> + 'a>;

/// Write several files as one unit (a checkpoint): each is written in full under a temporary name in
/// its directory and flushed to disk, and only once all are staged are they renamed into place, in
/// the order given (the last one marks the set complete). A failure while staging (disk full, an
/// error) removes the staged files and leaves the files in place untouched. The renames run under
/// the lock [`remove_temp_files_on_signal`]'s handler takes, so an interrupting signal waits for the
/// whole sequence instead of leaving a mix of old and new files.
pub fn write_atomic_set(files: Vec<(PathBuf, FileWriter<'_>)>) -> anyhow::Result<()> {
    /// The staged files: unregistered (and, unless renamed, removed) when dropped.
    struct Staged(Vec<(tempfile::TempPath, PathBuf)>);
    impl Drop for Staged {
        fn drop(&mut self) {
            // removed first, then unregistered: a signal in between finds nothing left to remove
            let paths: Vec<PathBuf> = self.0.drain(..).map(|(t, _)| t.to_path_buf()).collect();
            TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner()).retain(|q| !paths.contains(q));
        }
    }
    let mut staged = Staged(Vec::new());
    for (path, write) in files {
        staged.0.push((registered_temp(&path)?, path.clone()));
        let tmp = &staged.0.last().expect("just pushed").0;
        write(tmp).map_err(|e| name_output(e, &path))?;
        let f = std::fs::File::open(tmp).with_context(|| format!("writing {}", path.display()))?;
        f.sync_all().with_context(|| format!("writing {}", path.display()))?;
        make_readable(tmp)?;
    }
    let dirs: Vec<PathBuf> = staged.0.iter().filter_map(|(_, p)| p.parent().map(Path::to_path_buf)).collect();
    // A journal of the renames, on disk before the first: a SIGKILL or power loss between two renames
    // leaves it, and [`finish_interrupted_commit`] completes them from it (the staged files are whole).
    let journal = commit_journal(&staged.0)?;
    let mut result = Ok(());
    {
        let mut registered = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
        for (tmp, path) in std::mem::take(&mut staged.0) {
            registered.retain(|q| *q != *tmp);
            if result.is_ok() {
                // (on an error the temporary file is removed as the error drops)
                result = tmp.persist(&path).map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error));
            }
        }
        // the renames themselves reach the disk (best effort: not every file system syncs a
        // directory), then the journal goes; still under the lock, so a signal finds the set whole
        sync_dirs(&dirs);
        if let (Some(j), true) = (&journal, result.is_ok()) {
            result = std::fs::remove_file(j).with_context(|| format!("removing {}", j.display()));
            sync_dirs(&dirs);
        }
    }
    result
}

/// Bytes an unprivileged writer can still use on the file system holding `path` (its directory).
fn disk_space_left(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs the call fills.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The journal of a set's renames (in the set's one directory; no journal for a set over several).
pub const COMMIT_JOURNAL: &str = ".splicevi-commit.json";

fn sync_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        if let Ok(f) = std::fs::File::open(if d.as_os_str().is_empty() { Path::new(".") } else { d }) {
            let _ = f.sync_all();
        }
    }
}

/// Writes the journal of `staged`'s renames ([staged file name, final file name] in order), itself
/// whole on disk before it is in place.
fn commit_journal(staged: &[(tempfile::TempPath, PathBuf)]) -> anyhow::Result<Option<PathBuf>> {
    let Some(dir) = staged.first().map(|(_, p)| p.parent().unwrap_or(Path::new("")).to_path_buf()) else { return Ok(None) };
    if staged.iter().any(|(t, p)| p.parent().unwrap_or(Path::new("")) != dir || t.parent().unwrap_or(Path::new("")) != dir) {
        return Ok(None);
    }
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let pairs: Vec<[String; 2]> = staged.iter().map(|(t, p)| [name(t), name(p)]).collect();
    let journal = dir.join(COMMIT_JOURNAL);
    let tmp = dir.join(format!("{COMMIT_JOURNAL}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", journal.display()))?;
        std::io::Write::write_all(&mut f, serde_json::to_string(&pairs)?.as_bytes()).with_context(|| format!("writing {}", journal.display()))?;
        f.sync_all().with_context(|| format!("writing {}", journal.display()))?;
    }
    std::fs::rename(&tmp, &journal).with_context(|| format!("writing {}", journal.display()))?;
    sync_dirs(&[dir]);
    Ok(Some(journal))
}

/// Completes a set of renames that was interrupted part way (SIGKILL, power loss): the journal
/// [`write_atomic_set`] leaves in `dir` names each staged file and its place; those still staged are
/// renamed into place, in order, and the journal goes. Returns how many were renamed. A journal
/// whose every staged file is gone (the set had completed) is removed.
pub fn finish_interrupted_commit(dir: &Path) -> anyhow::Result<usize> {
    let journal = dir.join(COMMIT_JOURNAL);
    let _ = std::fs::remove_file(dir.join(format!("{COMMIT_JOURNAL}.tmp")));
    let Ok(text) = std::fs::read_to_string(&journal) else { return Ok(0) };
    let pairs: Vec<[String; 2]> = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", journal.display()))?;
    let mut n = 0;
    for [tmp, path] in &pairs {
        let (tmp, path) = (dir.join(tmp), dir.join(path));
        if tmp.exists() {
            std::fs::rename(&tmp, &path).with_context(|| format!("completing an interrupted checkpoint: renaming {} into {}", tmp.display(), path.display()))?;
            n += 1;
        }
    }
    sync_dirs(&[dir.to_path_buf()]);
    std::fs::remove_file(&journal).with_context(|| format!("removing {}", journal.display()))?;
    Ok(n)
}

/// Where `out` would be once written: its parent directory resolved (it must exist or be creatable, so
/// an absent one resolves as written) joined with its file name.
fn resolved_output(out: &Path) -> PathBuf {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent).unwrap_or(parent);
    match out.file_name() {
        Some(n) => parent.join(n),
        None => parent,
    }
}

/// `p` made absolute with its longest existing ancestor resolved (links, `..`) and the rest appended as
/// written: two spellings of a place that does not exist yet compare equal.
pub fn resolved_path(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()) };
    for at in abs.ancestors() {
        if let Ok(mut out) = std::fs::canonicalize(at) {
            // (the part that does not exist yet holds no links: its `..` are taken as written)
            for c in abs.strip_prefix(at).unwrap_or(Path::new("")).components() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
    }
    abs
}

/// Whether two output paths name the same file once written (another spelling of a path too).
pub fn same_output(a: &Path, b: &Path) -> bool {
    resolved_output(a) == resolved_output(b)
}

/// Checks an output path before any work: `--out` must not be a directory, must not be one of the
/// command's input files (the data it reads), must not lie inside a run directory it reads (the
/// checkpoint and its config), and its directory must be writable (or creatable). Each would otherwise
/// be found only at the end, or overwrite the input.
pub fn check_output(out: &Path, inputs: &[&Path], run_dirs: &[&Path]) -> anyhow::Result<()> {
    check_output_named(&format!("--out {}", out.display()), out, inputs, run_dirs)
}

/// [`check_output`] for a file a command writes beside `--out` (a pairs table, a picture): the same
/// checks, the errors naming the file as `label` does.
pub fn check_output_named(label: &str, out: &Path, inputs: &[&Path], run_dirs: &[&Path]) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!("{label}: is a directory; give a file name");
    }
    let target = resolved_output(out);
    for input in inputs {
        if let Ok(i) = std::fs::canonicalize(input) {
            if i == target {
                bail!("{label}: is the input data {}; write the output to another file", input.display());
            }
        }
    }
    for dir in run_dirs {
        if let Ok(d) = std::fs::canonicalize(dir) {
            if target.starts_with(&d) {
                bail!("{label}: is inside the run directory {} (its checkpoint and config); write the output elsewhere", dir.display());
            }
        }
    }
    check_writable(label, out)
}

/// The output's directory, or the nearest of its ancestors that exists ([`write_atomic`] creates the
/// rest), must be a directory we can create files in. Probed with a temporary file, as
/// [`write_atomic`] will write one: permission bits alone miss read-only file systems, and root.
fn check_writable(label: &str, out: &Path) -> anyhow::Result<()> {
    let parent = out.parent().unwrap_or(Path::new(""));
    let dir = parent.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        bail!("{label}: {} is not a directory", dir.display());
    }
    let probe = tempfile::Builder::new()
        .prefix(".splicevi-probe.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("{label}: cannot write in {}", dir.display()))?;
    // (removed on a signal too, like the outputs' temporary files; dropped, it is deleted)
    let _registered = Registered::temp_file(probe.path());
    drop(probe);
    Ok(())
}

/// Keep freed memory in the process instead of handing it back to the kernel (glibc only).
///
/// A training step allocates and frees the same multi-megabyte buffers every step. By default glibc
/// maps such blocks with mmap and unmaps them on free (and trims the heap top), so the next step pays a
/// page fault for every 4 KiB page again: about 5% of a `small` step, in the kernel. With the mmap
/// threshold at its maximum (32 MiB on 64-bit) and no trimming, those blocks are reused from the heap.
/// Larger blocks (the dataset's arrays) are still mapped and unmapped as before. Call once at start-up,
/// before any other thread exists, and only for training: memory the process keeps instead of
/// returning raises the peak of the analyses (diff-splicing at `medium`: 1.91 → 2.05 GB) for no gain.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set is staged whole before any file is replaced: a writer that fails, or a directory where a
    /// later file goes, leaves every file as it was and no temporary file (none registered either).
    #[test]
    fn write_atomic_set_replaces_all_files_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("a"), "old a").unwrap();
        std::fs::write(d.join("b"), "old b").unwrap();
        let set = |third: PathBuf, fail: bool| -> Vec<(PathBuf, FileWriter<'static>)> {
            vec![
                (d.join("a"), Box::new(|p: &Path| Ok(std::fs::write(p, "new a")?))),
                (d.join("b"), Box::new(move |p: &Path| if fail { Err(std::io::Error::other("disk full").into()) } else { Ok(std::fs::write(p, "new b")?) })),
                (third, Box::new(|p: &Path| Ok(std::fs::write(p, "new c")?))),
            ]
        };
        let left = || -> Vec<String> { std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".tmp")).collect() };
        let e = format!("{:#}", write_atomic_set(set(d.join("c"), true)).unwrap_err());
        assert!(e.contains(&format!("writing {}", d.join("b").display())) && e.contains("disk full"), "{e}");
        std::fs::create_dir(d.join("c_dir")).unwrap();
        let e = format!("{:#}", write_atomic_set(set(d.join("c_dir"), false)).unwrap_err());
        assert!(e.contains("c_dir: is a directory"), "{e}");
        assert_eq!((std::fs::read_to_string(d.join("a")).unwrap(), std::fs::read_to_string(d.join("b")).unwrap()), ("old a".into(), "old b".into()));
        assert!(left().is_empty() && !d.join("c").exists(), "{:?}", left());
        let registered = || TEMP_FILES.lock().unwrap().iter().filter(|p| p.starts_with(d)).count();
        assert_eq!(registered(), 0);
        write_atomic_set(set(d.join("c"), false)).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("c")).unwrap(), "new c");
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "new a");
        assert!(left().is_empty() && registered() == 0);
    }

    /// A writer's error names the output: "writing PATH" for an I/O error, "PATH not written" for an
    /// error of what the writer computes (an analysis failing between blocks is no write error); nothing
    /// is left behind either way.
    #[test]
    fn a_writer_error_names_the_output_and_says_whether_writing_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o.h5ad");
        let io = format!("{:#}", write_atomic(&out, |_| Err(std::io::Error::other("No space left on device").into())).unwrap_err());
        assert!(io.starts_with(&format!("writing {}: No space left", out.display())), "{io}");
        let computed = format!("{:#}", write_atomic(&out, |_| bail!("the DM posterior mean needs a concentration")).unwrap_err());
        assert!(computed.starts_with(&format!("{} not written: the DM posterior", out.display())) && !computed.contains("writing"), "{computed}");
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "something was left behind");
    }

    /// An output whose directory cannot be written is refused before any work, naming the flag, and
    /// the check leaves nothing behind (no directory created, no probe file).
    #[test]
    fn check_output_refuses_unwritable_places_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("afile"), "x").unwrap();
        let e = check_output(&d.join("afile/x.tsv"), &[], &[]).unwrap_err().to_string();
        assert!(e.starts_with("--out ") && e.contains("afile is not a directory"), "{e}");
        let e = check_output(&d.join("afile/deeper/x.tsv"), &[], &[]).unwrap_err().to_string();
        assert!(e.contains("afile is not a directory"), "{e}");
        std::fs::create_dir(d.join("adir")).unwrap();
        let e = check_output_named("the pairs table adir", &d.join("adir"), &[], &[]).unwrap_err().to_string();
        assert!(e.starts_with("the pairs table adir: is a directory"), "{e}");
        // a directory still to be created is fine, and is not created by the check
        check_output(&d.join("new/sub/x.tsv"), &[], &[]).unwrap();
        assert!(!d.join("new").exists());
        let left: Vec<_> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        // /proc takes no new files, even from root (permission bits would not tell)
        if Path::new("/proc/self").exists() {
            let e = check_output(Path::new("/proc/splicevi_out.tsv"), &[], &[]).unwrap_err().to_string();
            assert!(e.contains("cannot write in /proc"), "{e}");
        }
    }
}
