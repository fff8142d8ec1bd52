//! Parser for `/proc/<pid>/mountinfo` (proc(5), "mountinfo").
//!
//! Owns: turning the kernel's mount table text into [`MountEntry`] values, and answering "which
//! mounts are still visible" when later mounts cover earlier ones. Everything that needs to know
//! where a filesystem is mounted (cgroup hierarchies, overlay checks, `nsbox doctor`) reads it
//! through here instead of guessing paths such as `/sys/fs/cgroup`.
//!
//! Must not: mount or unmount anything, or interpret what a mount *means* (that belongs to the
//! caller, e.g. `cgroup::CgroupLayout`). [`parse`] is pure so unit tests feed it real-world
//! fixtures; only [`read_self`] touches the filesystem.
//!
//! Line format (fields separated by single spaces):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! (7) is zero or more optional fields ended by the `-` separator (8). Paths and the source escape
//! space, tab, newline and backslash as octal (`\040`, `\011`, `\012`, `\134`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the kernel publishes the mount table of the calling process's mount namespace.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of the mount (may be reused after unmount).
    pub mount_id: u32,
    /// Id of the parent mount (or of self for the root of this mount namespace's tree).
    pub parent_id: u32,
    /// `st_dev` major of files on this filesystem.
    pub major: u32,
    /// `st_dev` minor of files on this filesystem.
    pub minor: u32,
    /// The directory of the filesystem that forms the root of this mount (bind mounts and
    /// cgroup namespaces show something other than `/`).
    pub root: PathBuf,
    /// Where it is mounted, relative to the process's root directory.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`), comma separated.
    pub mount_options: String,
    /// Optional fields such as `shared:1`, `master:2`, `propagate_from:3`, `unbindable`.
    pub optional_fields: Vec<String>,
    /// Filesystem type, `type[.subtype]` (`cgroup2`, `fuse.sshfs`).
    pub fs_type: String,
    /// Filesystem-specific source (`/dev/sda1`, `cgroup2`, `none`). Decoded lossily: it is only
    /// shown to people, never used as a path.
    pub source: String,
    /// Per-superblock options (`rw,memory`, `rw,nsdelegate`), comma separated.
    pub super_options: String,
}

impl MountEntry {
    /// True when the per-mount options contain `opt` exactly (e.g. `ro`).
    pub fn has_mount_option(&self, opt: &str) -> bool {
        self.mount_options.split(',').any(|o| o == opt)
    }

    /// True when the per-superblock options contain `opt` exactly (e.g. `memory` on a cgroup v1
    /// mount; `cpu` must not match `cpuacct` or `cpuset`).
    pub fn has_super_option(&self, opt: &str) -> bool {
        self.super_options.split(',').any(|o| o == opt)
    }

    /// True when the mount point is read-only for this mount.
    pub fn is_read_only(&self) -> bool {
        self.has_mount_option("ro")
    }
}

/// What went wrong reading or parsing a mount table.
#[derive(Debug, thiserror::Error)]
pub enum MountinfoError {
    #[error("cannot read the mount table {path}: {source} — hint: nsbox needs /proc mounted (procfs) to find the cgroup hierarchies")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed mountinfo line {line_no}: {reason}: {line:?}")]
    Malformed {
        line_no: usize,
        line: String,
        reason: &'static str,
    },
}

/// Parse the whole text of a mountinfo file. Empty lines are ignored; any other line that does not
/// have the documented shape is an error (a half-understood mount table would make nsbox pick the
/// wrong cgroup hierarchy, so it fails instead of guessing).
pub fn parse(text: &str) -> Result<Vec<MountEntry>, MountinfoError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse_line(line).map_err(|reason| malformed(i + 1, line, reason)))
        .collect()
}

/// Read and parse `/proc/self/mountinfo`.
pub fn read_self() -> Result<Vec<MountEntry>, MountinfoError> {
    read_path(Path::new(SELF_MOUNTINFO))
}

/// Read and parse a mountinfo file at `path` (e.g. `/proc/<pid>/mountinfo`).
pub fn read_path(path: &Path) -> Result<Vec<MountEntry>, MountinfoError> {
    let err = |source| MountinfoError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The kernel regenerates the text on every read: one large read instead of many growing
    // ones (read_to_string starts with a tiny buffer).
    let mut bytes = Vec::with_capacity(64 * 1024);
    std::io::Read::read_to_end(&mut std::fs::File::open(path).map_err(err)?, &mut bytes)
        .map_err(err)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse(&text)
}

/// The entries that are still reachable by path: a mount is hidden when a later mount sits on the
/// same mount point on top of it, or on one of its ancestor directories (e.g. a tmpfs mounted over
/// `/sys/fs/cgroup` after `/sys/fs/cgroup/memory`). Order is preserved. mountinfo lists mounts in
/// the order they were attached, which is what makes "later" meaningful.
pub fn visible(entries: &[MountEntry]) -> Vec<&MountEntry> {
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| !is_hidden(entries, *i, e))
        .map(|(_, e)| e)
        .collect()
}

fn is_hidden(entries: &[MountEntry], index: usize, entry: &MountEntry) -> bool {
    entries[index + 1..].iter().any(|later| {
        if later.mount_point == entry.mount_point {
            // Stacked on the same directory: the newer one is what a path lookup finds. A
            // mount whose parent is itself (namespace root) cannot be stacked on by itself.
            later.mount_id != entry.mount_id
        } else if entry.mount_point.starts_with(&later.mount_point) {
            // A later mount on an ancestor directory covers this one, unless it is one of this
            // entry's own ancestors in the mount tree (listed later only after re-numbering).
            !is_mount_ancestor(entries, entry, later.mount_id)
        } else {
            false
        }
    })
}

fn is_mount_ancestor(entries: &[MountEntry], entry: &MountEntry, candidate: u32) -> bool {
    let mut current = entry;
    // Bounded walk: a corrupt or cyclic parent chain must not hang us.
    for _ in 0..entries.len() {
        if current.parent_id == candidate {
            return true;
        }
        match entries.iter().find(|e| e.mount_id == current.parent_id) {
            Some(parent) if parent.mount_id != current.mount_id => current = parent,
            _ => return false,
        }
    }
    false
}

fn malformed(line_no: usize, line: &str, reason: &'static str) -> MountinfoError {
    MountinfoError::Malformed {
        line_no,
        line: line.to_string(),
        reason,
    }
}

fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    // Split on single spaces, not runs of whitespace: an empty source shows up as two spaces in
    // a row and must stay an (empty) field.
    let mut fields = line.split(' ');
    let mut next = |what: &'static str| fields.next().ok_or(what);

    let mount_id = parse_u32(next("missing mount id")?).ok_or("mount id is not a number")?;
    let parent_id = parse_u32(next("missing parent id")?).ok_or("parent id is not a number")?;
    let (major, minor) = next("missing major:minor")?
        .split_once(':')
        .and_then(|(a, b)| Some((parse_u32(a)?, parse_u32(b)?)))
        .ok_or("major:minor is not two numbers")?;
    let root = unescape_path(next("missing root")?)?;
    let mount_point = unescape_path(next("missing mount point")?)?;
    let mount_options = next("missing mount options")?.to_string();

    let mut optional_fields = Vec::new();
    loop {
        match next("missing '-' separator")? {
            "-" => break,
            field => optional_fields.push(field.to_string()),
        }
    }

    let fs_type = unescape_lossy(next("missing filesystem type")?)?;
    let source = unescape_lossy(next("missing source")?)?;
    let super_options = unescape_lossy(next("missing super options")?)?;
    if fields.next().is_some() {
        return Err("unexpected fields after super options");
    }
    if fs_type.is_empty() {
        return Err("empty filesystem type");
    }

    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

fn parse_u32(s: &str) -> Option<u32> {
    // `u32::from_str` accepts a leading '+'; the kernel never writes one.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decode the kernel's `\ooo` escapes. Only three octal digits after a backslash are an escape;
/// anything else is kept verbatim, as the kernel only ever escapes with exactly three digits.
fn unescape(field: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes.get(i + 1..i + 4);
            if let Some(d) = digits.filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b))) {
                let value = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(u8::try_from(value).map_err(|_| "octal escape above \\377")?);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Ok(out)
}

fn unescape_path(field: &str) -> Result<PathBuf, &'static str> {
    if field.is_empty() {
        return Err("empty path");
    }
    // Paths may hold any byte except NUL; keep them as raw bytes instead of forcing UTF-8.
    Ok(PathBuf::from(OsString::from_vec(unescape(field)?)))
}

fn unescape_lossy(field: &str) -> Result<String, &'static str> {
    Ok(String::from_utf8_lossy(&unescape(field)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development machine (hybrid cgroups, Firecracker guest), verbatim.
    const HYBRID_HOST: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_all_fields_of_a_plain_line() {
        let e = &parse(HYBRID_HOST).expect("parse")[2];
        assert_eq!(e.mount_id, 32);
        assert_eq!(e.parent_id, 31);
        assert_eq!((e.major, e.minor), (0, 29));
        assert_eq!(e.root, Path::new("/"));
        assert_eq!(e.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(e.mount_options, "rw,relatime");
        assert!(e.optional_fields.is_empty());
        assert_eq!(e.fs_type, "cgroup");
        assert_eq!(e.source, "cgroup");
        assert_eq!(e.super_options, "rw,cpu");
        assert!(e.has_super_option("cpu"));
        assert!(!e.has_super_option("cpuacct"));
        assert!(!e.is_read_only());
    }

    #[test]
    fn parses_optional_fields_systemd_v2_host() {
        let text = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
470 30 0:48 / /run/user/1000 rw,nosuid,nodev,relatime shared:249 master:3 propagate_from:2 - tmpfs tmpfs rw,size=1620252k,nr_inodes=405063,mode=700,uid=1000,gid=1000,inode64
";
        let v = parse(text).expect("parse");
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].optional_fields, vec!["shared:8"]);
        assert_eq!(v[1].fs_type, "cgroup2");
        assert!(v[1].has_super_option("nsdelegate"));
        assert_eq!(
            v[2].optional_fields,
            vec!["shared:249", "master:3", "propagate_from:2"]
        );
        assert_eq!(v[2].mount_point, Path::new("/run/user/1000"));
    }

    #[test]
    fn decodes_octal_escapes_in_paths_and_source() {
        let text = r"88 30 0:50 /with\040space /mnt/a\040b\011tab\012nl\134bs rw,relatime - fuse.sshfs me@host:/my\040dir rw,user_id=0";
        let e = &parse(text).expect("parse")[0];
        assert_eq!(e.root, Path::new("/with space"));
        assert_eq!(e.mount_point, Path::new("/mnt/a b\ttab\nnl\\bs"));
        assert_eq!(e.fs_type, "fuse.sshfs");
        assert_eq!(e.source, "me@host:/my dir");
    }

    #[test]
    fn keeps_non_utf8_bytes_in_paths() {
        use std::os::unix::ffi::OsStrExt;
        let text = r"90 30 0:51 / /mnt/\377x rw - tmpfs tmpfs rw";
        let e = &parse(text).expect("parse")[0];
        assert_eq!(e.mount_point.as_os_str().as_bytes(), b"/mnt/\xffx");
    }

    #[test]
    fn empty_source_is_an_empty_field() {
        // Older kernels print an empty source as nothing between two spaces.
        let e = &parse("91 30 0:52 / /mnt rw - tmpfs  rw").expect("parse")[0];
        assert_eq!(e.source, "");
        assert_eq!(e.super_options, "rw");
    }

    #[test]
    fn cgroup_namespace_root_and_read_only_container_mount() {
        // Docker on a v1 host, cgroupns=host: the mount shows a subtree of the hierarchy.
        let text = "1203 1195 0:33 /docker/4f1c /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:15 - cgroup cgroup rw,memory";
        let e = &parse(text).expect("parse")[0];
        assert_eq!(e.root, Path::new("/docker/4f1c"));
        assert!(e.is_read_only());
        assert_eq!(e.optional_fields, vec!["master:15"]);
    }

    #[test]
    fn co_mounted_v1_controllers() {
        let text = "29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct";
        let e = &parse(text).expect("parse")[0];
        assert_eq!(e.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(e.has_super_option("cpu") && e.has_super_option("cpuacct"));
    }

    #[test]
    fn rejects_malformed_lines_with_line_number() {
        for (text, reason) in [
            (
                "x 1 0:1 / / rw - ext4 /dev/sda rw",
                "mount id is not a number",
            ),
            (
                "1 1 0-1 / / rw - ext4 /dev/sda rw",
                "major:minor is not two numbers",
            ),
            (
                "1 1 0:1 / / rw shared:1 ext4 /dev/sda rw",
                "missing '-' separator",
            ),
            ("1 1 0:1 / / rw - ext4 /dev/sda", "missing super options"),
            (
                "1 1 0:1 / / rw - ext4 /dev/sda rw extra",
                "unexpected fields after super options",
            ),
            ("1 1 0:1", "missing root"),
        ] {
            let input = format!("\n{text}\n");
            match parse(&input) {
                Err(MountinfoError::Malformed {
                    line_no, reason: r, ..
                }) => {
                    assert_eq!(line_no, 2, "{text}");
                    assert_eq!(r, reason, "{text}");
                }
                other => panic!("{text}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn backslash_without_three_octal_digits_is_kept() {
        let e = &parse(r"1 1 0:1 / /a\9b\01 rw - tmpfs t rw").expect("parse")[0];
        assert_eq!(e.mount_point, Path::new(r"/a\9b\01"));
    }

    #[test]
    fn visible_drops_stacked_and_overmounted_entries() {
        let text = "\
1 0 0:1 / / rw - ext4 /dev/root rw
31 1 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
50 41 0:40 / /sys/fs/cgroup/unified rw - tmpfs tmpfs rw
60 1 0:41 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        let all = parse(text).expect("parse");
        let vis: Vec<u32> = visible(&all).iter().map(|e| e.mount_id).collect();
        // 31 is covered by 60 on the same dir; 35/41/50 are below the covered tmpfs.
        assert_eq!(vis, vec![1, 60]);
    }

    #[test]
    fn visible_keeps_children_listed_after_their_parent() {
        let all = parse(HYBRID_HOST).expect("parse");
        assert_eq!(visible(&all).len(), all.len());
    }

    #[test]
    fn reads_own_mount_table() {
        let all = read_self().expect("read /proc/self/mountinfo");
        assert!(all.iter().any(|e| e.mount_point == Path::new("/")));
    }
}
