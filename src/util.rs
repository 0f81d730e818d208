//! Small shared helpers.

use std::path::Path;

/// Write a file atomically: `write` fills a temporary file in the same directory, which is renamed over
/// `path` only when `write` succeeded. Nothing half-written is ever left at `path`.
pub fn write_atomic<F>(path: &Path, write: F) -> anyhow::Result<()>
where
    F: FnOnce(&Path) -> anyhow::Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(&dir)?;
    let tmp_path = tmp.into_temp_path();
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
