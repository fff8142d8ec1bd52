//! Running commands: exit statuses, standard streams, terminals, environment, secrets, JSON
//! events, mounts, copies.

use std::io::Write;
use std::process::Stdio;

use crate::require_root;
use crate::support::*;

#[test]
fn exit_codes_pass_through() {
    require_root!();
    assert_eq!(exec(&["--", "/bin/true"]).code, 0);
    assert_eq!(exec(&["--", "/bin/sh", "-c", "exit 42"]).code, 42);
    assert_eq!(exec(&["--", "/bin/sh", "-c", "kill -TERM $$"]).code, 143);
    let killed = exec(&["--", "/bin/sh", "-c", "kill -KILL $$"]);
    assert_eq!(killed.code, 137);
    assert!(
        !killed.stderr.contains("memory"),
        "a plain SIGKILL is not reported as OOM: {}",
        killed.stderr
    );
}

#[test]
fn command_not_found_and_not_executable() {
    require_root!();
    let run = exec(&["--", "no-such-command-nsbox"]);
    assert_eq!(run.code, 127);
    assert!(
        run.stderr
            .contains("command not found: no-such-command-nsbox"),
        "{}",
        run.stderr
    );
    let run = exec(&["--", "/nonexistent/tool"]);
    assert_eq!(run.code, 127);
    let run = exec(&["--", "/etc/passwd"]);
    assert_eq!(run.code, 126);
    assert!(
        run.stderr.contains("cannot execute /etc/passwd"),
        "{}",
        run.stderr
    );
    let run = exec(&["--", "/usr"]);
    assert_eq!(run.code, 126);
}

#[test]
fn stdout_and_stderr_stay_separate() {
    require_root!();
    let run = exec(&["--", "/bin/sh", "-c", "echo out; echo err >&2; echo out2"]);
    assert_eq!(run.stdout, "out\nout2\n");
    assert_eq!(run.stderr, "err\n");
}

#[test]
fn stdin_passes_through_only_with_i() {
    require_root!();
    let mut child = nsbox_cmd(&["exec", "-i", "--", "/bin/sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let big: String = "hello sandbox\n".repeat(20_000);
    let writer = std::thread::spawn(move || stdin.write_all(big.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 14 * 20_000);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HELLO SANDBOX\n"));
    // Without -i the command reads /dev/null, whatever nsbox's stdin is.
    let out = nsbox_cmd(&["exec", "--", "/bin/sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

#[test]
fn tty_gives_a_terminal() {
    require_root!();
    let run = exec(&[
        "-t",
        "--",
        "/bin/sh",
        "-c",
        "tty; test -t 0 && test -t 1 && echo yes; stty size",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{lines:?}");
    assert_eq!(lines[1], "yes");
    // An interactive shell over a pty: input in, output out, exit status back.
    let mut child = nsbox_cmd(&["exec", "-it", "--", "/bin/sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo $((6*7)); exit 3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
}

#[test]
fn environment_flags_and_files() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vars.env");
    std::fs::write(&file, "# build settings\nA=from-file\nB=2\n").unwrap();
    let run = exec(&[
        "--env-file",
        file.to_str().unwrap(),
        "-e",
        "A=from-flag",
        "--",
        "/bin/sh",
        "-c",
        "echo $A $B $HOME $LANG",
    ]);
    assert_eq!(run.stdout, "from-flag 2 /sandbox C.UTF-8\n");
}

#[test]
fn secrets_are_masked_even_when_split_across_writes() {
    require_root!();
    let run = exec(&[
        "--secret",
        "API_KEY=sk-live-4f9a8b7c6d5e",
        "--",
        "/bin/sh",
        "-c",
        "echo key=$API_KEY; printf 'sk-live-'; sleep 0.2; printf '4f9a8b7c6d5e\\n'; echo $API_KEY >&2",
    ]);
    assert_eq!(run.code, 0);
    assert!(
        !run.stdout.contains("4f9a8b7c6d5e") && !run.stderr.contains("4f9a8b7c6d5e"),
        "{run:?}"
    );
    assert_eq!(run.stdout, "key=***\n***\n");
    assert_eq!(run.stderr, "***\n");
    // From nsbox's own environment, and in JSON events.
    let out = nsbox_cmd(&[
        "exec",
        "--json",
        "--secret-env",
        "NSBOX_TEST_TOKEN",
        "--",
        "/bin/sh",
        "-c",
        "printf %s \"$NSBOX_TEST_TOKEN\"",
    ])
    .env("NSBOX_TEST_TOKEN", "ghp_abcdefghijklmnop")
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("ghp_abcdefghijklmnop"), "{stdout}");
    let evs = events(&stdout);
    let data: String = evs
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(data, "***");
}

#[test]
fn json_events_describe_the_run() {
    require_root!();
    let run = exec(&[
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "echo hi; echo oops >&2; printf '\\377\\376'; exit 7",
    ]);
    assert_eq!(run.code, 7);
    assert_eq!(run.stderr, "");
    let evs = events(&run.stdout);
    assert_eq!(evs.first().unwrap()["type"], "start");
    let exit = evs.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["code"], 7);
    assert_eq!(exit["oom"], false);
    assert_eq!(exit["timeout"], false);
    assert!(exit["duration_ms"].as_f64().unwrap() > 0.0);
    let text = |kind: &str| -> String {
        evs.iter()
            .filter(|e| e["type"] == kind)
            .filter_map(|e| e["data"].as_str())
            .collect()
    };
    assert!(text("stdout").starts_with("hi\n"));
    assert_eq!(text("stderr"), "oops\n");
    assert!(
        evs.iter()
            .any(|e| e["type"] == "stdout" && e["data_b64"].is_string()),
        "binary output as base64"
    );
    // Errors are events with a phase, followed by an exit event.
    let run = exec(&["--json", "--", "no-such-command-nsbox"]);
    let evs = events(&run.stdout);
    let err = evs
        .iter()
        .find(|e| e["type"] == "error")
        .expect("error event");
    assert_eq!(err["phase"], "setup");
    assert_eq!(err["code"], 127);
    assert_eq!(evs.last().unwrap()["code"], 127);
}

#[test]
fn bind_mounts_are_read_only_unless_rw() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();
    let src = dir.path().to_str().unwrap();
    let ro = format!("{src}:/data");
    let run = exec(&[
        "--mount",
        &ro,
        "--",
        "/bin/sh",
        "-c",
        "cat /data/in.txt; echo x > /data/new",
    ]);
    assert_eq!(run.stdout, "from host\n");
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("Read-only"), "{}", run.stderr);
    assert!(!dir.path().join("new").exists());
    let rw = format!("{src}:/sandbox/data:rw");
    let run = exec(&[
        "--mount",
        &rw,
        "--",
        "/bin/sh",
        "-c",
        "echo written > /sandbox/data/out.txt",
    ]);
    // The sandbox user writes as an unprivileged host uid; make the dir writable for it.
    if run.code != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let run = exec(&[
            "--mount",
            &rw,
            "--",
            "/bin/sh",
            "-c",
            "echo written > /sandbox/data/out.txt",
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written\n"
    );
}

#[test]
fn copies_land_in_the_sandbox_with_modes_and_owner() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src/empty")).unwrap();
    std::fs::write(repo.join("src/main.sh"), "echo built\n").unwrap();
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    std::os::unix::fs::symlink("README", repo.join("LINK")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        repo.join("src/main.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let copy = format!("{}:repo", repo.display());
    let run = exec(&[
        "--copy",
        &copy,
        "-w",
        "/sandbox/repo",
        "--",
        "/bin/sh",
        "-c",
        "./src/main.sh; stat -c '%U %a' src/main.sh README; readlink LINK; test -d src/empty && echo empty-dir; echo more >> README && cat README",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "built\nsandbox 755\nsandbox 644\nREADME\nempty-dir\nhello\nmore\n"
    );
    // The host copy is untouched.
    assert_eq!(
        std::fs::read_to_string(repo.join("README")).unwrap(),
        "hello\n"
    );
}

#[test]
fn writable_root_goes_to_an_ephemeral_layer() {
    require_root!();
    // Read-only by default, and for that reason: uid 0 inside is not refused for permissions.
    let run = exec(&[
        "--user",
        "0",
        "--",
        "/bin/sh",
        "-c",
        "echo x >> /etc/hosts; echo status=$?",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.trim() != "status=0" && run.stderr.contains("Read-only file system"),
        "{run:?}"
    );
    let run = exec(&[
        "--user",
        "0",
        "--writable-root",
        "--",
        "/bin/sh",
        "-c",
        "echo 203.0.113.9 extra >> /etc/hosts && grep -c extra /etc/hosts",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "1\n");
    assert!(
        !std::fs::read_to_string("/etc/hosts")
            .unwrap()
            .contains("203.0.113.9"),
        "the host's file is untouched"
    );
    // The layer went with its sandbox: the next writable root starts from the host's file.
    let run = exec(&[
        "--user",
        "0",
        "--writable-root",
        "--",
        "/bin/sh",
        "-c",
        "grep -c extra /etc/hosts; echo $?",
    ]);
    assert_eq!(run.stdout, "0\n1\n", "{run:?}");
}

#[test]
fn rootfs_directory_runs() {
    require_root!();
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("busybox-static is needed for this test (apt-get install busybox-static)");
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy(busybox, root.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.path().join("marker"), "rootfs\n").unwrap();
    let run = exec(&[
        "--rootfs",
        root.path().to_str().unwrap(),
        "-e",
        "PATH=/bin",
        "--",
        "/bin/sh",
        "-c",
        "cat /marker; busybox id -un; busybox grep -c : /etc/passwd; ls /usr 2>&1 | head -1",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "rootfs");
    assert_eq!(
        lines[1], "sandbox",
        "the sandbox user is added to the rootfs's accounts"
    );
    assert_eq!(
        lines[2], "4",
        "existing accounts are kept (root, app), sandbox and nobody added"
    );
    assert!(
        lines[3].contains("No such file"),
        "host files are not visible: {lines:?}"
    );
}
