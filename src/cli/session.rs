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
use crate::report::Failure;
use crate::session::client::{SessionClient, SessionExec};
use crate::session::copy::{
    copy_in, copy_in_tar, copy_out, copy_out_tar, parse_endpoint, Endpoint,
};
use crate::session::daemon;
use crate::session::oneshot::{OneShotRecord, OneShotStore};
use crate::session::state::{SessionRecord, SessionState, SessionStore};
use crate::units::{ByteSize, CpuQuota};
use crate::units::{Limit, Timeout};

/// Flags of `nsbox create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub(super) sandbox: SandboxArgs,
    /// A name for the session, usable wherever an id is (unique on this host).
    #[arg(long, value_name = "NAME", help_heading = "Sessions")]
    pub(super) name: Option<String>,
    /// Stop the session once it was idle (no command running, nobody connected) this long
    /// (default 1h, or the config's cleanup.session_max_age; `none` keeps it until `nsbox stop`).
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(super) max_age: Option<Limit<Timeout>>,
    /// What idleness past --max-age does: `stop` the session, or `pause` it (`nsbox resume`
    /// goes on where it was; default stop, or the config's cleanup.session_idle_action).
    #[arg(long, value_name = "ACTION", help_heading = "Sessions")]
    pub(super) idle_action: Option<daemon::IdleAction>,
    /// A hard lifetime: stop the session this long after it started, even while commands run
    /// (they are ended like by `nsbox stop`).
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(super) ttl: Option<Timeout>,
    /// Remove the session once it stopped (by `stop`, --max-age, --ttl or its own end), after
    /// --rm-grace; until then `ps` shows it stopped, with why.
    #[arg(long, help_heading = "Sessions")]
    pub(super) rm: bool,
    /// With --rm: how long a stopped session stays listed before it is removed.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        requires = "rm",
        help_heading = "Sessions"
    )]
    pub(super) rm_grace: Timeout,
    /// A shell script run in the new session before it is handed over (its own phase; if it
    /// fails, create fails with its output and exit code and the session is removed).
    #[arg(
        long,
        value_name = "SCRIPT",
        conflicts_with = "setup_file",
        help_heading = "Sessions"
    )]
    pub(super) setup: Option<String>,
    /// Like --setup, with the script read from a host file.
    #[arg(long, value_name = "FILE", help_heading = "Sessions")]
    pub(super) setup_file: Option<PathBuf>,
    /// Default output cap of each command run in the session (and of the setup script);
    /// `exec --max-output` overrides it per command.
    #[arg(long, value_name = "SIZE", help_heading = "Limits")]
    pub(super) max_output: Option<Limit<ByteSize>>,
    /// Deadline for the setup script.
    #[arg(long, value_name = "DURATION", help_heading = "Sessions")]
    pub(super) timeout: Option<Limit<Timeout>>,
    /// Write JSON events (setup output with "phase":"setup", then a "created" event).
    #[arg(long, help_heading = "Input/output")]
    pub(super) json: bool,
    /// Internal (`nsbox serve`'s forks): stack the session on the fork snapshot this JSON
    /// file describes (see `snapshot::ForkHandoff`), with the parent's user and root mode.
    #[arg(long, value_name = "FILE", hide = true)]
    pub(super) fork_snapshot: Option<PathBuf>,
}

pub fn create(
    mut args: CreateArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
    t0: u64,
) -> i32 {
    let json = args.json;
    let fork = match args.fork_snapshot.take() {
        None => None,
        Some(path) => match adopt_fork_snapshot(&path, state_root) {
            Ok(fork) => {
                // As `nsbox fork` gives its forks (snapshot::fork_create_args).
                args.sandbox.user = Some(format!("{}:{}", fork.info.uid, fork.info.gid));
                args.sandbox.writable_root |= fork.info.writable_root;
                Some(fork)
            }
            Err(failure) => return fail(json, &failure, t0),
        },
    };
    match create_session(args, state_root, config, t0, fork.as_ref()) {
        Ok(record) => {
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
        Err(code) => code,
    }
}

/// The fork snapshot a `--fork-snapshot` file hands over, leased by this process.
fn adopt_fork_snapshot(
    path: &std::path::Path,
    state_root: &std::path::Path,
) -> Result<crate::snapshot::ForkSnapshot, Failure> {
    let text = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("--fork-snapshot {}: {e}", path.display())))?;
    let handoff: crate::snapshot::ForkHandoff = serde_json::from_slice(&text).map_err(|e| {
        Failure::usage(format!(
            "--fork-snapshot {}: not a fork snapshot: {e}",
            path.display()
        ))
    })?;
    crate::snapshot::ForkSnapshot::adopt(handoff, state_root).map_err(|e| {
        Failure::new(
            crate::report::Class::Failed,
            crate::report::Phase::Setup,
            e.to_string(),
        )
    })
}

/// One fork of `nsbox fork`, made in its process: a session from `args` (the `nsbox create`
/// flags [`crate::snapshot::fork_create_args`] gives) stacked on the snapshot. Its supervisor
/// is forked from this process and so inherits the snapshot's lease. Failures are printed;
/// the error is the exit code.
pub(super) fn create_fork(
    args: CreateArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
    snapshot: &crate::snapshot::ForkSnapshot,
) -> Result<SessionRecord, i32> {
    create_session(
        args,
        state_root,
        config,
        crate::sandbox::supervisor::now_ns(),
        Some(snapshot),
    )
}

/// `nsbox create`'s work; the confirmed session's record, or the exit code of a failure
/// (already reported).
fn create_session(
    args: CreateArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
    t0: u64,
    fork: Option<&crate::snapshot::ForkSnapshot>,
) -> Result<SessionRecord, i32> {
    let json = args.json;
    // Run by `nsbox serve` (which names itself here): if the server dies before this create
    // is done, so does the create, and the session it was making removes itself (it was never
    // confirmed) instead of living on with nobody who knows of it.
    if let Some(parent) = std::env::var(crate::serve::CREATE_PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        let parent_alive = crate::sys::process::set_parent_death_signal(libc::SIGKILL).is_ok()
            && rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(parent);
        if !parent_alive {
            return Err(crate::exit::NSBOX_FAILED);
        }
    }
    if let Some(name) = &args.name {
        if !crate::session::state::valid_name(name) {
            return Err(fail(
                json,
                &Failure::usage(format!(
                    "--name '{}': not a valid session name",
                    name.escape_debug()
                ))
                .with_hint(
                    "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                ),
                t0,
            ));
        }
    }
    let masker = raw_secret_masker(&args.sandbox);
    let labels: std::collections::BTreeMap<String, String> =
        args.sandbox.labels.iter().cloned().collect();
    let script = match (&args.setup, &args.setup_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                return Err(fail(
                    json,
                    &Failure::usage(format!("--setup-file {}: {e}", path.display())),
                    t0,
                ))
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
        entrypoint: None,
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
        Err(failure) => return Err(fail(json, &failure, t0)),
    };
    // A fork: the parent's image with the parent's run config, under the snapshot layers.
    let image_spec = image.as_ref().map(|i| {
        let mut spec = i.spec();
        if let Some(fork) = fork {
            fork.fork_image(&mut spec);
        }
        spec
    });
    let mut spec = match build_spec(args.sandbox, extras, image_spec, config) {
        Ok(spec) => spec,
        Err(failure) => return Err(fail(json, &failure.map_text(|t| masker.mask_str(t)), t0)),
    };
    if let Some(fork) = fork {
        spec.extra_lowers = fork.layers.clone();
    }
    // The session's own host id range; its supervisor (forked below) holds it for its life.
    let _ids = match crate::idrange::assign(&mut spec) {
        Ok(range) => range,
        Err(e) => return Err(fail(json, &Failure::of(&e), t0)),
    };
    let masker = Masker::new(&spec.secrets);
    let store = SessionStore::system();
    let lifetimes = daemon::Lifetimes {
        max_age,
        ttl: args.ttl.map(|t| t.0),
        remove_after: args.rm.then_some(args.rm_grace.0),
        idle_action: args
            .idle_action
            .unwrap_or(config.cleanup.session_idle_action),
    };
    let (record, pending) = match daemon::start_with(&spec, args.name.as_deref(), lifetimes, &store)
    {
        Ok(started) => started,
        Err(e) => {
            return Err(fail(
                json,
                &Failure::of(&e).map_text(|t| masker.mask_str(t)),
                t0,
            ))
        }
    };
    // Undone before the session is confirmed: the supervisor ends it, nothing is left.
    let abandon = |pending: daemon::PendingSession, what: &str, e: &dyn std::fmt::Display| {
        pending.abort();
        wait_gone(&store, &record.id);
        fail(
            json,
            &Failure::new(
                crate::report::Class::Failed,
                crate::report::Phase::Setup,
                format!("{what}: {e}"),
            ),
            t0,
        )
    };
    if !labels.is_empty() {
        if let Err(e) = write_labels(&store, &record.id, &labels) {
            return Err(abandon(pending, "saving the labels", &e));
        }
    }
    // Run by `nsbox serve`: recorded as the server's pending create before anything confirms
    // the session, so a server killed from here on finds it (or its successor does).
    if let Some(dir) = std::env::var_os(crate::serve::sandboxes::CREATE_RECORDS_ENV) {
        if let Err(e) =
            crate::serve::sandboxes::record_pending_create(std::path::Path::new(&dir), &record.id)
        {
            return Err(abandon(
                pending,
                "recording the session for nsbox serve",
                &e,
            ));
        }
    }
    if json {
        start_event(&record.id, &spec.profile_name, &record.network, &labels);
    }
    if let Some(script) = script {
        let outcome = SessionClient::connect(&store, &record.id).and_then(|client| {
            client.exec(
                SessionExec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    env: Vec::new(),
                    replace_env: false,
                    workdir: None,
                    stdin: false,
                    tty: false,
                    winsize: None,
                    json,
                    timeout: args.timeout.and_then(Limit::into_option).map(|t| t.0),
                    max_output: None,
                    phase: Some("setup"),
                    output_to_stderr: !json,
                    result: false,
                    start_event: false,
                    labels: None,
                    secrets: Vec::new(),
                    user: None,
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
            return Err(code);
        }
    }
    pending.commit();
    Ok(record)
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
    /// Print only the ids (one per line).
    #[arg(long, short = 'q', conflicts_with_all = ["json", "format"])]
    pub(super) quiet: bool,
    /// table (default), json (one array), or a template over the JSON fields, e.g.
    /// '{{.ID}}\t{{.Name}}\t{{.Labels.job}}'.
    #[arg(long, value_name = "json|table|TEMPLATE", conflicts_with = "json")]
    pub(super) format: Option<super::listing::Format>,
    /// Same as --format json.
    #[arg(long)]
    pub(super) json: bool,
    /// Only sessions that match: label=KEY, label=KEY=VALUE, name=NAME, id=PREFIX,
    /// state=running|stopped|dead. Repeatable; all must match.
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub(super) filter: Vec<Filter>,
    /// Also list the running one-shot sandboxes (`nsbox run`, `exec` without --session; type
    /// "one-shot", stoppable by id), and one-shots whose nsbox was killed (state dead).
    #[arg(long, short = 'a')]
    pub(super) all: bool,
}

/// A `ps --filter`.
#[derive(Debug, Clone)]
pub enum Filter {
    Label(String, Option<String>),
    Name(String),
    Id(String),
    State(String),
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    let (key, value) = text.split_once('=').ok_or_else(|| {
        format!("'{text}': expected KEY=VALUE (label=job=42, name=NAME, id=PREFIX, state=running)")
    })?;
    match key {
        "label" => Ok(match value.split_once('=') {
            Some((k, v)) => Filter::Label(k.to_string(), Some(v.to_string())),
            None => Filter::Label(value.to_string(), None),
        }),
        "name" => Ok(Filter::Name(value.to_string())),
        "id" => Ok(Filter::Id(value.to_string())),
        "state" if ["running", "stopped", "dead"].contains(&value) => {
            Ok(Filter::State(value.to_string()))
        }
        "state" => Err(format!(
            "'{value}': the states are running, stopped and dead"
        )),
        other => Err(format!(
            "'{other}' is not a filter: use label, name, id or state"
        )),
    }
}

/// `--label KEY=VALUE` (a bare KEY has an empty value, as in Docker).
pub(super) fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if !key_ok {
        return Err(format!(
            "'{key}' is not a label key: use 1-128 letters, digits, '.', '_', '-' or '/'"
        ));
    }
    if value.len() > 4096 || value.contains('\n') {
        return Err(format!(
            "the value of label '{key}' must be one line of at most 4096 bytes"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A session's labels live beside its record, in a file only `create` writes.
fn labels_path(store: &SessionStore, id: &str) -> PathBuf {
    store.dir(id).join("labels.json")
}

fn write_labels(
    store: &SessionStore,
    id: &str,
    map: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(labels_path(store, id))?;
    file.write_all(serde_json::to_string(&map).unwrap_or_default().as_bytes())
}

pub(super) fn read_labels(
    store: &SessionStore,
    id: &str,
) -> std::collections::BTreeMap<String, String> {
    std::fs::read(labels_path(store, id))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

impl Filter {
    fn matches(
        &self,
        r: &SessionRecord,
        state: SessionState,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        match self {
            Filter::Label(k, None) => labels.contains_key(k),
            Filter::Label(k, Some(v)) => labels.get(k) == Some(v),
            Filter::Name(n) => r.name.as_deref() == Some(n.as_str()),
            Filter::Id(prefix) => r.id.starts_with(prefix.as_str()),
            Filter::State(s) => state_name(state, r) == s,
        }
    }

    /// The same filters over a one-shot (it has no name; it is running, or dead when its
    /// nsbox was killed).
    fn matches_one_shot(&self, r: &OneShotRecord, live: bool) -> bool {
        match self {
            Filter::Label(k, None) => r.labels.contains_key(k),
            Filter::Label(k, Some(v)) => r.labels.get(k) == Some(v),
            Filter::Name(_) => false,
            Filter::Id(prefix) => r.id.starts_with(prefix.as_str()),
            Filter::State(s) => (if live { "running" } else { "dead" }) == s,
        }
    }
}

/// What `ps --format json` and `inspect` say about a session.
pub(super) fn session_json(store: &SessionStore, r: &SessionRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "name": r.name,
        "type": "session",
        "root": r.root,
        "state": state_name(store.state(r), r),
        "age_secs": SessionStore::age(r, false).as_secs(),
        "network": r.network,
        "memory": r.memory,
        "cpus": r.cpu_millis.map(|c| c as f64 / 1000.0),
        "pids": r.pids,
        "max_age_secs": r.max_age,
        "ttl_secs": r.ttl,
        "rm_after_secs": r.remove_after,
        "stopped": r.stopped,
        "labels": read_labels(store, &r.id),
    })
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
pub(super) fn age_text(secs: u64) -> String {
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
    let ttl = r
        .ttl
        .map_or(String::new(), |t| format!(" ttl={}", age_text(t)));
    format!("mem={memory} cpus={cpus} pids={pids}{ttl}")
}

pub fn ps(args: PsArgs) -> i32 {
    use super::listing::{render, Format};
    let store = SessionStore::system();
    let records: Vec<SessionRecord> = store
        .list()
        .into_iter()
        .filter(|r| {
            if args.filter.is_empty() {
                return true;
            }
            let labels = read_labels(&store, &r.id);
            let state = store.state(r);
            args.filter.iter().all(|f| f.matches(r, state, &labels))
        })
        .collect();
    let oneshots = OneShotStore::system();
    let one_shot_records: Vec<(OneShotRecord, bool)> = match args.all {
        true => oneshots
            .list()
            .into_iter()
            .map(|r| {
                let live = oneshots.is_live(&r);
                (r, live)
            })
            .filter(|(r, live)| args.filter.iter().all(|f| f.matches_one_shot(r, *live)))
            .collect(),
        false => Vec::new(),
    };
    if args.quiet {
        for r in &records {
            println!("{}", r.id);
        }
        for (r, _) in &one_shot_records {
            println!("{}", r.id);
        }
        return 0;
    }
    let format = match (args.json, args.format) {
        (true, _) => Format::Json,
        (false, format) => format.unwrap_or(Format::Table),
    };
    let rows = || {
        records.iter().map(|r| session_json(&store, r)).chain(
            one_shot_records
                .iter()
                .map(|(r, live)| one_shot_json(r, *live)),
        )
    };
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = rows().collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        }
        Format::Template(template) => {
            for row in rows() {
                println!("{}", render(&template, &row));
            }
        }
        Format::Table => {
            // The TYPE column only with -a, where the two kinds meet.
            let kind = |k: &str| match args.all {
                true => format!("{k:<8}  "),
                false => String::new(),
            };
            println!(
                "{:<12}  {:<16}  {}{:<24}  {:<8}  {:>5}  {:<8}  LIMITS",
                "ID",
                "NAME",
                kind("TYPE"),
                "ROOT",
                "STATE",
                "AGE",
                "NET"
            );
            for r in &records {
                println!(
                    "{:<12}  {:<16}  {}{:<24}  {:<8}  {:>5}  {:<8}  {}",
                    r.id,
                    shorten(r.name.as_deref().unwrap_or("-"), 16),
                    kind("session"),
                    shorten(&r.root, 24),
                    state_name(store.state(r), r),
                    age_text(SessionStore::age(r, false).as_secs()),
                    r.network,
                    limits_text(r),
                );
            }
            for (r, live) in &one_shot_records {
                println!(
                    "{:<12}  {:<16}  {}{:<24}  {:<8}  {:>5}  {:<8}  {}",
                    r.id,
                    "-",
                    kind("one-shot"),
                    shorten(&r.root, 24),
                    if *live { "running" } else { "dead" },
                    age_text(crate::session::state::now_secs().saturating_sub(r.created)),
                    r.network,
                    shorten(&r.command.join(" "), 40),
                );
            }
        }
    }
    0
}

/// What `ps --format json` and `inspect` say about a one-shot sandbox.
pub(super) fn one_shot_json(r: &OneShotRecord, live: bool) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "name": null,
        "type": "one-shot",
        "root": r.root,
        "state": if live { "running" } else { "dead" },
        "age_secs": crate::session::state::now_secs().saturating_sub(r.created),
        "created": r.created,
        "network": r.network,
        "command": r.command,
        "pid": r.supervisor_pid,
        "labels": r.labels,
    })
}

/// `text` cut to `width` characters, with an ellipsis when it was longer.
pub(super) fn shorten(text: &str, width: usize) -> String {
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
    pub(super) session: String,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
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
    print_stats(&stats, args.json)
}

/// `nsbox stats`' output, here or from a server.
pub(super) fn print_stats(stats: &crate::session::protocol::SessionStats, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(stats).unwrap_or_default()
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
    /// Sessions (ids or names) or one-shot sandboxes (ids, from `ps -a`).
    #[arg(value_name = "ID|NAME", required = true)]
    pub(super) sessions: Vec<String>,
    /// How long processes get between SIGTERM and SIGKILL (a bare number is seconds:
    /// Docker's `stop -t 10`).
    #[arg(
        long,
        short = 't',
        visible_alias = "time",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub(super) grace: Timeout,
}

pub fn stop(args: StopArgs) -> i32 {
    let store = SessionStore::system();
    let oneshots = OneShotStore::system();
    let mut code = 0;
    for s in &args.sessions {
        let unknown_session = matches!(
            store.resolve(s),
            Err(crate::session::StateError::Unknown(_))
        );
        let one_shot = unknown_session.then(|| oneshots.resolve(s)).flatten();
        if unknown_session && one_shot.is_none() {
            error(&format!(
                "no session or running one-shot sandbox '{}' — hint: `nsbox ps -a` lists them",
                s.escape_debug()
            ));
            code = exit::NSBOX_FAILED;
            continue;
        }
        if let Some(r) = one_shot {
            match stop_one_shot(&oneshots, &r, args.grace.0) {
                Ok(true) => println!("{}", r.id),
                Ok(false) => println!("{} (already stopped)", r.id),
                Err(e) => {
                    error(&e);
                    code = exit::NSBOX_FAILED;
                }
            }
            continue;
        }
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

/// Stops a one-shot sandbox: its nsbox gets a TERM carrying the grace period (queued), sends
/// TERM to the command and KILL to the sandbox after the grace; waits until it is gone.
/// False when it had ended already.
fn stop_one_shot(store: &OneShotStore, r: &OneShotRecord, grace: Duration) -> Result<bool, String> {
    use std::os::fd::AsFd;
    let Some(pid) = i32::try_from(r.supervisor_pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(false);
    };
    // The pidfd pins the process: checked after it is open, the start time proves the
    // signal goes to the one-shot's nsbox and not to a process that reused its pid.
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(format!("stopping one-shot {}: {e}", r.id)),
    };
    if !store.is_live(r) {
        return Ok(false);
    }
    let millis = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    match crate::sys::signal::pidfd_queue(pidfd.as_fd(), libc::SIGTERM, millis) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(e) => return Err(format!("stopping one-shot {}: {e}", r.id)),
    }
    // Its teardown takes the record away; a little longer than the grace for the kill and
    // the teardown.
    let deadline = Instant::now() + grace + Duration::from_secs(10);
    while store.read(&r.id).is_some() && store.is_live(r) {
        if Instant::now() > deadline {
            return Err(format!(
                "one-shot {} did not end within {} of its stop — hint: its nsbox (pid {}) may be stuck; `kill -9 {}`, then `nsbox prune`",
                r.id,
                crate::units::format_duration(grace + Duration::from_secs(10)),
                r.supervisor_pid,
                r.supervisor_pid
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

/// Flags of `nsbox rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Sessions (ids or names).
    #[arg(value_name = "ID|NAME", required = true)]
    pub(super) sessions: Vec<String>,
    /// Stop running sessions first.
    #[arg(long, short = 'f')]
    pub(super) force: bool,
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
    pub(super) source: String,
    /// A host path, SESSION:PATH, or `-`: SRC as a tar stream on stdout.
    #[arg(value_name = "DST")]
    pub(super) destination: String,
    /// Copying out: write at most this much file data (holes and hard links cost nothing;
    /// `none` lifts the bound). A copy that would write more fails and leaves nothing behind.
    #[arg(long, value_name = "SIZE", default_value = "8g")]
    pub(super) max_size: Limit<ByteSize>,
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

/// Flags of `nsbox logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The session (id, unique id prefix, or name); running or stopped.
    #[arg(value_name = "ID|NAME")]
    pub(super) session: String,
    /// Keep printing new output until the session stops.
    #[arg(long, short = 'f')]
    pub(super) follow: bool,
    /// Print the kept events (JSON lines, with `ts` and `exec_id`) instead of the output.
    #[arg(long)]
    pub(super) json: bool,
}

/// `nsbox logs`: the output the session's commands relayed (masked and capped as their callers
/// got it), kept by each `exec --session` in the session's `output.log`.
pub fn logs(args: LogsArgs) -> i32 {
    let store = SessionStore::system();
    let record = match store.resolve(&args.session) {
        Ok(r) => r,
        Err(e) => {
            error(&e.to_string());
            return exit::USAGE;
        }
    };
    let path = store.output_log(&record.id);
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let running = store.state(&record) == SessionState::Running;
        // Read what is new; an absent log is a session that kept nothing (yet).
        let grown = match read_from(&path, offset) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                error(&format!("{}: {e}", path.display()));
                return exit::NSBOX_FAILED;
            }
        };
        offset += grown.len() as u64;
        pending.extend_from_slice(&grown);
        // Whole lines only: a writer may be in the middle of one.
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = pending.drain(..=end).collect();
            if !print_log_lines(&lines, args.json) {
                return 0;
            }
        }
        if !args.follow || (!running && grown.is_empty()) {
            return 0;
        }
        if grown.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Prints kept events: raw output to stdout/stderr, or the lines themselves with `--json`.
/// False once stdout is gone.
fn print_log_lines(lines: &[u8], json: bool) -> bool {
    let mut out = std::io::stdout().lock();
    if json {
        return out.write_all(lines).and_then(|()| out.flush()).is_ok();
    }
    let mut err = std::io::stderr().lock();
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let data = match (event["data"].as_str(), event["data_b64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default()
            }
            (None, None) => Vec::new(),
        };
        let written = match event["type"].as_str() {
            Some("stdout") => out.write_all(&data),
            Some("stderr") => err.write_all(&data),
            Some("truncated") => writeln!(
                err,
                "nsbox: the session's output log is full ({} bytes); later output was not kept",
                event["limit"]
            ),
            _ => Ok(()),
        };
        if written.is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}
