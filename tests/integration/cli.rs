//! The command line's surface: Docker habits (`run`, `-m`, `-v`, `--network`, `-u NAME`,
//! `stop -t`, labels, `ps -q/--format/--filter`, `inspect`, `version`), completions and man
//! pages generated from the clap definitions for every command, and the small errors of
//! issue 14, each pinned to its message.

use std::path::Path;
use std::process::Stdio;

use crate::oci_build::{base_layer, busybox, compress, Comp, Tar};
use crate::require_root;
use crate::support::*;

/// `nsbox ARGS` with its own session store (`NSBOX_RUN_DIR`).
fn in_store(dir: &Path, args: &[&str]) -> Run {
    nsbox_cmd(args)
        .env("NSBOX_RUN_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run nsbox")
        .into()
}

/// Every command the definition has, nested ones as "image prune".
fn all_commands() -> Vec<(String, Vec<String>)> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            out.push((p.join(" "), p.clone()));
            walk(sub, p, out);
        }
    }
    let mut out = Vec::new();
    walk(&nsbox::cli::command(), Vec::new(), &mut out);
    out
}

#[test]
fn nsbox_alone_prints_help_on_stderr_as_a_usage_error() {
    let run = nsbox(&[]);
    assert_eq!(run.code, 121, "a usage error: {run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("Usage: nsbox"), "{}", run.stderr);
    assert!(run.stderr.contains("exits 121"), "the help says so");
}

#[test]
fn unknown_commands_get_a_suggestion() {
    let run = nsbox(&["imgaes"]);
    assert_eq!(run.code, 121, "{run:?}");
    assert!(run.stderr.contains("similar subcommand"), "{}", run.stderr);
    assert!(run.stderr.contains("'images'"), "{}", run.stderr);
    let run = nsbox(&["runn", "--", "true"]);
    assert!(run.stderr.contains("'run'"), "{}", run.stderr);
}

#[test]
fn global_options_are_shown_once_at_the_top_and_work_anywhere() {
    let top = nsbox(&["--help"]);
    assert_eq!(top.code, 0);
    for flag in ["--state-root", "--config", "--log-format", "--verbose"] {
        assert!(top.stdout.contains(flag), "nsbox --help lacks {flag}");
    }
    for (name, path) in all_commands() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let run = nsbox(&args);
        assert_eq!(run.code, 0, "{name} --help: {run:?}");
        for flag in ["--state-root", "--log-format", "--verbose"] {
            assert!(
                !run.stdout.contains(flag),
                "{name} --help repeats the global {flag}"
            );
        }
    }
    // Still accepted after the command (scripts and tests write them there).
    let store = RunDir::new();
    let run = nsbox(&[
        "images",
        "-q",
        "--state-root",
        store.path().join("s").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = nsbox(&["--verbose", "images", "-q", "--verbose"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn help_tells_docker_users_what_differs() {
    let run = nsbox(&["run", "--help"]);
    assert_eq!(run.code, 0);
    for needle in [
        "-m, --memory",
        "-v, --mount",
        "[alias: --volume]",
        "READ-ONLY unless :rw",
        "[alias: --network]",
        "--entrypoint",
        "NAME[:GROUP]",
    ] {
        assert!(run.stdout.contains(needle), "run --help lacks {needle}");
    }
    assert!(
        !run.stdout.contains("-s, --session"),
        "run has no --session"
    );
    let run = nsbox(&["exec", "--help"]);
    assert!(run.stdout.contains("-s, --session"));
    let run = nsbox(&["--help"]);
    assert!(run.stdout.contains("Docker habits"), "{}", run.stdout);
    // The old `-m SRC:DST` says what changed.
    let run = nsbox(&["run", "-m", "/tmp:/x", "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr
            .contains("-m is --memory (as in Docker); bind a host path with -v/--mount SRC:DST"),
        "{}",
        run.stderr
    );
    // `-vv` after the command is a mount of "v": said so.
    let run = nsbox(&["exec", "-vv", "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr
            .contains("-vv is a mount of 'v': after the command, -v is --volume (as in Docker)"),
        "{}",
        run.stderr
    );
    // `run` starts a new sandbox only.
    let run = nsbox(&["run", "--session", "x", "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr.contains("unexpected argument '--session'"),
        "{}",
        run.stderr
    );
}

#[test]
fn run_is_the_one_shot_verb_and_exec_still_works() {
    require_root!();
    for verb in ["run", "exec"] {
        let run = nsbox(&[verb, "--network", "none", "--", "/bin/sh", "-c", "echo hi"]);
        assert_eq!(run.code, 0, "{verb}: {run:?}");
        assert_eq!(run.stdout, "hi\n", "{verb}");
    }
    let run = nsbox(&["run", "--network", "wifi", "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(run.stderr.contains("wifi"), "{}", run.stderr);
}

#[test]
fn v_is_a_read_only_volume_and_m_is_memory() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "host file\n").unwrap();
    let src = dir.path().to_str().unwrap();
    for flag in ["-v", "--volume", "--mount"] {
        let spec = format!("{src}:/data");
        let run = nsbox(&[
            "run",
            flag,
            &spec,
            "--",
            "/bin/sh",
            "-c",
            "cat /data/f; echo x > /data/g && echo wrote || echo refused",
        ]);
        assert_eq!(run.code, 0, "{flag}: {run:?}");
        assert_eq!(
            run.stdout, "host file\nrefused\n",
            "{flag}: read-only by default"
        );
    }
    assert!(!dir.path().join("g").exists());
    // -m is the memory limit (it was --mount's letter before).
    let store = RunDir::new();
    let run = in_store(store.path(), &["create", "-m", "64m", "--name", "mem"]);
    assert_eq!(run.code, 0, "{run:?}");
    let ps = in_store(store.path(), &["ps", "--format", "{{.Memory}}"]);
    assert_eq!(ps.stdout.trim(), "67108864", "{ps:?}");
    let _ = in_store(store.path(), &["rm", "-f", "mem"]);
}

#[test]
fn u_name_is_resolved_in_the_sandboxs_own_passwd() {
    require_root!();
    let run = nsbox(&["run", "-u", "nobody", "--", "/bin/sh", "-c", "id -u; id -g"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "65534\n65534\n");
    let run = nsbox(&["run", "-u", "sandbox", "--", "/bin/sh", "-c", "id -u"]);
    assert_eq!(run.stdout, "100\n", "{run:?}");
    // A host account never resolves: the sandbox's /etc/passwd on the host's root is nsbox's.
    let run = nsbox(&["run", "-u", "daemon", "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(
        run.stderr
            .contains("--user 'daemon': no user 'daemon' in the sandbox's /etc/passwd"),
        "{}",
        run.stderr
    );
    // A --rootfs directory's own accounts.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy(busybox(), root.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1300::/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:1400:\n").unwrap();
    let rootfs = root.path().to_str().unwrap();
    let ids = |user: &str| {
        nsbox(&[
            "run",
            "--rootfs",
            rootfs,
            "-e",
            "PATH=/bin",
            "-u",
            user,
            "--",
            "/bin/sh",
            "-c",
            "busybox id -u; busybox id -g",
        ])
    };
    assert_eq!(ids("app").stdout, "1234\n1300\n", "{:?}", ids("app"));
    assert_eq!(ids("app:staff").stdout, "1234\n1400\n");
    let run = ids("ghost");
    assert_eq!(run.code, 121);
    assert!(
        run.stderr.contains("no user 'ghost'") && run.stderr.contains("--rootfs"),
        "{}",
        run.stderr
    );
}

#[test]
fn labels_filters_quiet_format_inspect_and_stop_t() {
    require_root!();
    let store = RunDir::new();
    let s = |args: &[&str]| in_store(store.path(), args);
    let a = s(&[
        "create", "--label", "job=42", "--label", "pr", "--name", "la",
    ]);
    assert_eq!(a.code, 0, "{a:?}");
    let a = a.stdout.trim().to_string();
    let b = s(&["create", "-l", "job=43", "--name", "lb"]);
    assert_eq!(b.code, 0, "{b:?}");
    let b = b.stdout.trim().to_string();
    assert_eq!(
        s(&["ps", "-q", "--filter", "label=job=42"]).stdout,
        format!("{a}\n")
    );
    assert_eq!(
        s(&["ps", "-q", "--filter", "label=pr"]).stdout,
        format!("{a}\n")
    );
    assert_eq!(
        s(&["ps", "-q", "-f", "label=job", "-f", "name=lb"]).stdout,
        format!("{b}\n")
    );
    let mut both: Vec<String> = s(&["ps", "-q"]).stdout.lines().map(String::from).collect();
    both.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(both, want);
    let row = s(&[
        "ps",
        "-f",
        "id=",
        "-f",
        "label=job=42",
        "--format",
        "{{.Name}}\\t{{.Labels.job}}|{{.State}}",
    ]);
    assert_eq!(row.stdout, "la\t42|running\n", "{row:?}");
    let json = s(&["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    // inspect: one JSON document, through jq and back.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} inspect la {b} | jq -c '[.[] | {{type, id, labels, state}}]'",
            nsbox_bin().display()
        ))
        .env("NSBOX_RUN_DIR", store.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc,
        serde_json::json!([
            {"type": "session", "id": a, "labels": {"job": "42", "pr": ""}, "state": "running"},
            {"type": "session", "id": b, "labels": {"job": "43"}, "state": "running"},
        ])
    );
    let missing = s(&["inspect", "la", "no-such-thing"]);
    assert_eq!(missing.code, 125);
    assert!(missing
        .stderr
        .contains("no session, one-shot sandbox or image 'no-such-thing'"));
    let partial: serde_json::Value = serde_json::from_str(&missing.stdout).unwrap();
    assert_eq!(
        partial.as_array().unwrap().len(),
        1,
        "the ones found still print"
    );
    // Bad labels and filters are usage errors naming the problem.
    let bad = s(&["create", "--label", "bad key=1"]);
    assert!(bad.stderr.contains("not a label key"), "{bad:?}");
    let bad = s(&["ps", "--filter", "colour=red"]);
    assert!(bad.stderr.contains("'colour' is not a filter"), "{bad:?}");
    let bad = s(&["ps", "--format", "yaml"]);
    assert!(bad.stderr.contains("'yaml' is not a format"), "{bad:?}");
    // The --json start event carries the labels: a session's, and a one-shot's own.
    let ev = s(&["exec", "--session", "la", "--json", "--", "true"]);
    assert_eq!(
        events(&ev.stdout)[0]["labels"],
        serde_json::json!({"job": "42", "pr": ""}),
        "{ev:?}"
    );
    let ev = s(&["run", "--json", "--label", "job=7", "--", "true"]);
    let start = &events(&ev.stdout)[0];
    assert_eq!(start["type"], "start");
    assert_eq!(start["labels"], serde_json::json!({"job": "7"}), "{ev:?}");
    let ev = s(&["run", "--json", "--", "true"]);
    assert!(
        events(&ev.stdout)[0].get("labels").is_none(),
        "absent without labels"
    );
    // stop -t SECONDS (Docker's spelling of --grace).
    assert_eq!(s(&["stop", "-t", "1", "la"]).code, 0);
    assert_eq!(s(&["stop", "--time", "1", &b]).code, 0);
    // `stop` returns when the supervisor closed its socket; its lock goes a moment later.
    assert!(
        eventually(10.0, || s(&["ps", "-q", "--filter", "state=stopped"])
            .stdout
            .lines()
            .count()
            == 2),
        "both stopped"
    );
    assert_eq!(s(&["rm", "la", &b]).code, 0);
}

#[test]
fn images_quiet_format_and_inspect() {
    require_root!();
    let ctx = StoreCtx::new();
    let mut t = Tar::default();
    t.dir("./", 0o755).file("marker", 0o644, b"x\n");
    let file = ctx.path("rootfs.tar.gz");
    std::fs::write(&file, compress(&t.finish(), Comp::Gzip)).unwrap();
    let run = ctx.run(&["import", file.to_str().unwrap(), "--tag", "tiny:1"]);
    assert_eq!(run.code, 0, "{run:?}");
    let digest = ctx.digest_of("tiny:1").unwrap();
    let quiet = ctx.run(&["images", "-q"]);
    assert_eq!(quiet.stdout.trim().len(), 12, "{quiet:?}");
    assert!(digest.contains(quiet.stdout.trim()));
    let row = ctx.run(&["images", "--format", "{{.Names}} {{.Layers}}"]);
    assert_eq!(row.stdout, "tiny:1 1\n", "{row:?}");
    let doc = ctx.run(&["inspect", "--type", "image", "tiny:1"]);
    assert_eq!(doc.code, 0, "{doc:?}");
    let doc: serde_json::Value = serde_json::from_str(&doc.stdout).unwrap();
    assert_eq!(doc[0]["type"], "image");
    assert_eq!(doc[0]["digest"].as_str().unwrap(), digest);
    let none = ctx.run(&["inspect", "--type", "session", "tiny:1"]);
    assert_eq!(none.code, 125);
    assert!(none.stderr.contains("no session 'tiny:1'"), "{none:?}");
    let _ = base_layer;
}

#[test]
fn a_session_exec_takes_a_secret_for_one_command() {
    require_root!();
    let store = RunDir::new();
    let created = in_store(store.path(), &["create"]);
    assert_eq!(created.code, 0, "{created:?}");
    let id = created.stdout.trim().to_string();
    let out = nsbox_cmd(&[
        "exec",
        "--session",
        &id,
        "--secret-env",
        "MINTED",
        "--secret",
        "OTHER=pw-4711",
        "--",
        "/bin/sh",
        "-c",
        "echo $MINTED; echo $OTHER >&2; echo ${#MINTED}",
    ])
    .env("NSBOX_RUN_DIR", store.path())
    .env("MINTED", "tok-after-create")
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let run: Run = out.into();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout, "***\n16\n",
        "the value is there, masked in output"
    );
    assert_eq!(run.stderr, "***\n");
    // Only that command had it.
    let later = in_store(
        store.path(),
        &[
            "exec",
            "--session",
            &id,
            "--",
            "/bin/sh",
            "-c",
            "echo [$MINTED]",
        ],
    );
    assert_eq!(later.stdout, "[]\n");
    let unset = in_store(
        store.path(),
        &[
            "exec",
            "--session",
            &id,
            "--secret-env",
            "NOT_SET_ANYWHERE",
            "--",
            "true",
        ],
    );
    assert_eq!(unset.code, 121);
    assert!(
        unset
            .stderr
            .contains("--secret-env 'NOT_SET_ANYWHERE': NOT_SET_ANYWHERE is not set"),
        "{unset:?}"
    );
    assert_eq!(in_store(store.path(), &["rm", "-f", &id]).code, 0);
}

#[test]
fn version_completions_and_man_pages_cover_every_command() {
    let run = nsbox(&["version"]);
    assert_eq!(run.code, 0);
    assert!(run
        .stdout
        .starts_with(&format!("nsbox {}", env!("CARGO_PKG_VERSION"))));
    let run = nsbox(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(nsbox(&["--version"]).code, 0);

    let commands = all_commands();
    assert!(commands.iter().any(|(n, _)| n == "image prune"));
    for shell in ["bash", "zsh", "fish"] {
        let run = nsbox(&["completion", shell]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        for (name, path) in &commands {
            let leaf = path.last().unwrap();
            assert!(
                run.stdout.contains(leaf.as_str()),
                "{shell} completion lacks {name}"
            );
        }
        assert!(
            run.stdout.contains("--memory"),
            "{shell}: flags complete too"
        );
    }
    let bash = nsbox(&["completion", "bash"]);
    let check = std::process::Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bash.stdout.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "the bash completion parses");

    let dir = tempfile::tempdir().unwrap();
    let run = nsbox(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let top = std::fs::read_to_string(dir.path().join("nsbox.1")).unwrap();
    assert!(top.contains(".TH nsbox"), "{top}");
    for (name, path) in &commands {
        let page = dir.path().join(format!("nsbox-{}.1", path.join("-")));
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("no man page for {name} ({}): {e}", page.display()));
        assert!(text.contains(".SH NAME"), "{name}");
    }
    let run = nsbox(&["man"]);
    assert!(
        run.stdout.contains(".TH nsbox"),
        "nsbox man prints the top page"
    );
}

// The small errors of issue 14, each pinned.

/// A usage error (exit 121) saying `needle`.
fn fails(run: &Run, needle: &str) {
    assert_eq!(run.code, 121, "{run:?}");
    assert!(
        run.stderr.contains(needle),
        "expected {needle:?} in {:?}",
        run.stderr
    );
}

#[test]
fn create_does_not_offer_entrypoint() {
    let help = nsbox(&["create", "--help"]);
    assert!(!help.stdout.contains("--entrypoint"), "{}", help.stdout);
    fails(
        &nsbox(&["create", "--image", "nosuch:1", "--entrypoint", "x"]),
        "unexpected argument '--entrypoint'",
    );
}

#[test]
fn every_argument_has_a_description() {
    for (name, path) in all_commands() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = nsbox(&args).stdout;
        let Some(section) = help.split("Arguments:\n").nth(1) else {
            continue;
        };
        // `NAME  text` on one line, or (long help) the text indented on the next.
        let lines: Vec<&str> = section.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with(' ') && !line.is_empty() {
                break; // the next section
            }
            let line = line.trim();
            if line.starts_with('<') || line.starts_with('[') {
                let same_line = line
                    .split_once("  ")
                    .is_some_and(|(_, text)| !text.trim().is_empty());
                let next_line = lines
                    .get(i + 1)
                    .is_some_and(|l| l.starts_with("          ") && !l.trim().is_empty());
                assert!(
                    same_line || next_line,
                    "{name}: argument without a description: {line:?}"
                );
            }
        }
    }
    for (cmd, arg) in [
        ("rmi", "<IMAGE>"),
        ("save", "<IMAGE>"),
        ("logout", "<REGISTRY>"),
    ] {
        let help = nsbox(&[cmd, "--help"]).stdout;
        assert!(help.contains(arg), "{cmd}");
    }
}

#[test]
fn a_bad_session_name_is_a_usage_error_not_a_setup_failure() {
    let store = RunDir::new();
    let run = in_store(store.path(), &["create", "--name", "bad name!"]);
    fails(
        &run,
        "--name 'bad name!': not a valid session name — hint: use 1-64 letters",
    );
    assert!(!run.stderr.contains("setup"), "{}", run.stderr);
    let run = in_store(store.path(), &["create", "--json", "--name", "../x"]);
    let evs = events(&run.stdout);
    assert_eq!(evs[0]["type"], "error");
    assert_eq!(evs[0]["phase"], "usage");
    assert!(
        !store.path().join("sessions").exists()
            || std::fs::read_dir(store.path().join("sessions"))
                .unwrap()
                .count()
                == 0,
        "nothing was started"
    );
}

#[test]
fn config_errors_name_the_config_and_keep_the_parsers_layout() {
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("value.toml");
    std::fs::write(&value, "[defaults.limits]\nmemory = \"lots\"\n").unwrap();
    let run = nsbox(&["--config", value.to_str().unwrap(), "run", "--", "true"]);
    fails(
        &run,
        &format!(
            "config {}: defaults.limits.memory: invalid size 'lots'",
            value.display()
        ),
    );
    assert!(!run.stderr.contains("profile"), "{}", run.stderr);

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[pull]\npolicy = \"never\n").unwrap();
    let run = nsbox(&["--config", syntax.to_str().unwrap(), "run", "--", "true"]);
    assert_eq!(run.code, 121);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines.len() >= 4,
        "one line per line of the parser's message: {lines:?}"
    );
    assert!(
        lines[0].starts_with(&format!(
            "nsbox: config {}: TOML parse error at line 2",
            syntax.display()
        )),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("2 | policy")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains('^')),
        "the caret line: {lines:?}"
    );

    // A profile file's syntax error keeps its layout too.
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, "[limits\n").unwrap();
    let run = nsbox(&["run", "--profile", profile.to_str().unwrap(), "--", "true"]);
    assert_eq!(run.code, 121);
    assert!(run.stderr.lines().count() >= 3, "{}", run.stderr);
}

#[test]
fn pull_never_suggests_nsbox_pull() {
    let store = RunDir::new();
    let run = nsbox(&[
        "--state-root",
        store.path().join("s").to_str().unwrap(),
        "run",
        "--image",
        "nosuch:1",
        "--pull",
        "never",
        "--",
        "true",
    ]);
    assert_eq!(run.code, 123, "image not found: {run:?}");
    assert!(
        run.stderr
            .contains("hint: `nsbox pull nosuch:1` fetches it"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_sandbox_size_above_the_memory_limit_is_refused() {
    fails(
        &nsbox(&["run", "-m", "64m", "--sandbox-size", "1g", "--", "true"]),
        "--sandbox-size 1 GiB is larger than the memory limit 64 MiB: /sandbox is a tmpfs whose contents count against the sandbox's memory",
    );
    fails(
        &nsbox(&["create", "--memory", "64m", "--sandbox-size", "65m"]),
        "is larger than the memory limit",
    );
}

#[test]
fn tmpfs_mounts_a_sized_scratch_directory() {
    require_root!();
    let run = nsbox(&[
        "run",
        "--tmpfs",
        "/scratch:8m",
        "--tmpfs",
        "/var/cache/nsbox-test:size=4m",
        "--",
        "/bin/sh",
        "-c",
        "echo hi > /scratch/f && cat /scratch/f; stat -c %a /scratch; \
         grep -E ' /(scratch|var/cache/nsbox-test) ' /proc/mounts | cut -d' ' -f2-4",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(lines[1], "1777");
    assert!(
        lines[2..]
            .iter()
            .any(|l| l.starts_with("/scratch tmpfs rw,nosuid,nodev") && l.contains("size=8192k")),
        "{lines:?}"
    );
    assert!(
        lines[2..].iter().any(
            |l| l.starts_with("/var/cache/nsbox-test tmpfs rw,nosuid,nodev")
                && l.contains("size=4096k")
        ),
        "{lines:?}"
    );
    let full = nsbox(&[
        "run",
        "--tmpfs",
        "/small:1m",
        "--",
        "/bin/sh",
        "-c",
        "head -c 2000000 /dev/zero > /small/f; echo $?",
    ]);
    assert_eq!(full.stdout.trim(), "1", "the size is a limit: {full:?}");
    fails(
        &nsbox(&["run", "--tmpfs", "/tmp", "--", "true"]),
        "--tmpfs '/tmp': /tmp is a tmpfs already — hint: size it with --tmp-size",
    );
    fails(
        &nsbox(&[
            "run",
            "-v",
            "/etc:/data",
            "--tmpfs",
            "/data/x",
            "--",
            "true",
        ]),
        "--tmpfs '/data/x': it is inside the bind mount at /data, which would cover it",
    );
    fails(
        &nsbox(&["run", "--tmpfs", "/proc/x", "--", "true"]),
        "/proc is the sandbox's own",
    );
    fails(
        &nsbox(&["run", "-m", "16m", "--tmpfs", "/x:1g", "--", "true"]),
        "is larger than the memory limit 16 MiB",
    );
}

#[test]
fn a_ttl_session_is_stopped_and_removed_at_its_deadline_even_while_busy() {
    require_root!();
    let store = RunDir::new();
    // --ttl stops the session; --rm (with no grace) removes it once stopped.
    let created = in_store(
        store.path(),
        &[
            "create",
            "--ttl",
            "2s",
            "--rm",
            "--rm-grace",
            "0s",
            "--name",
            "short",
        ],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let mut busy = nsbox_cmd(&["exec", "--session", "short", "--", "sleep", "600"])
        .env("NSBOX_RUN_DIR", store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ended = eventually(60.0, || busy.try_wait().unwrap().is_some());
    if !ended {
        let _ = busy.kill();
        let _ = busy.wait();
    }
    assert!(ended, "the running command ended with the session");
    assert!(
        eventually(30.0, || in_store(store.path(), &["ps", "-q"])
            .stdout
            .is_empty()),
        "the session was removed"
    );
    let gone = in_store(store.path(), &["exec", "--session", "short", "--", "true"]);
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("no session 'short'"), "{gone:?}");
    // Without --ttl a session has no deadline of its own.
    let kept = in_store(store.path(), &["create", "--name", "kept"]);
    assert_eq!(kept.code, 0);
    assert_eq!(
        in_store(store.path(), &["exec", "--session", "kept", "--", "true"]).code,
        0
    );
    assert_eq!(in_store(store.path(), &["rm", "-f", "kept"]).code, 0);
}
