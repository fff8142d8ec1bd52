//! Session commands: `nsbox create`, `ps`, `stats`, `stop`, `rm`, `cp` (and the session side of
//! `nsbox prune`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use super::exec::{build_spec, fail, open_image, raw_secret_masker, start_event, ExecExtras};
use super::{error, SandboxArgs};
use crate::exit;
use crate::relay::{Event, Masker};
use crate::report::{Class, Failure, Phase};
use crate::session::client::{SessionClient, SessionExec};
use crate::session::copy::{
    copy_in, copy_in_tar, copy_out, copy_out_tar, parse_endpoint, Endpoint,
};
use crate::session::daemon;
use crate::session::state::{SessionRecord, SessionState, SessionStore};
use crate::units::{ByteSize, CpuQuota};
use crate::units::{Limit, Timeout};

/// Flags of `nsbox create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// A name for the session, usable wherever an id is (unique on this host).
    #[arg(long, value_name = "NAME", help_heading = "Sessions")]
    name: Option<String>,
    /// Stop the session once it was idle (no command running, nobody connected) this long
    /// (default 1h, or the config's cleanup.session_max_age; `none` keeps it until `nsbox stop`).
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    max_age: Option<Limit<Timeout>>,
    /// A shell script run in the new session before it is handed over (its own phase; if it
    /// fails, create fails with its output and exit code and the session is removed).
    #[arg(
        long,
        value_name = "SCRIPT",
        conflicts_with = "setup_file",
        help_heading = "Sessions"
    )]
    setup: Option<String>,
    /// Like --setup, with the script read from a host file.
    #[arg(long, value_name = "FILE", help_heading = "Sessions")]
    setup_file: Option<PathBuf>,
    /// Default output cap of each command run in the session (and of the setup script);
    /// `exec --max-output` overrides it per command.
    #[arg(long, value_name = "SIZE", help_heading = "Limits")]
    max_output: Option<Limit<ByteSize>>,
    /// Deadline for the setup script.
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    timeout: Option<Limit<Timeout>>,
    /// Write JSON events (setup output with "phase":"setup", then a "created" event).
    #[arg(long, help_heading = "Input/output")]
    json: bool,
}

pub fn create(
    args: CreateArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
    t0: u64,
) -> i32 {
    let json = args.json;
    if args.sandbox.entrypoint.is_some() {
        return fail(
            json,
            &Failure::usage(
                "--entrypoint applies to a command, and a session runs none of its own",
            )
            .with_hint("name the program in each `nsbox exec --session ID -- PROG ...`"),
            t0,
        );
    }
    let masker = raw_secret_masker(&args.sandbox);
    let script = match (&args.setup, &args.setup_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                return fail(
                    json,
                    &Failure::usage(format!("--setup-file {}: {e}", path.display())),
                    t0,
                )
            }
        },
        (None, None) => None,
    };
    let max_age = match args.max_age {
        None => config.cleanup.session_max_age,
        Some(limit) => limit.into_option().map(|t| t.0),
    };
    let extras = ExecExtras {
        // A session runs no command of its own; this one is never executed.
        command: vec!["/bin/sh".into()],
        timeout: None,
        max_output: args.max_output,
        interactive: false,
        tty: false,
        json,
        timings: false,
    };
    // The session's supervisor, forked by daemon::start, inherits the image's layer locks
    // and holds them for the session's life.
    let image = match open_image(&args.sandbox, state_root, config) {
        Ok(image) => image,
        Err(failure) => return fail(json, &failure, t0),
    };
    let mut spec = match build_spec(
        args.sandbox,
        extras,
        image.as_ref().map(|i| i.spec()),
        config,
    ) {
        Ok(spec) => spec,
        Err(failure) => return fail(json, &failure.map_text(|t| masker.mask_str(t)), t0),
    };
    // The session's own host id range; its supervisor (forked below) holds it for its life.
    let _ids = match crate::idrange::assign(&mut spec) {
        Ok(range) => range,
        Err(e) => {
            return fail(
                json,
                &Failure::new(Class::Failed, Phase::Setup, e.to_string()),
                t0,
            )
        }
    };
    let masker = Masker::new(&spec.secrets);
    let store = SessionStore::system();
    let (record, pending) = match daemon::start(&spec, args.name.as_deref(), max_age, &store) {
        Ok(started) => started,
        Err(e) => return fail(json, &Failure::of(&e).map_text(|t| masker.mask_str(t)), t0),
    };
    if json {
        start_event(&record.id, &spec.profile_name, &record.network);
    }
    if let Some(script) = script {
        let outcome = SessionClient::connect(&store, &record.id).and_then(|client| {
            client.exec(
                SessionExec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    env: Vec::new(),
                    workdir: None,
                    stdin: false,
                    tty: false,
                    json,
                    timeout: args.timeout.and_then(Limit::into_option).map(|t| t.0),
                    max_output: None,
                    phase: Some("setup"),
                    output_to_stderr: !json,
                },
                t0,
            )
        });
        let code = match &outcome {
            Ok(o) => o.exit_code(),
            Err(_) => exit::NSBOX_FAILED,
        };
        if code != 0 {
            pending.abort();
            wait_gone(&store, &record.id);
            let message = match outcome {
                Ok(o) => format!(
                    "the setup script failed (exit {code}{}); the session was removed",
                    o.message().map(|m| format!(": {m}")).unwrap_or_default()
                ),
                Err(e) => format!("the setup script could not run: {e}; the session was removed"),
            };
            if json {
                let _ = std::io::stdout().lock().write_all(
                    &Event::Error {
                        phase: "setup",
                        message: masker.mask_str(&message),
                        hint: None,
                        code,
                    }
                    .to_line(),
                );
            } else {
                error(&masker.mask_str(&message));
            }
            return code;
        }
    }
    pending.commit();
    if json {
        let _ = std::io::stdout().lock().write_all(
            &Event::Created {
                id: &record.id,
                name: record.name.as_deref(),
            }
            .to_line(),
        );
    } else {
        println!("{}", record.id);
    }
    0
}

/// Waits (briefly) until an aborted session's supervisor removed it.
fn wait_gone(store: &SessionStore, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (store.is_live(id) || store.dir(id).exists()) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Flags of `nsbox ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

fn state_name(state: SessionState, record: &SessionRecord) -> &'static str {
    match state {
        SessionState::Running if record.paused => "paused",
        SessionState::Running => "running",
        SessionState::Stopped => "stopped",
        SessionState::Dead => "dead",
    }
}

/// A coarse age, as `ps` shows it: 42s, 5m, 3h, 2d.
fn age_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn limits_text(r: &SessionRecord) -> String {
    let memory = r
        .memory
        .map_or("-".into(), |m| ByteSize(m).to_string().replace(' ', ""));
    let cpus = r.cpu_millis.map_or("-".into(), |c| CpuQuota(c).to_string());
    let pids = r.pids.map_or("-".into(), |p| p.to_string());
    format!("mem={memory} cpus={cpus} pids={pids}")
}

pub fn ps(args: PsArgs) -> i32 {
    let store = SessionStore::system();
    let records = store.list();
    if args.json {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "name": r.name,
                    "root": r.root,
                    "state": state_name(store.state(r), r),
                    "age_secs": SessionStore::age(r, false).as_secs(),
                    "network": r.network,
                    "memory": r.memory,
                    "cpus": r.cpu_millis.map(|c| c as f64 / 1000.0),
                    "pids": r.pids,
                    "max_age_secs": r.max_age,
                    "stopped": r.stopped,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return 0;
    }
    println!(
        "{:<12}  {:<16}  {:<24}  {:<8}  {:>5}  {:<8}  LIMITS",
        "ID", "NAME", "ROOT", "STATE", "AGE", "NET"
    );
    for r in &records {
        println!(
            "{:<12}  {:<16}  {:<24}  {:<8}  {:>5}  {:<8}  {}",
            r.id,
            shorten(r.name.as_deref().unwrap_or("-"), 16),
            shorten(&r.root, 24),
            state_name(store.state(r), r),
            age_text(SessionStore::age(r, false).as_secs()),
            r.network,
            limits_text(r),
        );
    }
    0
}

/// `text` cut to `width` characters, with an ellipsis when it was longer.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Flags of `nsbox stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Session id or name.
    #[arg(value_name = "ID|NAME")]
    session: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn stats(args: StatsArgs) -> i32 {
    let store = SessionStore::system();
    let stats = match SessionClient::connect(&store, &args.session).and_then(|c| c.stats()) {
        Ok(s) => s,
        Err(e) => {
            error(&e.to_string());
            return exit::NSBOX_FAILED;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
        return 0;
    }
    let size = |b: Option<u64>| b.map_or("?".into(), |b| ByteSize(b).to_string());
    println!(
        "memory     {} of {} (peak {})",
        size(stats.memory_current_bytes),
        stats
            .memory_limit_bytes
            .map_or("unlimited".into(), |b| ByteSize(b).to_string()),
        size(stats.memory_peak_bytes)
    );
    println!(
        "cpu        {}",
        stats
            .cpu_usage_usec
            .map_or("? (no cpu accounting on this host)".into(), |u| format!(
                "{:.3} s",
                u as f64 / 1e6
            ))
    );
    println!(
        "processes  {} of {}",
        stats.pids_current.map_or("?".into(), |p| p.to_string()),
        stats
            .pids_limit
            .map_or("unlimited".into(), |p| p.to_string())
    );
    println!(
        "commands   {} running, idle {}s",
        stats.commands_running, stats.idle_secs
    );
    0
}

/// Flags of `nsbox stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Sessions (ids or names).
    #[arg(value_name = "ID|NAME", required = true)]
    sessions: Vec<String>,
    /// How long processes get between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    grace: Timeout,
}

pub fn stop(args: StopArgs) -> i32 {
    let store = SessionStore::system();
    let mut code = 0;
    for s in &args.sessions {
        match store.resolve(s) {
            Ok(r) if store.state(&r) != SessionState::Running => {
                println!("{} (already stopped)", r.id);
            }
            Ok(r) => match SessionClient::connect(&store, &r.id)
                .and_then(|c| c.stop(args.grace.0, "stopped by nsbox stop"))
            {
                Ok(()) => println!("{}", r.id),
                Err(e) => {
                    error(&e.to_string());
                    code = exit::NSBOX_FAILED;
                }
            },
            Err(e) => {
                error(&e.to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// Flags of `nsbox rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Sessions (ids or names).
    #[arg(value_name = "ID|NAME", required = true)]
    sessions: Vec<String>,
    /// Stop running sessions first.
    #[arg(long, short = 'f')]
    force: bool,
}

pub fn rm(args: RmArgs) -> i32 {
    let store = SessionStore::system();
    let mut code = 0;
    for s in &args.sessions {
        let result = store.resolve(s).map_err(|e| e.to_string()).and_then(|r| {
            if store.state(&r) == SessionState::Running {
                if !args.force {
                    return Err(format!(
                        "session {} is running — hint: `nsbox stop {}` first, or `nsbox rm -f`",
                        r.id, r.id
                    ));
                }
                SessionClient::connect(&store, &r.id)
                    .and_then(|c| c.stop(Duration::from_secs(2), "removed by nsbox rm -f"))
                    .map_err(|e| e.to_string())?;
            }
            remove_session(&store, &r).map(|()| r.id)
        });
        match result {
            Ok(id) => println!("{id}"),
            Err(message) => {
                error(&message);
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// Removes a session that no supervisor holds: what a killed supervisor left in the cgroups,
/// then its directory and name.
pub(super) fn remove_session(store: &SessionStore, record: &SessionRecord) -> Result<(), String> {
    if let Ok(layout) = crate::cgroup::CgroupLayout::detect() {
        if let Ok(leftovers) = crate::cgroup::find_leftovers(&layout) {
            for l in leftovers.iter().filter(|l| l.id == record.id) {
                if !crate::cgroup::in_use(l) {
                    crate::cgroup::remove_leftover(l).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    store.remove(record).map_err(|e| e.to_string())
}

/// Flags of `nsbox cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// A host path, SESSION:PATH (relative paths inside start at the session's working
    /// directory), or `-`: a tar stream on stdin, extracted into the directory DST.
    #[arg(value_name = "SRC")]
    source: String,
    /// A host path, SESSION:PATH, or `-`: SRC as a tar stream on stdout.
    #[arg(value_name = "DST")]
    destination: String,
    /// Copying out: write at most this much file data (holes and hard links cost nothing;
    /// `none` lifts the bound). A copy that would write more fails and leaves nothing behind.
    #[arg(long, value_name = "SIZE", default_value = "8g")]
    max_size: Limit<ByteSize>,
}

pub fn cp(args: CpArgs) -> i32 {
    let store = SessionStore::system();
    let stdio = Path::new("-");
    let max_bytes = match args.max_size {
        Limit::Value(size) => Some(size.bytes()),
        Limit::Unlimited => None,
    };
    let result = match (
        parse_endpoint(&args.source),
        parse_endpoint(&args.destination),
    ) {
        (Endpoint::Host(src), Endpoint::Session { session, path }) if src == stdio => {
            SessionClient::connect(&store, &session)
                .and_then(|c| copy_in_tar(&c, std::io::stdin(), &path))
        }
        (Endpoint::Session { session, path }, Endpoint::Host(dst)) if dst == stdio => {
            if rustix::termios::isatty(rustix::stdio::stdout()) {
                error("refusing to write a tar stream to a terminal — hint: redirect it (nsbox cp ID:/sandbox/out - > out.tar) or pipe it into tar -x");
                return exit::NSBOX_FAILED;
            }
            SessionClient::connect(&store, &session)
                .and_then(|c| copy_out_tar(&c, &path, std::io::stdout().lock(), max_bytes))
        }
        (Endpoint::Host(src), Endpoint::Session { session, path }) => {
            SessionClient::connect(&store, &session).and_then(|c| copy_in(&c, &src, &path))
        }
        (Endpoint::Session { session, path }, Endpoint::Host(dst)) => {
            SessionClient::connect(&store, &session)
                .and_then(|c| copy_out(&c, &path, &dst, max_bytes))
        }
        _ => {
            error("exactly one of SRC and DST must be SESSION:PATH — e.g. nsbox cp ./repo mysession:/sandbox/repo");
            return exit::NSBOX_FAILED;
        }
    };
    match result {
        Ok(report) => {
            if report.skipped > 0 {
                error(&format!(
                    "warning: {} device, fifo or socket entries were not copied",
                    report.skipped
                ));
            }
            0
        }
        Err(e) => {
            error(&e.to_string());
            exit::NSBOX_FAILED
        }
    }
}

/// The session part of `nsbox prune`: stopped sessions (older than `older_than` since they
/// stopped, when given), sessions whose supervisor was killed, and half-created directories.
pub(super) fn prune_sessions(older_than: Option<Duration>, dry_run: bool) -> (usize, bool) {
    let store = SessionStore::system();
    let mut removed = 0;
    let mut failed = false;
    for r in store.list() {
        let state = store.state(&r);
        let due = match state {
            SessionState::Running => false,
            SessionState::Dead => true,
            SessionState::Stopped => {
                older_than.is_none_or(|min| SessionStore::age(&r, true) >= min)
            }
        };
        if !due {
            continue;
        }
        if dry_run {
            println!("would remove session {} ({})", r.id, state_name(state, &r));
            continue;
        }
        match remove_session(&store, &r) {
            Ok(()) => {
                removed += 1;
                println!("removed  session {} ({})", r.id, state_name(state, &r));
            }
            Err(e) => {
                failed = true;
                error(&format!("could not remove session {}: {e}", r.id));
            }
        }
    }
    for id in store.orphan_dirs() {
        if dry_run {
            println!("would remove session directory {id} (never finished starting)");
        } else if store.remove_dir(&id).is_ok() {
            removed += 1;
            println!("removed  session directory {id} (never finished starting)");
        }
    }
    if !dry_run {
        store.remove_if_empty();
    }
    (removed, failed)
}
