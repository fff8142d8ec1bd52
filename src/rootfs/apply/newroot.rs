//! The new root, before and at pivot_root: every mount made private, a scratch tmpfs for the
//! overlay's upper and work directories, the upper layer prepared, the overlay mounted, then
//! the switch into it with the host's root detached.

use std::ffi::CString;
use std::io::{self};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, CWD};
use rustix::mount::{self as rmount, MountFlags, MountPropagationFlags, UnmountFlags};

use crate::rootfs::plan::RootfsPlan;

use super::error::{fail, rustix_err};
use super::upper::UpperLayer;
use super::{open_dir, IdMap, Marker, RootfsError};

/// Where the scratch tmpfs (overlay upper/work and the new root's mount point) goes: a directory
/// of the host root that exists everywhere. Mounting there only affects our private namespace.
fn scratch_dir() -> &'static Path {
    for candidate in ["/tmp", "/mnt", "/var/tmp", "/run", "/dev"] {
        if std::fs::symlink_metadata(candidate).is_ok_and(|m| m.is_dir()) {
            return Path::new(candidate);
        }
    }
    Path::new("/tmp")
}

/// Builds the new root before pivot_root: makes every mount private, mounts a scratch tmpfs,
/// prepares the overlay's upper directory and mounts the overlay. Returns the new root's path
/// and the upper directory (O_PATH): a session's supervisor keeps it for `nsbox commit`, since
/// after pivot_root no path leads to it.
pub fn build_new_root(
    plan: &RootfsPlan,
    ids: IdMap,
    mark: Marker<'_>,
) -> Result<(PathBuf, OwnedFd), RootfsError> {
    let root = Path::new("/");
    // Nothing we mount may propagate back to the host's mount namespace.
    rmount::mount_change(
        root,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| fail("make mounts private", root)(rustix_err(e)))?;

    // Open the lower layers before anything is mounted: the scratch tmpfs may cover the path
    // they live under (a --rootfs below /tmp). The overlay gets them as /proc/self/fd/N.
    let mut lowers = Vec::with_capacity(plan.lowers.len());
    for lower in &plan.lowers {
        lowers.push(open_dir(CWD, lower).map_err(fail("open lower layer", lower))?);
    }
    // A kept upper directory (`nsbox build`) may also lie below the scratch mount point.
    let kept = match &plan.upper_dir {
        Some(dir) => {
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            Some((
                open_dir(CWD, &upper).map_err(fail("open upper directory", &upper))?,
                open_dir(CWD, &work).map_err(fail("open work directory", &work))?,
            ))
        }
        None => None,
    };
    let scratch = scratch_dir();
    let data = CString::new(format!("size={},mode=0700", plan.scratch_size.bytes()))
        .map_err(|e| fail("mount scratch tmpfs", scratch)(io::Error::other(e)))?;
    rmount::mount(
        "nsbox-scratch",
        scratch,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| fail("mount scratch tmpfs", scratch)(rustix_err(e)))?;
    let (upper, work) = match &kept {
        Some((upper, work)) => (
            PathBuf::from(format!("/proc/self/fd/{}", upper.as_raw_fd())),
            PathBuf::from(format!("/proc/self/fd/{}", work.as_raw_fd())),
        ),
        None => (scratch.join("upper"), scratch.join("work")),
    };
    let new_root = scratch.join("root");
    let made: &[&PathBuf] = if kept.is_some() {
        &[&new_root]
    } else {
        &[&upper, &work, &new_root]
    };
    for dir in made {
        rfs::mkdir(*dir, Mode::from_raw_mode(0o755))
            .map_err(|e| fail("create scratch directory", dir)(rustix_err(e)))?;
    }

    let upper_fd = open_dir(CWD, &upper).map_err(fail("open upper directory", &upper))?;
    let upper_layer = UpperLayer::new(
        upper_fd.as_fd(),
        lowers.iter().map(|l| l.as_fd()).collect(),
        ids,
    );
    mark("scratch mounted");
    for op in &plan.upper {
        upper_layer.apply(op)?;
    }
    mark("upper layer prepared");
    drop(upper_layer);

    let lower_fds: Vec<i32> = lowers.iter().map(|fd| fd.as_raw_fd()).collect();
    let (options, relative) = overlay_options(&lower_fds, &upper, &work);
    let options =
        CString::new(options).map_err(|e| fail("mount overlay", &new_root)(io::Error::other(e)))?;
    let previous = if relative {
        let here =
            open_dir(CWD, Path::new(".")).map_err(fail("open the working directory", &new_root))?;
        rustix::process::chdir("/proc/self/fd")
            .map_err(|e| fail("enter /proc/self/fd", &new_root)(rustix_err(e)))?;
        Some(here)
    } else {
        None
    };
    let mounted = rmount::mount(
        "overlay",
        &new_root,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        options.as_c_str(),
    );
    if let Some(here) = previous {
        rustix::process::fchdir(&here)
            .map_err(|e| fail("return to the working directory", &new_root)(rustix_err(e)))?;
    }
    mounted.map_err(|e| fail("mount overlay", &new_root)(rustix_err(e)))?;
    mark("overlay mounted");
    Ok((new_root, upper_fd))
}

/// mount(2) copies at most one page of options; stay below it.
const OVERLAY_OPTIONS_MAX: usize = 4000;

/// The overlay's mount options: each lower layer by its descriptor, top first, then the upper
/// and work directories. Returns the options and whether the layers are named relative to
/// /proc/self/fd (the caller must then mount from that directory).
///
/// Images with many layers: mount(2) copies one page of options. Each layer is then named by
/// its descriptor's number alone, resolved from /proc/self/fd as the working directory
/// (overlayfs resolves relative lower paths from the caller's): overlayfs's limit of 500
/// layers fits (`crate::image::MAX_LAYERS` keeps images below it), on every kernel.
fn overlay_options(lower_fds: &[i32], upper: &Path, work: &Path) -> (String, bool) {
    let options = |prefix: &str| {
        let lowerdir = lower_fds
            .iter()
            .map(|fd| format!("{prefix}{fd}"))
            .collect::<Vec<_>>()
            .join(":");
        format!(
            "lowerdir={lowerdir},upperdir={},workdir={},index=off",
            escape_overlay_path(upper),
            escape_overlay_path(work)
        )
    };
    let full = options("/proc/self/fd/");
    if full.len() >= OVERLAY_OPTIONS_MAX {
        (options(""), true)
    } else {
        (full, false)
    }
}

/// Overlay options separate layers with ':' and options with ','; both are escaped with '\'.
fn escape_overlay_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Switches the process's root to `new_root` and detaches the host's root entirely, so no path
/// resolved from here on can reach a host file.
pub fn pivot_into(new_root: &Path) -> Result<(), RootfsError> {
    rustix::process::chdir(new_root)
        .map_err(|e| fail("enter new root", new_root)(rustix_err(e)))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // removes the old root without needing a directory for it inside the new root.
    rustix::process::pivot_root(".", ".")
        .map_err(|e| fail("pivot_root", new_root)(rustix_err(e)))?;
    rmount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| fail("detach host root", Path::new("/"))(rustix_err(e)))?;
    rustix::process::chdir("/")
        .map_err(|e| fail("enter new root", Path::new("/"))(rustix_err(e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lowers_keep_the_plans_order_top_first() {
        let (options, relative) =
            overlay_options(&[7, 8, 9], Path::new("/tmp/upper"), Path::new("/tmp/work"));
        assert!(!relative);
        assert_eq!(
            options,
            "lowerdir=/proc/self/fd/7:/proc/self/fd/8:/proc/self/fd/9,upperdir=/tmp/upper,workdir=/tmp/work,index=off"
        );
    }

    #[test]
    fn an_image_with_many_layers_names_them_relative_to_proc_self_fd() {
        let fds: Vec<i32> = (100..599).collect();
        let (options, relative) = overlay_options(&fds, Path::new("/u"), Path::new("/w"));
        assert!(relative);
        assert!(options.len() < OVERLAY_OPTIONS_MAX, "{}", options.len());
        assert!(options.starts_with("lowerdir=100:101:"));
        assert!(!options.contains("/proc/self/fd/"));
    }

    #[test]
    fn overlay_paths_are_escaped() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
        assert_eq!(escape_overlay_path(Path::new("/")), "/");
    }
}
