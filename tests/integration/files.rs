//! Files in and out: the workload's umask, `exec --out` copying a one-shot's files back, and
//! writable host mounts that write as the directory's owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    // A command killed at its --timeout still hands back what it made.
    let timed = exec(&[
        "--timeout",
        "500ms",
        "--out",
        &format!("report.xml:{}", artifacts.display()),
        "--",
        "/bin/sh",
        "-c",
        "echo '<testsuite/>' > report.xml; exec sleep 31410",
    ]);
    assert_eq!(timed.code, 124, "{timed:?}");
    assert_eq!(
        std::fs::read_to_string(artifacts.join("report.xml")).unwrap(),
        "<testsuite/>\n"
    );
    // Malformed, and not with a session.
    assert_eq!(exec(&["--out", "nohostdir", "--", "true"]).code, 121);
    assert_eq!(exec(&["--out", "../x:/tmp", "--", "true"]).code, 121);
    let sess = exec(&["--session", "nosuch", "--out", "a:/tmp", "--", "true"]);
    assert_eq!(sess.code, 121, "{sess:?}");
    assert!(sess.stderr.contains("--out"), "{sess:?}");
}

/// A host directory owned by `uid`:`gid`, writable only by its owner.
fn owned_dir(uid: u32, gid: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn writable_mounts_write_as_the_directory_owner() {
    require_root!();
    // An ordinary host user (no account needed) and root.
    let user = owned_dir(4242, 4343);
    std::fs::write(user.path().join("existing"), "old\n").unwrap();
    std::os::unix::fs::chown(user.path().join("existing"), Some(4242), Some(4343)).unwrap();
    let rooted = owned_dir(0, 0);
    let readonly = owned_dir(4242, 4343);
    let m_user = format!("{}:/work:rw", user.path().display());
    let m_root = format!("{}:/rootws:rw", rooted.path().display());
    let m_ro = format!("{}:/ro", readonly.path().display());
    let r = exec(&[
        "-v",
        &m_user,
        "-v",
        &m_root,
        "-v",
        &m_ro,
        "--",
        "/bin/sh",
        "-c",
        "set -e; echo made > /work/new; mkdir /work/dir; echo more >> /work/existing; \
         echo r > /rootws/file; stat -c '%u:%g' /work /work/existing /rootws; \
         if echo x > /ro/x 2>/dev/null; then echo ro-written; else echo ro-refused; fi",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // Inside, the owner's files are the sandbox user's.
    assert_eq!(r.stdout, "100:101\n100:101\n100:101\nro-refused\n", "{r:?}");
    assert!(!r.stderr.contains("idmapped"), "no fallback here: {r:?}");
    let owner = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner(&user.path().join("new")), (4242, 4343, 0o644));
    assert_eq!(owner(&user.path().join("dir")), (4242, 4343, 0o755));
    assert_eq!(
        std::fs::read_to_string(user.path().join("existing")).unwrap(),
        "old\nmore\n"
    );
    assert_eq!(owner(&rooted.path().join("file")), (0, 0, 0o644));
    assert!(!readonly.path().join("x").exists());
}

#[test]
fn writable_mounts_map_only_the_owner() {
    require_root!();
    // A file of another host user in the workspace stays theirs: unmapped inside, not writable.
    let ws = owned_dir(4242, 4343);
    let other = ws.path().join("others");
    std::fs::write(&other, "theirs\n").unwrap();
    std::os::unix::fs::chown(&other, Some(4545), Some(4545)).unwrap();
    let m = format!("{}:/work:rw", ws.path().display());
    let r = exec(&[
        "-v",
        &m,
        "--",
        "/bin/sh",
        "-c",
        "stat -c '%u' /work/others; echo x >> /work/others && echo written; \
         chown 0 /work/. 2>/dev/null && echo chowned; true",
    ]);
    assert_eq!(r.stdout, "65534\n", "{r:?}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "theirs\n");
    assert_eq!(std::fs::metadata(ws.path()).unwrap().uid(), 4242);

    // A shared directory (sticky and world-writable, like /tmp) is no one's to write as: a
    // plain bind, where the sandbox writes as its own host uid, never as root.
    let shared = owned_dir(0, 0);
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let m = format!("{}:/shared:rw", shared.path().display());
    let r = exec(&["-v", &m, "--", "/bin/sh", "-c", "echo x > /shared/f"]);
    assert_eq!(r.code, 0, "{r:?}");
    let uid = std::fs::metadata(shared.path().join("f")).unwrap().uid();
    assert!(uid > nsbox::ids::DEFAULT_UID_BASE, "written as {uid}");
}

#[test]
fn writable_mounts_fall_back_with_a_warning_where_idmapping_is_unsupported() {
    require_root!();
    // ramfs cannot be idmapped: the bind stays plain, and the sandbox is told.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "ramfs", "nsbox-test-ramfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let _unmount = Unmount(dir.path().to_path_buf());
    std::os::unix::fs::chown(dir.path(), Some(4242), Some(4242)).unwrap();
    let m = format!("{}:/work:rw", dir.path().display());
    let r = exec(&["-v", &m, "--", "/bin/sh", "-c", "stat -c %u /work"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "65534\n", "{r:?}");
    assert!(
        r.stderr.contains("is not idmapped") && r.stderr.contains("cannot idmap"),
        "{r:?}"
    );
}

#[test]
fn git_trusts_a_writable_mount_and_needs_safe_directory_read_only() {
    require_root!();
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        skip("git_trusts_a_writable_mount", "git is not installed");
        return;
    }
    let repo = owned_dir(4242, 4242);
    let init = std::process::Command::new("git")
        .args(["init", "-q"])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(init.success());
    let chown = std::process::Command::new("chown")
        .args(["-R", "4242:4242"])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let rw = format!("{}:/work:rw", repo.path().display());
    let ok = exec(&["-v", &rw, "-w", "/work", "--", "git", "status", "--short"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let ro = format!("{}:/work", repo.path().display());
    let refused = exec(&["-v", &ro, "-w", "/work", "--", "git", "status"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("dubious ownership"), "{refused:?}");
    let trusted = exec(&[
        "-v",
        &ro,
        "-w",
        "/work",
        "-e",
        "GIT_CONFIG_COUNT=1",
        "-e",
        "GIT_CONFIG_KEY_0=safe.directory",
        "-e",
        "GIT_CONFIG_VALUE_0=/work",
        "--",
        "git",
        "status",
        "--short",
    ]);
    assert_eq!(trusted.code, 0, "{trusted:?}");
}

/// A writable mount of a root-owned directory writes as root on the host, so a setuid or
/// setgid file made there would hand root (or the owner) to whoever runs it on the host. Every
/// way to set those bits from inside is refused (seccomp), and none lands on the host.
#[test]
fn setuid_files_on_writable_mounts_are_refused() {
    require_root!();
    let rooted = owned_dir(0, 0);
    let user = owned_dir(4242, 4343);
    let m_root = format!("{}:/rootws:rw", rooted.path().display());
    let m_user = format!("{}:/work:rw", user.path().display());
    let script = "\
        for d in /rootws /work; do \
          cp /bin/true $d/t; \
          chmod u+s $d/t 2>/dev/null && echo chmod-suid-ran; \
          chmod g+s $d/t 2>/dev/null && echo chmod-sgid-ran; \
          chmod 4755 $d/t 2>/dev/null && echo chmod-4755-ran; \
          install -m 4755 /bin/true $d/i 2>/dev/null && echo install-ran; \
          python3 -c \"import os,sys; d=sys.argv[1]; \
fd=os.open(d+'/o', os.O_CREAT|os.O_WRONLY, 0o4755); print('open-created')\" $d 2>/dev/null; \
          python3 -c \"import os,sys,stat; d=sys.argv[1]; \
os.mknod(d+'/n', 0o6755|stat.S_IFREG); print('mknod-created')\" $d 2>/dev/null; \
        done; echo done";
    let r = exec(&["-v", &m_root, "-v", &m_user, "--", "/bin/sh", "-c", script]);
    assert_eq!(r.code, 0, "{r:?}");
    for refused in [
        "chmod-suid-ran",
        "chmod-sgid-ran",
        "chmod-4755-ran",
        "install-ran",
        "open-created",
        "mknod-created",
    ] {
        assert!(!r.stdout.contains(refused), "{refused}: {r:?}");
    }
    assert!(r.stdout.ends_with("done\n"), "{r:?}");
    for dir in [rooted.path(), user.path()] {
        for (mode, _, path) in listing(dir) {
            assert_eq!(
                mode & 0o6000,
                0,
                "{path} has a setuid/setgid bit on the host"
            );
        }
        assert!(dir.join("t").exists(), "the plain copy was made");
    }
}
