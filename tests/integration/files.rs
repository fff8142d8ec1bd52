//! Files in and out: the workload's umask, `exec --out` copying a one-shot's files back, and
//! writable host mounts that write as the directory's owner.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::require_root;
use crate::support::*;

/// (mode, uid, relative path) of everything below `root`, sorted.
fn listing(root: &Path) -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            out.push((meta.mode() & 0o7777, meta.uid(), rel));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

#[test]
fn the_workload_umask_is_022_and_profile_settable() {
    require_root!();
    let r = exec(&["--", "/bin/sh", "-c", "umask"]);
    assert_eq!(r.stdout.trim(), "0022", "{r:?}");
    let profile = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(profile.path(), "[process]\numask = \"077\"\n").unwrap();
    let r = exec(&[
        "-p",
        profile.path().to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "umask",
    ]);
    assert_eq!(r.stdout.trim(), "0077", "{r:?}");
    std::fs::write(profile.path(), "[process]\numask = \"0999\"\n").unwrap();
    let bad = exec(&["-p", profile.path().to_str().unwrap(), "--", "true"]);
    assert_eq!(bad.code, 121, "{bad:?}");
    assert!(bad.stderr.contains("process.umask"), "{bad:?}");
}

#[test]
fn exec_out_returns_files_with_sane_modes() {
    require_root!();
    let host = tempfile::tempdir().unwrap();
    let artifacts = host.path().join("artifacts");
    let out_arg = format!("build:{}", artifacts.display());
    let log_arg = format!("/tmp/run.log:{}", artifacts.display());
    // A background process still running and a link planted towards a host file: the copy
    // happens once every process is gone, and a link is copied as a link.
    let r = exec(&[
        "--out",
        &out_arg,
        "--out",
        &log_arg,
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p build/bin && echo made > build/a.txt && printf '#!/bin/sh\\n' > build/bin/run \
         && chmod +x build/bin/run && ln -s /etc/shadow build/evil && echo log > /tmp/run.log \
         && (sleep 31407 &) && exit 5",
    ]);
    assert_eq!(r.code, 5, "the command's code: {r:?}");
    assert!(!r.stderr.contains("warning"), "{r:?}");
    let got = listing(&artifacts);
    let want: Vec<(u32, u32, String)> = vec![
        (0o755, 0, "build".into()),
        (0o644, 0, "build/a.txt".into()),
        (0o755, 0, "build/bin".into()),
        (0o755, 0, "build/bin/run".into()),
        (0o777, 0, "build/evil".into()),
        (0o644, 0, "run.log".into()),
    ];
    assert_eq!(got, want);
    assert_eq!(
        std::fs::read_to_string(artifacts.join("build/a.txt")).unwrap(),
        "made\n"
    );
    assert!(std::fs::symlink_metadata(artifacts.join("build/evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(host_processes_matching("31407").is_empty());

    // What is missing is a warning; the command's code stands.
    let missing = exec(&[
        "--out",
        &format!("nothere:{}", artifacts.display()),
        "--",
        "true",
    ]);
    assert_eq!(missing.code, 0, "{missing:?}");
    assert!(
        missing.stderr.contains("warning: --out nothere"),
        "{missing:?}"
    );
    // Malformed, and not with a session.
    assert_eq!(exec(&["--out", "nohostdir", "--", "true"]).code, 121);
    assert_eq!(exec(&["--out", "../x:/tmp", "--", "true"]).code, 121);
    let sess = exec(&["--session", "nosuch", "--out", "a:/tmp", "--", "true"]);
    assert_eq!(sess.code, 121, "{sess:?}");
    assert!(sess.stderr.contains("--out"), "{sess:?}");
}
