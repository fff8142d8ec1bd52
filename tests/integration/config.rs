//! The config file: discovery and merging, `nsbox config` with each value's origin, strict
//! keys, and the values reaching what they configure (sandbox defaults, session max age).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::require_root;
use crate::support::*;

/// `nsbox ARGS` with no config but what the test gives: no `--config`, `NSBOX_CONFIG` unset,
/// `XDG_CONFIG_HOME` and the working directory in `dir`.
fn discovering(dir: &Path, args: &[&str]) -> Run {
    nsbox_cmd(args)
        .env_remove("NSBOX_CONFIG")
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .current_dir(dir.join("work"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

fn with_config(config: &Path, args: &[&str]) -> Run {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    nsbox(&full)
}

fn setting<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find(|l| l.starts_with(&format!("{key} = ")))
}

#[test]
fn files_merge_in_order_and_config_says_where_each_value_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("xdg/nsbox")).unwrap();
    std::fs::create_dir_all(tmp.path().join("work")).unwrap();
    let user: PathBuf = tmp.path().join("xdg/nsbox/config.toml");
    std::fs::write(
        &user,
        "[defaults.limits]\nmemory = \"3g\"\npids = 300\n[pull]\njobs = 2\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("work/nsbox.toml"),
        "[defaults.limits]\npids = 400\n[cleanup]\nprune_older_than = \"2d\"\n",
    )
    .unwrap();
    let run = discovering(tmp.path(), &["config"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    let memory = setting(out, "defaults.limits.memory").expect(out);
    assert!(
        memory.contains("\"3g\"") && memory.contains(user.to_str().unwrap()),
        "{memory}"
    );
    let pids = setting(out, "defaults.limits.pids").expect(out);
    assert!(
        pids.contains("400") && pids.contains("nsbox.toml"),
        "{pids}"
    );
    let jobs = setting(out, "pull.jobs").unwrap();
    assert!(
        jobs.contains('2') && jobs.contains(user.to_str().unwrap()),
        "{jobs}"
    );
    let policy = setting(out, "pull.policy").unwrap();
    assert!(
        policy.contains("\"missing\"") && policy.ends_with("# builtin"),
        "{policy}"
    );
    let cpus = setting(out, "defaults.limits.cpus").unwrap();
    assert!(cpus.contains("profiles/default.toml"), "{cpus}");
    assert!(setting(out, "cleanup.prune_older_than")
        .unwrap()
        .contains("\"2d\""));

    // JSON, for machines.
    let run = discovering(tmp.path(), &["config", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["key"] == "defaults.limits.pids" && r["value"] == "400"));

    // --config reads that file alone.
    let only = tmp.path().join("only.toml");
    std::fs::write(&only, "[pull]\npolicy = \"never\"\n").unwrap();
    let run = discovering(tmp.path(), &["--config", only.to_str().unwrap(), "config"]);
    assert!(setting(&run.stdout, "defaults.limits.pids")
        .unwrap()
        .contains("profiles/default.toml"));
    assert!(setting(&run.stdout, "pull.policy")
        .unwrap()
        .contains("never"));
}

#[test]
fn unknown_keys_and_bad_values_are_errors_naming_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    for (text, needle) in [
        ("[defaults.limits]\nmemroy = \"1g\"\n", "memroy"),
        ("[pul]\njobs = 1\n", "pul"),
        ("[pull]\npolicy = \"sometimes\"\n", "sometimes"),
        ("[defaults.limits]\nmemory = \"lots\"\n", "limits.memory"),
        (
            "[cleanup]\nsession_max_age = \"forever\"\n",
            "session_max_age",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        for args in [&["config"][..], &["exec", "--", "true"][..]] {
            let run = with_config(&config, args);
            assert_eq!(run.code, 121, "{text} {args:?}");
            assert!(
                run.stderr.contains(needle) && run.stderr.contains("c.toml"),
                "{text} {args:?}: {}",
                run.stderr
            );
        }
    }
    let run = with_config(&tmp.path().join("missing.toml"), &["config"]);
    assert_eq!(run.code, 121);
    assert!(run.stderr.contains("missing.toml"), "{}", run.stderr);
}

#[test]
fn defaults_reach_the_sandbox_and_flags_still_win() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        "[defaults.process]\nenv = { PATH = \"/usr/bin:/bin\", GREETING = \"from-config\" }\nworkdir = \"/tmp\"\n",
    )
    .unwrap();
    let run = with_config(&config, &["exec", "--", "sh", "-c", "echo $GREETING; pwd"]);
    assert_eq!(run.stdout, "from-config\n/tmp\n", "{}", run.stderr);
    let run = with_config(
        &config,
        &[
            "exec",
            "-e",
            "GREETING=from-flag",
            "--",
            "sh",
            "-c",
            "echo $GREETING",
        ],
    );
    assert_eq!(run.stdout, "from-flag\n", "{}", run.stderr);
}

#[test]
fn the_cleanup_policy_sets_a_sessions_max_age() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "[cleanup]\nsession_max_age = \"97s\"\n").unwrap();
    let run = with_config(&config, &["create"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim().to_string();
    let ps = nsbox(&["ps", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned();
    let rm = nsbox(&["rm", "-f", &id]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    assert_eq!(row.expect("the session is listed")["max_age_secs"], 97);
}
