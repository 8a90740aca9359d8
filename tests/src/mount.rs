//! mount(2)/umount(2) of the pseudo filesystems the guards own (bpffs, and
//! cgroup2 where the machine has none mounted).

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{Result, bail};

/// mount(2) of a pseudo filesystem (`source` and `fstype` as for `mount -t`).
pub fn mount(source: &str, target: &Path, fstype: &str) -> Result<()> {
    let src = CString::new(source)?;
    let dst = CString::new(target.as_os_str().as_bytes())?;
    let ty = CString::new(fstype)?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "mount -t {fstype} {source} {}: {}",
            target.display(),
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// umount(2); falls back to a lazy detach if the mount is busy.
pub fn umount(target: &Path) -> Result<()> {
    let dst = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated string.
    if unsafe { libc::umount2(dst.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    bail!(
        "umount {}: {}",
        target.display(),
        io::Error::last_os_error()
    )
}
