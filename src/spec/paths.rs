//! Paths inside the sandbox and the `--mount` / `--copy` arguments that name them: parsed,
//! normalized (no `..`), kept off the filesystems the sandbox itself owns.

use std::path::{Component, Path, PathBuf};

use super::SpecError;

/// A host path bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub readonly: bool,
}

/// A host file or tree copied into the sandbox before the command starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    pub source: PathBuf,
    /// Absolute path inside the sandbox, below the working tmpfs.
    pub target: PathBuf,
}

/// Mount targets the sandbox's own filesystems own; user mounts may not go there.
const RESERVED_TARGETS: &[&str] = &["/proc", "/dev", "/sys"];

/// Normalizes an absolute in-sandbox path: no `..`, no `.`, no trailing slash.
pub fn normalize_inside(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Parses "SRC:DST[:ro|rw]". SRC is a host path (it must exist); DST an absolute path inside.
pub fn parse_mount(spec: &str) -> Result<BindMount, SpecError> {
    let err = |reason: &str| SpecError::Mount {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (rest, readonly) = if let Some(r) = spec.strip_suffix(":ro") {
        (r, true)
    } else if let Some(r) = spec.strip_suffix(":rw") {
        (r, false)
    } else {
        (spec, true)
    };
    let (src, dst) = rest
        .rsplit_once(':')
        .ok_or_else(|| err("expected SRC:DST[:ro|rw]"))?;
    if src.is_empty() || dst.is_empty() {
        return Err(err("expected SRC:DST[:ro|rw]"));
    }
    let target = normalize_inside(Path::new(dst))
        .ok_or_else(|| err("the destination must be an absolute path without '..'"))?;
    if target == Path::new("/") {
        return Err(err(
            "the destination cannot be / (use --rootfs for a different root)",
        ));
    }
    if let Some(reserved) = RESERVED_TARGETS.iter().find(|r| target.starts_with(r)) {
        return Err(err(&format!(
            "the destination is inside {reserved}, which the sandbox provides itself"
        )));
    }
    let source = absolute(Path::new(src));
    match std::fs::symlink_metadata(&source) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err(&format!(
                "the source {} does not exist",
                source.display()
            )))
        }
        Err(e) => return Err(err(&format!("the source {}: {e}", source.display()))),
    }
    crate::host::path::open_no_follow(&source, crate::host::path::Access::Path)
        .map_err(|e| err(&e.reason()))?;
    Ok(BindMount {
        source,
        target,
        readonly,
    })
}

/// Parses "SRC:DST" for --copy. A relative DST is relative to /sandbox; a DST ending in '/'
/// (or /sandbox itself) receives SRC under its own name.
pub fn parse_copy(spec: &str, sandbox_dir: &Path) -> Result<CopyIn, SpecError> {
    let err = |reason: &str| SpecError::Copy {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (src, dst) = spec
        .rsplit_once(':')
        .ok_or_else(|| err("expected SRC:DST (DST relative to /sandbox)"))?;
    if src.is_empty() {
        return Err(err("the source is empty"));
    }
    let source = absolute(Path::new(src));
    let meta = std::fs::symlink_metadata(&source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(&format!("the source {} does not exist", source.display()))
        } else {
            err(&format!("the source {}: {e}", source.display()))
        }
    })?;
    crate::host::path::open_no_follow(&source, crate::host::path::Access::Path)
        .map_err(|e| err(&e.reason()))?;
    if !(meta.is_file() || meta.is_dir()) {
        return Err(err("only regular files and directories can be copied"));
    }
    let joined = if dst.starts_with('/') {
        PathBuf::from(dst)
    } else {
        sandbox_dir.join(dst)
    };
    let mut target =
        normalize_inside(&joined).ok_or_else(|| err("the destination must not contain '..'"))?;
    if !target.starts_with(sandbox_dir) {
        return Err(err(&format!(
            "the destination {} is outside {} (copies go into the sandbox's working tmpfs)",
            target.display(),
            sandbox_dir.display()
        )));
    }
    if dst.ends_with('/') || dst.is_empty() || dst == "." || target == sandbox_dir {
        let name = source
            .file_name()
            .ok_or_else(|| err("the source has no file name to copy under"))?;
        target.push(name);
    }
    Ok(CopyIn { source, target })
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_and_validate() {
        let m = parse_mount("/usr:/opt/usr").unwrap();
        assert_eq!(m.target, PathBuf::from("/opt/usr"));
        assert!(m.readonly);
        assert!(!parse_mount("/usr:/data:rw").unwrap().readonly);
        assert!(parse_mount("/usr:/data:ro").unwrap().readonly);
        assert!(parse_mount("/nonexistent-nsbox-src:/x")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        assert!(parse_mount("/usr:relative").is_err());
        assert!(parse_mount("/usr:/").is_err());
        assert!(parse_mount("/usr:/proc/x").is_err());
        assert!(parse_mount("/usr:/a/../b").is_err());
        assert!(parse_mount("/usr").is_err());
    }

    #[test]
    fn copies_land_under_the_sandbox_dir() {
        let sb = Path::new("/sandbox");
        let c = parse_copy("/etc/hostname:notes.txt", sb).unwrap();
        assert_eq!(c.target, PathBuf::from("/sandbox/notes.txt"));
        let c = parse_copy("/etc/hostname:/sandbox/", sb).unwrap();
        assert_eq!(c.target, PathBuf::from("/sandbox/hostname"));
        let c = parse_copy("/etc/hostname:.", sb).unwrap();
        assert_eq!(c.target, PathBuf::from("/sandbox/hostname"));
        assert!(parse_copy("/etc/hostname:/etc/x", sb).is_err());
        assert!(parse_copy("/etc/hostname:../x", sb).is_err());
        assert!(parse_copy("/nonexistent-nsbox:x", sb).is_err());
    }

    #[test]
    fn normalize_rejects_escapes() {
        assert_eq!(
            normalize_inside(Path::new("/a/./b/")).unwrap(),
            PathBuf::from("/a/b")
        );
        assert!(normalize_inside(Path::new("/a/../b")).is_none());
        assert!(normalize_inside(Path::new("a")).is_none());
    }
}
