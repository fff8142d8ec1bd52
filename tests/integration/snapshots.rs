//! Snapshots of sessions: `nsbox pause`/`resume` (the cgroup freezer) and `nsbox commit`
//! (a session's files as an image), including a commit killed halfway.

use std::process::Stdio;
use std::time::Duration;

use crate::oci_build::*;
use crate::require_root;
use crate::support::*;

/// A session removed (with -f) when the test ends, however it ends.
struct Session<'a> {
    ctx: &'a StoreCtx,
    name: String,
}

impl<'a> Session<'a> {
    fn create(ctx: &'a StoreCtx, name: &str, flags: &[&str]) -> Session<'a> {
        let name = format!("{name}-{}", std::process::id());
        let _ = ctx.run(&["rm", "-f", &name]);
        let mut args = vec!["create", "--name", &name];
        args.extend_from_slice(flags);
        ctx.ok(&args);
        Session { ctx, name }
    }

    fn sh(&self, script: &str) -> Run {
        self.ctx.run(&[
            "exec",
            "--session",
            &self.name,
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    }

    fn state(&self) -> String {
        let out = self.ctx.ok(&["ps", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == self.name.as_str())
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    fn id(&self) -> String {
        let out = self.ctx.ok(&["ps", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == self.name.as_str())
            .map(|r| r["id"].as_str().unwrap().to_string())
            .unwrap()
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.ctx.run(&["rm", "-f", &self.name]);
    }
}

/// A store with `base:1`: busybox with the applets the tests use, and /data/old to delete.
fn store_with_base() -> StoreCtx {
    let ctx = StoreCtx::new();
    let mut layout = Layout::new(&ctx.path("base"));
    let mut t = Tar::default();
    t.dir("data/", 0o755)
        .file("data/old", 0o644, b"old\n")
        .file("data/keep", 0o644, b"keep\n")
        .dir("data/gone/", 0o755)
        .file("data/gone/f", 0o644, b"f\n");
    for applet in ["mkdir", "chmod", "rm", "ln", "true", "dd", "seq"] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
        serde_json::json!({"Env": ["PATH=/bin"]}),
    );
    ctx.ok(&["load", ctx.path("base").to_str().unwrap()]);
    ctx
}

/// CPU ticks (user + system) a host process has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(") ").unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn pause_freezes_cpu_refuses_exec_and_resume_continues() {
    require_root!();
    let ctx = StoreCtx::new();
    let s = Session::create(&ctx, "snap-pause", &[]);
    let marker = format!(": spin{}", std::process::id());
    let spin = s.sh(&format!(
        "nohup /bin/sh -c 'while :; do :; done; {marker}' >/dev/null 2>&1 &"
    ));
    assert_eq!(spin.code, 0, "{spin:?}");
    let needle = format!("/bin/sh -c while :; do :; done; {marker}");
    assert!(eventually(10.0, || !host_processes_matching(&needle).is_empty()));
    let pid = host_processes_matching(&needle)[0];
    assert!(eventually(20.0, || cpu_ticks(pid) > 0), "the spinner runs");

    let out = ctx.ok(&["pause", &s.name]);
    assert!(out.contains(&s.id()), "{out}");
    assert_eq!(s.state(), "paused");
    let stats: serde_json::Value =
        serde_json::from_str(&ctx.ok(&["stats", "--json", &s.name])).unwrap();
    assert_eq!(stats["paused"], true, "{stats}");
    // Counters, not wall time: while paused the spinner's CPU time stays where it was.
    let frozen = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(cpu_ticks(pid), frozen, "a paused session uses no CPU");
    // Its cgroup's own counter too, where this host keeps one.
    if let Some(usage) = stats["cpu_usage_usec"].as_u64() {
        let again: serde_json::Value =
            serde_json::from_str(&ctx.ok(&["stats", "--json", &s.name])).unwrap();
        assert_eq!(again["cpu_usage_usec"].as_u64(), Some(usage));
    }

    // Commands are refused, saying how to go on.
    let refused = s.sh("true");
    assert_eq!(refused.code, 125, "{refused:?}");
    assert!(refused.stderr.contains("paused"), "{refused:?}");
    assert!(refused.stderr.contains("nsbox resume"), "{refused:?}");
    assert!(ctx.ok(&["pause", &s.name]).contains("already paused"));

    ctx.ok(&["resume", &s.name]);
    assert_eq!(s.state(), "running");
    assert!(
        eventually(20.0, || cpu_ticks(pid) > frozen),
        "the spinner continues after resume"
    );
    assert_eq!(s.sh("echo back").stdout, "back\n");
    assert!(ctx.ok(&["resume", &s.name]).contains("already running"));
}

#[test]
fn idle_action_pause_pauses_an_idle_session_and_resume_continues() {
    require_root!();
    let ctx = StoreCtx::new();
    let s = Session::create(
        &ctx,
        "snap-idle",
        &["--max-age", "1s", "--idle-action", "pause"],
    );
    let marker = format!("sleep 3{}", std::process::id() % 10000 + 1);
    assert_eq!(s.sh(&format!("nohup {marker} >/dev/null 2>&1 &")).code, 0);
    assert!(eventually(10.0, || !host_processes_matching(&marker).is_empty()));
    // Idle past --max-age: paused, not stopped; its process is still there.
    assert!(eventually(30.0, || s.state() == "paused"), "{}", s.state());
    assert!(!host_processes_matching(&marker).is_empty());
    let refused = s.sh("true");
    assert!(refused.stderr.contains("nsbox resume"), "{refused:?}");
    // Resume restarts the idle clock: it runs commands again, and stays a session.
    ctx.ok(&["resume", &s.name]);
    assert_eq!(s.sh("echo back").stdout, "back\n");
    assert!(!host_processes_matching(&marker).is_empty());
    assert!(eventually(30.0, || s.state() == "paused"), "{}", s.state());
    ctx.ok(&["resume", &s.name]);
    assert_eq!(s.state(), "running");

    // The default (and `stop`) still stops it; an unknown action is a usage error.
    let stopped = Session::create(&ctx, "snap-idle-stop", &["--max-age", "1s"]);
    assert!(
        eventually(30.0, || stopped.state() == "stopped"),
        "{}",
        stopped.state()
    );
    let bad = ctx.run(&["create", "--idle-action", "sleep"]);
    assert_ne!(bad.code, 0, "{bad:?}");
    assert!(bad.stderr.contains("pause"), "{bad:?}");
}

#[test]
fn rm_of_a_paused_session_leaves_nothing() {
    require_root!();
    let ctx = StoreCtx::new();
    let s = Session::create(&ctx, "snap-rm", &[]);
    let id = s.id();
    let marker = format!("sleep 3{}", std::process::id() % 10000);
    assert_eq!(s.sh(&format!("nohup {marker} >/dev/null 2>&1 &")).code, 0);
    assert!(eventually(10.0, || !host_processes_matching(&marker).is_empty()));
    ctx.ok(&["pause", &s.name]);
    // A frozen process acts on no signal: rm must thaw it to end it.
    ctx.ok(&["rm", "-f", &s.name]);
    assert!(host_processes_matching(&marker).is_empty());
    assert!(
        leftover_cgroups(&id).is_empty(),
        "{:?}",
        leftover_cgroups(&id)
    );
    assert_eq!(s.state(), "");
}

/// (path, mode, uid, gid, contents or link target) for each path, as seen in a sandbox.
const DESCRIBE: &str = "for p in /sandbox/work /sandbox/work/run.sh /sandbox/work/secret \
     /sandbox/work/link /sandbox/hard /data/new /data/keep; do \
     stat -c '%n %a %u %g %F' $p; done; cat /sandbox/work/run.sh /sandbox/work/secret \
     /sandbox/hard /data/new /data/keep; readlink /sandbox/work/link; \
     test -e /data/old && echo old-still-there; true";

#[test]
fn commit_makes_an_image_with_the_sessions_files_and_modes() {
    require_root!();
    let ctx = store_with_base();
    let s = Session::create(
        &ctx,
        "snap-commit",
        &[
            "--image",
            "base:1",
            "--writable-root",
            "-u",
            "0:0",
            "-e",
            "FROM_SESSION=yes",
            "--secret",
            "API_TOKEN=tok-31415926",
        ],
    );
    let made = s.sh("mkdir -p /sandbox/work && chmod 750 /sandbox/work \
         && echo 'echo hi' > /sandbox/work/run.sh && chmod 755 /sandbox/work/run.sh \
         && echo s3 > /sandbox/work/secret && chmod 600 /sandbox/work/secret \
         && ln -s run.sh /sandbox/work/link && ln /sandbox/work/secret /sandbox/hard \
         && echo new > /data/new && chmod 640 /data/new && echo changed > /data/keep \
         && rm /data/old && echo scratch > /tmp/scratch");
    assert_eq!(made.code, 0, "{made:?}");
    let before = s.sh(DESCRIBE);
    assert_eq!(before.code, 0, "{before:?}");
    for line in [
        "/sandbox/work 750 0 0 directory",
        "/sandbox/work/secret 600 0 0 regular file",
        "/data/new 640 0 0 regular file",
        "/sandbox/work/link 777 0 0 symbolic link",
    ] {
        assert!(
            before.stdout.contains(line),
            "{line:?} in {}",
            before.stdout
        );
    }
    assert!(!before.stdout.contains("old-still-there"));

    let out = ctx.ok(&["commit", &s.name, "snapimg:1"]);
    assert!(out.starts_with("snapimg:1 sha256:"), "{out}");
    // The session goes on after the commit.
    assert_eq!(s.sh("echo alive").stdout, "alive\n");
    assert_eq!(s.state(), "running");

    let after = ctx.run(&[
        "exec",
        "--image",
        "snapimg:1",
        "-u",
        "0:0",
        "--",
        "/bin/sh",
        "-c",
        DESCRIBE,
    ]);
    assert_eq!(after.code, 0, "{after:?}");
    assert_eq!(after.stdout, before.stdout);
    assert!(!after.stdout.contains("old-still-there"));
    // Config: the session's env and working directory; /tmp was scratch.
    let cfg = ctx.run(&[
        "exec",
        "--image",
        "snapimg:1",
        "--",
        "/bin/sh",
        "-c",
        "pwd; echo $FROM_SESSION; test -e /tmp/scratch && echo kept-tmp; true",
    ]);
    assert_eq!(cfg.stdout, "/sandbox\nyes\n", "{cfg:?}");
    // A secret is never written into the image (its config is in the store's blobs).
    let leaked = std::process::Command::new("grep")
        .args(["-rl", "tok-31415926"])
        .arg(ctx.store().join("blobs"))
        .output()
        .unwrap();
    assert!(leaked.stdout.is_empty(), "{leaked:?}");
    let env = ctx.run(&[
        "exec",
        "--image",
        "snapimg:1",
        "--",
        "/bin/sh",
        "-c",
        "echo ${API_TOKEN:-unset}",
    ]);
    assert_eq!(env.stdout, "unset\n", "{env:?}");
    // The image's /sandbox stays writable in a sandbox of it.
    let w = ctx.run(&[
        "exec",
        "--image",
        "snapimg:1",
        "-u",
        "0:0",
        "--",
        "/bin/sh",
        "-c",
        "echo more > /sandbox/work/more && cat /sandbox/work/more",
    ]);
    assert_eq!(w.stdout, "more\n", "{w:?}");
    let images = ctx.images();
    let img = images
        .iter()
        .find(|i| i.to_string().contains("snapimg:1"))
        .expect("listed");
    assert!(img.to_string().contains("snapimg"), "{img}");

    // A host-root session has no image to stack on: refused with a hint.
    let host = Session::create(&ctx, "snap-host", &[]);
    let r = ctx.run(&["commit", &host.name, "hostimg:1"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("--image"), "{r:?}");
}

#[test]
fn a_commit_killed_halfway_leaves_no_image_and_a_running_session() {
    require_root!();
    let ctx = store_with_base();
    let s = Session::create(
        &ctx,
        "snap-kill",
        &["--image", "base:1", "--sandbox-size", "1g"],
    );
    // Enough incompressible data that the capture takes a while.
    let fill = s.sh("dd if=/dev/urandom of=/sandbox/big bs=1M count=300 2>/dev/null && echo ok");
    assert_eq!(fill.stdout, "ok\n", "{fill:?}");
    let store = ctx.store();
    let store_s = store.to_str().unwrap().to_string();
    let config = ctx.config();
    let mut commit = nsbox_cmd(&[
        "--state-root",
        &store_s,
        "--config",
        config.to_str().unwrap(),
        "commit",
        &s.name,
        "halfway:1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let tmp = store.join("tmp");
    let started = eventually(30.0, || {
        std::fs::read_dir(&tmp).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("commit-")
                    && e.path().join("layer.tar.gz").exists()
            })
        })
    });
    let _ = commit.kill();
    let status = commit.wait().unwrap();
    assert!(started, "the commit got to writing its layer");
    assert!(!status.success(), "killed before it finished");
    assert!(
        !ctx.images()
            .iter()
            .any(|i| i.to_string().contains("halfway")),
        "no half-made image is listed"
    );
    // The session was thawed when the commit's connection closed.
    assert!(eventually(10.0, || s.sh("echo alive").stdout == "alive\n"));
    assert_eq!(s.state(), "running");
    // `image prune` removes what the killed commit left in the store.
    ctx.ok(&["image", "prune"]);
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sandbox_dir_label_on_a_symlink_is_refused() {
    // An image may carry the label `nsbox commit` sets without being a commit: with /sandbox a
    // symlink to /etc, keeping "/sandbox" writable would make /etc of the read-only root
    // writable. Attempt it and expect the sandbox to be refused.
    require_root!();
    let ctx = StoreCtx::new();
    let mut layout = Layout::new(&ctx.path("hostile"));
    let mut t = Tar::default();
    t.symlink("sandbox", "etc");
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip), (t.finish(), Comp::Gzip)],
        serde_json::json!({"Env": ["PATH=/bin"], "Labels": {"org.nsbox.sandbox-dir": "in-image"}}),
    );
    ctx.ok(&["load", ctx.path("hostile").to_str().unwrap()]);
    let r = ctx.run(&[
        "exec",
        "--image",
        "hostile:1",
        "-u",
        "0:0",
        "--",
        "/bin/sh",
        "-c",
        "echo pwned > /etc/pwned && echo wrote",
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("wrote"), "{r:?}");
    assert!(r.stderr.contains("symbolic link"), "{r:?}");
}

/// A session's fields in `nsbox ps --json`, by id or name.
fn ps_row(ctx: &StoreCtx, who: &str) -> serde_json::Value {
    let out = ctx.ok(&["ps", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == who || r["id"] == who)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn fork_starts_sessions_from_the_parents_files_that_diverge_on_their_own() {
    require_root!();
    let ctx = store_with_base();
    let parent = Session::create(
        &ctx,
        "snap-fork",
        &[
            "--image",
            "base:1",
            "--writable-root",
            "-u",
            "0:0",
            "--net",
            "filtered",
            "--allow",
            "192.0.2.1",
            "--secret",
            "API_TOKEN=tok-27182818",
        ],
    );
    let made = parent.sh("mkdir -p /sandbox/w && echo parent > /sandbox/w/f \
         && echo root > /data/new && rm /data/old && rm -r /data/gone && mkdir /data/gone \
         && echo g > /data/gone/g && { nohup sleep 3217 >/dev/null 2>&1 & }");
    assert_eq!(made.code, 0, "{made:?}");
    let forks_name = format!("{}-f", parent.name);
    let out = ctx.run(&["fork", &parent.name, "--count", "2", "--name", &forks_name]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("not carried over"), "{out:?}");
    let ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 2, "{out:?}");
    let forks: Vec<Session<'_>> = (1..=2)
        .map(|i| Session {
            ctx: &ctx,
            name: format!("{forks_name}-{i}"),
        })
        .collect();
    for f in &forks {
        // The parent's files, in /sandbox and in its root; none of its processes or secrets.
        let seen = f.sh("cat /sandbox/w/f /data/new; echo \"token=$API_TOKEN\"; \
             for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | grep -c '^sleep$'; \
             test -e /data/old || echo deleted; ls /data/gone");
        // A deletion (a whiteout) and a directory made anew (opaque) are the parent's too.
        assert_eq!(
            seen.stdout, "parent\nroot\ntoken=\n0\ndeleted\ng\n",
            "{seen:?}"
        );
        let row = ps_row(&ctx, &f.name);
        assert_eq!(row["network"], "filtered", "{row}");
    }
    // Writes diverge: each fork's, and the parent's after the fork, are its own.
    assert_eq!(forks[0].sh("echo one > /sandbox/w/f").code, 0);
    assert_eq!(forks[1].sh("echo two > /data/new").code, 0);
    assert_eq!(parent.sh("echo later > /sandbox/w/g").code, 0);
    assert_eq!(
        parent.sh("cat /sandbox/w/f /data/new").stdout,
        "parent\nroot\n"
    );
    assert_eq!(forks[1].sh("cat /sandbox/w/f").stdout, "parent\n");
    assert_eq!(forks[0].sh("cat /data/new").stdout, "root\n");
    assert_ne!(forks[0].sh("cat /sandbox/w/g").code, 0);
    assert_eq!(parent.state(), "running");

    // A policy and secrets given to fork are the forks'.
    let own = ctx.run(&[
        "fork",
        &parent.name,
        "--name",
        &format!("{forks_name}-own"),
        "--net",
        "none",
        "--secret",
        "API_TOKEN=mine",
    ]);
    assert_eq!(own.code, 0, "{own:?}");
    let own_fork = Session {
        ctx: &ctx,
        name: format!("{forks_name}-own"),
    };
    assert_eq!(ps_row(&ctx, &own_fork.name)["network"], "none");
    assert_eq!(own_fork.sh("echo $API_TOKEN").stdout, "***\n");

    // A fork of a fork: the first fork's files over its parent's.
    let grand = ctx.run(&[
        "fork",
        &forks[0].name,
        "--name",
        &format!("{forks_name}-grand"),
    ]);
    assert_eq!(grand.code, 0, "{grand:?}");
    let grand = Session {
        ctx: &ctx,
        name: format!("{forks_name}-grand"),
    };
    let seen =
        grand.sh("cat /sandbox/w/f /data/new; test -e /data/old || echo deleted; ls /data/gone");
    assert_eq!(seen.stdout, "one\nroot\ndeleted\ng\n", "{seen:?}");
    // Its layers are in this store: a fork through another is refused, and the fork thawed.
    let other = StoreCtx::new();
    let r = other.run(&["fork", &forks[0].name]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("--state-root"), "{r:?}");
    assert_eq!(forks[0].sh("echo alive").stdout, "alive\n");
    assert_eq!(other.entries("tmp") + other.entries("layers"), 0, "{r:?}");
    // A fork's files are in no image: commit says so instead of losing them.
    let commit = ctx.run(&["commit", &grand.name, "grand:1"]);
    assert_ne!(commit.code, 0, "{commit:?}");
    assert!(commit.stderr.contains("commit the parent"), "{commit:?}");

    // Removing the parent first leaves the forks working, also after both prunes (the forks
    // hold their snapshot layers' lease); then nothing is left.
    let parent_id = parent.id();
    drop(parent);
    ctx.ok(&["prune"]);
    ctx.ok(&["image", "prune"]);
    assert_eq!(
        forks[1].sh("cat /sandbox/w/f /data/keep").stdout,
        "parent\nkeep\n"
    );
    let fork_ids: Vec<String> = forks.iter().map(|f| f.id()).collect();
    drop(forks);
    drop(own_fork);
    drop(grand);
    for id in fork_ids.iter().chain([&parent_id]) {
        assert!(leftover_cgroups(id).is_empty(), "{id}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(id.as_str()), "{id} still mounted");
    }
    // The snapshot layers went with their last fork.
    ctx.ok(&["prune"]);
    let layers: Vec<_> = std::fs::read_dir(ctx.store().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert!(layers.is_empty(), "{layers:?}");
}

#[test]
fn fork_of_a_missing_session_or_a_bad_count_fails_clearly() {
    require_root!();
    let ctx = StoreCtx::new();
    let missing = ctx.run(&["fork", "no-such-session-xyz"]);
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(
        missing.stderr.contains("no-such-session-xyz"),
        "{missing:?}"
    );
    let zero = ctx.run(&["fork", "no-such-session-xyz", "--count", "0"]);
    assert_eq!(zero.code, 121, "{zero:?}");
    assert!(zero.stderr.contains("--count"), "{zero:?}");
    let names = ctx.run(&["fork", "x", "--count", "3", "--name", "a", "--name", "b"]);
    assert_eq!(names.code, 121, "{names:?}");
    assert!(names.stderr.contains("one name per fork"), "{names:?}");
    // A host-root session has no image to stack the snapshot on: refused, nothing made.
    let host = Session::create(&ctx, "snap-fork-host", &[]);
    let r = ctx.run(&["fork", &host.name]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("--image"), "{r:?}");
    assert_eq!(ctx.entries("tmp") + ctx.entries("layers"), 0, "{r:?}");
}
