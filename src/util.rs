//! Small shared helpers.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The temporary files of the outputs being written now ([`write_atomic`]): removed by the signal
/// handler ([`remove_temp_files_on_signal`]) when the process is interrupted.
static TEMP_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers a temporary file while it is being written; dropping it unregisters it.
struct TempRegistration(PathBuf);

impl TempRegistration {
    fn new(p: &Path) -> Self {
        TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner()).push(p.to_path_buf());
        TempRegistration(p.to_path_buf())
    }
}

impl Drop for TempRegistration {
    fn drop(&mut self) {
        let mut v = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|q| *q == self.0) {
            v.swap_remove(i);
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary files of the outputs being written, say so, and
/// exit with 130 (128 + SIGINT, what a shell reports for Ctrl-C). Without it a signal ends the process
/// before any destructor runs and leaves `.NAME.XXXXXX.tmp` files beside the outputs. (Completed
/// outputs and checkpoints are not touched: they were renamed into place whole.) Call once at start-up.
pub fn remove_temp_files_on_signal() {
    let _ = ctrlc::set_handler(|| {
        let v = TEMP_FILES.lock().unwrap_or_else(|e| e.into_inner());
        for p in v.iter() {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("interrupted: {} unfinished output file(s) removed; completed outputs are kept", v.len());
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
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if path.is_dir() {
        bail!("{}: is a directory; the output needs a file name", path.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: creating the output's directory", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot write in {}", path.display(), dir.display()))?;
    let tmp_path = tmp.into_temp_path();
    let _registered = TempRegistration::new(&tmp_path);
    write(&tmp_path)?;
    // tempfile creates 0600 files; outputs should be readable like any other file the user writes.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o644))?;
    }
    tmp_path.persist(path).map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
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

/// Checks an output path before any work: `--out` must not be a directory, must not be one of the
/// command's input files (the data it reads), and must not lie inside a run directory it reads (the
/// checkpoint and its config). Each would otherwise be found only at the end, or overwrite the input.
pub fn check_output(out: &Path, inputs: &[&Path], run_dirs: &[&Path]) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!("--out {}: is a directory; give a file name", out.display());
    }
    let target = resolved_output(out);
    for input in inputs {
        if let Ok(i) = std::fs::canonicalize(input) {
            if i == target {
                bail!("--out {}: is the input data {}; write the output to another file", out.display(), input.display());
            }
        }
    }
    for dir in run_dirs {
        if let Ok(d) = std::fs::canonicalize(dir) {
            if target.starts_with(&d) {
                bail!("--out {}: is inside the run directory {} (its checkpoint and config); write the output elsewhere", out.display(), dir.display());
            }
        }
    }
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
