//! `nsbox --host URL` (or `NSBOX_HOST`): the command line as a client of `nsbox serve`.
//!
//! `run`/`exec`, `create`, `exec --session`, `cp`, `ps`, `stop`, `rm` and `inspect` take the
//! same flags as locally and print the same output, events, documents and exit codes; they go
//! through [`crate::serve::client`]. A remote `run` is a create, one streamed command and a
//! delete; the delete also happens on Ctrl-C or SIGTERM (the signals are read from a signalfd
//! while another thread relays the stream). Local and remote share the last step: the end of
//! the stream becomes an [`Outcome`] that `exec::finish` prints.
//!
//! Flags that name something on this machine (host paths, a profile file, a terminal) cannot
//! reach the server: each is refused by name before anything is made, never dropped. Errors
//! from the server keep its message and hint and map to the exit codes of [`crate::exit`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use super::exec::{self, fail, finish, raw_secret_masker, result_mode, start_event};
use super::session::{self, CpArgs, CreateArgs, PsArgs, RmArgs, StopArgs};
use super::{error, Command, RunArgs, SandboxArgs};
use crate::exit;
use crate::relay::result::Capture;
use crate::relay::{Masker, Usage};
use crate::report::{Class, Failure, Phase};
use crate::sandbox::{Ending, Outcome};
use crate::serve::client::{ClientError, CommandStream, ServeClient};
use crate::session::copy::{host_extract, host_tar, parse_endpoint, Endpoint};
use crate::units::{ByteSize, Limit};

/// The server's address when `--host` is not given.
pub const HOST_ENV: &str = "NSBOX_HOST";
/// The API key sent to the server (needed over TCP).
pub const KEY_ENV: &str = "NSBOX_API_KEY";
/// A PEM file of CAs to trust for an `https://` server (besides the system's).
pub const CA_ENV: &str = "NSBOX_CA_FILE";

/// The server to use: `--host`, else `NSBOX_HOST` (empty means none).
pub(super) fn host(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var(HOST_ENV).ok())
        .filter(|h| !h.is_empty())
}

/// Commands that always run here, with or without a server: they concern this machine or
/// nsbox itself (`serve` is the server).
pub(super) fn runs_locally(command: &Command) -> bool {
    matches!(
        command,
        Command::Version(_)
            | Command::Completion(_)
            | Command::Man(_)
            | Command::Serve(_)
            | Command::Config(_)
            | Command::Profiles
            | Command::Doctor(_)
    )
}

/// Runs `command` against the server at `host`; returns the exit status.
pub(super) fn main(host: &str, command: Command, t0: u64) -> i32 {
    let client = match connect(host) {
        Ok(c) => c,
        Err(failure) => {
            // `run`/`exec` report in their chosen form (events, the result document).
            return match command {
                Command::Run(args) => fail(result_mode(&args), &failure, t0),
                Command::Exec(args) => fail(result_mode(&args.run), &failure, t0),
                Command::Create(args) => fail(args.json, &failure, t0),
                _ => {
                    error(&failure.to_string());
                    failure.exit_code()
                }
            };
        }
    };
    match command {
        Command::Run(args) => run(&client, *args, None, t0),
        Command::Exec(args) => run(&client, args.run, args.session, t0),
        Command::Create(args) => create(&client, *args, t0),
        Command::Ps(args) => ps(&client, args),
        Command::Inspect(args) => inspect(&client, args),
        Command::Stop(args) => stop(&client, args),
        Command::Rm(args) => rm(&client, args),
        Command::Cp(args) => cp(&client, args),
        Command::Stats(args) => stats(&client, args),
        Command::Commit(args) => commit(&client, args),
        Command::Fork(args) => fork(&client, args),
        Command::Pause(args) => freeze(&client, args, true),
        Command::Resume(args) => freeze(&client, args, false),
        other => {
            let name = command_name(&other);
            error(&format!(
                "`nsbox {name}` does not work with a server (--host or {HOST_ENV}): it works on this machine's own sessions and images — hint: unset {HOST_ENV} or drop --host to run it here; with a server use run, exec, create, cp, ps, inspect, stats, pause, resume, commit, fork, stop and rm"
            ));
            exit::USAGE
        }
    }
}

/// The subcommand's name as typed (from clap's definition).
fn command_name(command: &Command) -> String {
    let debug = format!("{command:?}");
    let variant = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default();
    variant.to_ascii_lowercase()
}

/// The client of the server at `host`, with the key of `NSBOX_API_KEY`.
fn connect(host: &str) -> Result<ServeClient, Failure> {
    let key = std::env::var(KEY_ENV).ok().filter(|k| !k.is_empty());
    let ca = std::env::var_os(CA_ENV).map(PathBuf::from);
    let client = ServeClient::from_url(host, key.clone(), ca.as_deref()).map_err(|e| {
        let mut failure = failure_of(e);
        failure.message = format!("--host {}", failure.message);
        failure
    })?;
    if client.is_tcp() && key.is_none() {
        return Err(Failure::usage(format!(
            "{KEY_ENV} is not set: a server reached over TCP ({}) needs an API key",
            client.address()
        ))
        .with_hint(format!(
            "on the server, `nsbox serve key add NAME` prints one; export {KEY_ENV}=THAT_KEY"
        )));
    }
    Ok(client)
}

/// A failure of a call to the server, as nsbox reports its own: the server's message and
/// hint, and the exit code the server gave (`exit_code`) or that its status means.
fn failure_of(e: ClientError) -> Failure {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            hint,
            exit_code,
        } => {
            let class = match (exit_code, status) {
                (Some(exit::USAGE), _) => Class::Usage,
                (Some(exit::HOST_NOT_CAPABLE), _) => Class::HostNotCapable,
                (Some(exit::IMAGE_NOT_FOUND), _) => Class::ImageNotFound,
                (Some(_), _) => Class::Failed,
                // The request was wrong, or the key: nothing was made.
                (None, 400 | 401 | 403 | 404 | 413) => Class::Usage,
                (None, _) => Class::Failed,
            };
            let phase = match class {
                Class::Usage => Phase::Usage,
                Class::ImageNotFound => Phase::Image,
                _ => Phase::Setup,
            };
            let hint = match (status, hint) {
                (401, _) => Some(format!(
                    "{KEY_ENV} must hold a key the server knows (`nsbox serve key add NAME` on the server prints one)"
                )),
                (_, hint) => hint,
            };
            Failure {
                phase,
                class,
                message: format!("the server refused ({status} {code}): {message}"),
                hint,
            }
        }
        ClientError::Address(m) => match m.split_once(" — hint: ") {
            Some((m, h)) => Failure::usage(m).with_hint(h),
            None => Failure::usage(m),
        },
        e @ (ClientError::Connect { .. } | ClientError::Tls { .. }) => {
            let text = e.to_string();
            match text.split_once(" — hint: ") {
                Some((m, h)) => Failure::from(m).with_hint(h),
                None => Failure::from(text),
            }
        }
        e => Failure::from(e.to_string()),
    }
}

/// Why each flag cannot reach the server, for the flags given.
fn refused_flags(sb: &SandboxArgs) -> Vec<String> {
    let mut refused = Vec::new();
    let mut refuse = |given: bool, flag: &str, why: &str| {
        if given {
            refused.push(format!("{flag} ({why})"));
        }
    };
    let host_path = "a path on this machine; the sandbox runs on the server";
    refuse(sb.rootfs.is_some(), "--rootfs", host_path);
    refuse(!sb.mounts.is_empty(), "--mount/-v", host_path);
    refuse(
        !sb.copies.is_empty(),
        "--copy",
        "a path on this machine; copy with `nsbox --host URL cp` into a session",
    );
    refuse(
        sb.profile
            .as_deref()
            .is_some_and(|p| p.contains('/') || p.ends_with(".toml")),
        "--profile FILE",
        "a file on this machine; give the name of a profile the server has",
    );
    let api = "the server's API has no such setting";
    refuse(
        sb.pull.is_some(),
        "--pull",
        "the server's pull policy applies",
    );
    refuse(sb.writable_root, "--writable-root", api);
    refuse(!sb.tmpfs.is_empty(), "--tmpfs", api);
    refuse(sb.sandbox_size.is_some(), "--sandbox-size", api);
    refuse(sb.tmp_size.is_some(), "--tmp-size", api);
    refuse(sb.root_size.is_some(), "--root-size", api);
    refuse(
        !sb.dns_upstream.is_empty(),
        "--dns-upstream",
        "the server's resolver applies",
    );
    refuse(
        sb.log_network,
        "--log-network",
        "the server keeps the log: GET /v1/sandboxes/ID/network-log",
    );
    refuse(sb.user.is_some(), "--user", api);
    refuse(sb.hostname.is_some(), "--hostname", api);
    refuse(
        matches!(sb.pids, Some(Limit::Unlimited)),
        "--pids none",
        "the API takes a number",
    );
    refused
}

/// The usage failure for refused flags.
fn refusal(refused: &[String]) -> Failure {
    Failure::usage(format!(
        "with --host, {} cannot be used",
        refused.join(", ")
    ))
    .with_hint(format!(
        "drop {} or run without --host (and without {HOST_ENV})",
        if refused.len() == 1 { "it" } else { "them" }
    ))
}

/// A size as the server parses it (bytes), or `none`.
fn size_text(limit: &Limit<ByteSize>) -> String {
    match limit {
        Limit::Unlimited => "none".into(),
        Limit::Value(size) => size.bytes().to_string(),
    }
}

/// A duration as the server parses it (milliseconds).
fn duration_text(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The `POST /v1/sandboxes` body for a sandbox's flags (checked: refused flags fail here).
fn create_request(sb: &SandboxArgs) -> Result<serde_json::Value, Failure> {
    let refused = refused_flags(sb);
    if !refused.is_empty() {
        return Err(refusal(&refused));
    }
    let host_env: BTreeMap<String, String> = std::env::vars().collect();
    let mut request = serde_json::json!({});
    if let Some(image) = &sb.image {
        request["image"] = image.clone().into();
    }
    if let Some(profile) = &sb.profile {
        request["profile"] = profile.clone().into();
    }
    let mut limits = serde_json::Map::new();
    if let Some(m) = &sb.memory {
        limits.insert("memory".into(), size_text(m).into());
    }
    match &sb.cpus {
        Some(Limit::Value(c)) => {
            limits.insert("cpus".into(), c.to_string().into());
        }
        Some(Limit::Unlimited) => {
            limits.insert("cpus".into(), "none".into());
        }
        None => {}
    }
    if let Some(Limit::Value(p)) = sb.pids {
        limits.insert("pids".into(), p.into());
    }
    if !limits.is_empty() {
        request["limits"] = limits.into();
    }
    if sb.net.is_some() || !sb.allow.is_empty() || !sb.deny.is_empty() {
        let mode = match sb.net {
            Some(mode) => mode.as_str().to_string(),
            None if !sb.allow.is_empty() => "filtered".into(),
            None => "none".into(),
        };
        request["network"] = serde_json::json!({
            "mode": mode,
            "allow": sb.allow,
            "deny": sb.deny,
        });
    }
    let mut env = serde_json::Map::new();
    for path in &sb.env_files {
        for (k, v) in crate::spec::read_env_file(path, &host_env).map_err(|e| Failure::of(&e))? {
            env.insert(k, v.into());
        }
    }
    for entry in &sb.env {
        if let Some((k, v)) =
            crate::spec::parse_env_entry("--env", entry, &host_env).map_err(|e| Failure::of(&e))?
        {
            env.insert(k, v.into());
        }
    }
    if !env.is_empty() {
        request["env"] = env.into();
    }
    if let Some(secrets) = secrets_json(&sb.secrets, &sb.secret_env)? {
        request["secrets"] = secrets;
    }
    let mut credentials = serde_json::Map::new();
    for entry in &sb.credentials {
        let bad = || {
            Failure::usage(format!(
                "--credential '{entry}': expected NAME[:HEADER]=HOST[,HOST...]"
            ))
        };
        let (left, hosts) = entry.split_once('=').ok_or_else(bad)?;
        let (name, headers) = match left.split_once(':') {
            Some((name, header)) => (name, vec![header.to_string()]),
            None => (left, Vec::new()),
        };
        let value = host_env
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--credential '{entry}': {name} is not set (or empty) in nsbox's environment"
                ))
            })?;
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if name.is_empty() || hosts.is_empty() {
            return Err(bad());
        }
        credentials.insert(
            name.to_string(),
            serde_json::json!({"value": value, "hosts": hosts, "headers": headers}),
        );
    }
    if !credentials.is_empty() {
        request["credentials"] = credentials.into();
    }
    if !sb.labels.is_empty() {
        request["labels"] = sb
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(w) = &sb.workdir {
        request["workdir"] = w.display().to_string().into();
    }
    Ok(request)
}

/// `run -- CMD` and `exec [--session ID] -- CMD` against the server.
fn run(client: &ServeClient, args: RunArgs, session: Option<String>, t0: u64) -> i32 {
    let json = result_mode(&args);
    let masker = raw_secret_masker(&args.sandbox);
    let failed = |failure: Failure| fail(json, &failure.map_text(|t| masker.mask_str(t)), t0);
    if let Some(message) = exec::verbose_after_command(&args.sandbox) {
        return failed(exec::usage(message));
    }
    let mut refused = Vec::new();
    let mut refuse = |given: bool, flag: &str| {
        if given {
            refused.push(flag.to_string());
        }
    };
    refuse(
        args.tty,
        "--tty/-t (commands through the API have no terminal; -i works)",
    );
    refuse(args.timings, "--timings (the phases are the server's)");
    refuse(
        args.entrypoint.is_some(),
        "--entrypoint (the command is run as given)",
    );
    if !refused.is_empty() {
        return failed(refusal(&refused));
    }
    if args.command.is_empty() {
        return failed(Failure::usage("no command given").with_hint(
            "usage: nsbox --host URL run [OPTIONS] -- CMD [ARGS...] (an image's own command is not run through the server)",
        ));
    }
    let Some(argv) = args
        .command
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return failed(Failure::usage(
            "the command has an argument that is not UTF-8, which the server's API cannot carry",
        ));
    };
    let mut command = serde_json::json!({ "argv": argv });
    if let Some(Limit::Value(t)) = args.timeout {
        command["timeout"] = duration_text(t.0).into();
    }
    match args.max_output {
        Some(Limit::Value(m)) => command["max_output"] = m.bytes().into(),
        Some(Limit::Unlimited) => command["max_output"] = u64::MAX.into(),
        None => {}
    }
    if args.interactive {
        command["stdin_open"] = true.into();
    }
    let timeout = args
        .timeout
        .and_then(Limit::into_option)
        .map_or(Duration::ZERO, |t| t.0);
    let memory_limit = args.sandbox.memory.and_then(Limit::into_option);
    let interactive = args.interactive;

    // What the command runs in: the named session, or a sandbox made for it.
    let (id, one_shot, outs) = match session {
        Some(session) => {
            let mut used = args.sandbox.defining_flags();
            // `-u`: the command's user, which the API takes (root, UID or UID:GID).
            if let Some(user) = &args.sandbox.user {
                command["user"] = user.clone().into();
                used.retain(|f| *f != "--user");
            }
            if !args.outs.is_empty() {
                used.push("--out (use `nsbox cp` with a session)");
            }
            if !args.sandbox.secrets.is_empty() || !args.sandbox.secret_env.is_empty() {
                used.push(
                    "--secret/--secret-env (with --host, give secrets when the session is created)",
                );
            }
            if !used.is_empty() {
                return failed(
                    Failure::usage(format!(
                        "{} do not apply with --session (the session was created with its own)",
                        used.join(", ")
                    ))
                    .with_hint("with --session and --host use -e, -w, -i, -u, --json, --result-json, --timeout, --max-output"),
                );
            }
            let host_env: BTreeMap<String, String> = std::env::vars().collect();
            let mut env = serde_json::Map::new();
            for entry in &args.sandbox.env {
                match crate::spec::parse_env_entry("--env", entry, &host_env) {
                    Ok(Some((k, v))) => {
                        env.insert(k, v.into());
                    }
                    Ok(None) => {}
                    Err(e) => return failed(Failure::of(&e)),
                }
            }
            if !env.is_empty() {
                command["env"] = env.into();
            }
            if let Some(w) = &args.sandbox.workdir {
                command["cwd"] = w.display().to_string().into();
            }
            let view = match client.get(&session) {
                Ok(v) => v,
                Err(e) => return failed(failure_of(e)),
            };
            let id = view["id"].as_str().unwrap_or(&session).to_string();
            if json {
                start_event(
                    &id,
                    view["profile"].as_str().unwrap_or_default(),
                    view["network"].as_str().unwrap_or_default(),
                    &labels_of(&view),
                );
            }
            (id, false, Vec::new())
        }
        None => {
            let outs = match parse_outs(&args.outs) {
                Ok(outs) => outs,
                Err(failure) => return failed(failure),
            };
            let request = match create_request(&args.sandbox) {
                Ok(r) => r,
                Err(failure) => return failed(failure),
            };
            if let Some(w) = &args.sandbox.workdir {
                command["cwd"] = w.display().to_string().into();
            }
            // Taken before the create, so a Ctrl-C from here on removes what was made.
            let signals = match crate::sys::signal::take_relay_signals() {
                Ok(fd) => fd,
                Err(e) => return failed(Failure::from(format!("take the signals: {e}"))),
            };
            let view = match client.create(&request) {
                Ok(v) => v,
                Err(e) => return failed(failure_of(e)),
            };
            let id = view["id"].as_str().unwrap_or_default().to_string();
            let labels = labels_of(&view);
            if let Some(signal) = pending_signal(&signals) {
                let _ = client.delete(&id);
                return interrupted(json, &id, signal, &masker);
            }
            if json {
                start_event(
                    &id,
                    view["profile"].as_str().unwrap_or_default(),
                    view["network"].as_str().unwrap_or_default(),
                    &labels,
                );
            }
            drop(signals);
            (id, true, outs)
        }
    };
    relay_command(
        client,
        &id,
        &command,
        Relay {
            json,
            result: exec::result_document(),
            interactive,
            one_shot,
            timeout,
            memory_limit,
            outs,
            t0,
        },
        &masker,
    )
}

/// What [`relay_command`] needs to know of the run.
struct Relay {
    json: bool,
    result: bool,
    interactive: bool,
    /// The sandbox was made for this command: removed at the end, and on a signal.
    one_shot: bool,
    timeout: Duration,
    memory_limit: Option<ByteSize>,
    outs: Vec<(String, PathBuf)>,
    /// When nsbox started (for the duration of a failure).
    t0: u64,
}

/// Runs the command, relays its output while watching for signals, and reports its end.
fn relay_command(
    client: &ServeClient,
    id: &str,
    command: &serde_json::Value,
    relay: Relay,
    masker: &Masker,
) -> i32 {
    let signals = match crate::sys::signal::take_relay_signals() {
        Ok(fd) => fd,
        Err(e) => {
            if relay.one_shot {
                let _ = client.delete(id);
            }
            return fail(
                relay.json,
                &Failure::from(format!("take the signals: {e}")),
                relay.t0,
            );
        }
    };
    let outcome = |ending: Ending| remote_outcome(id, ending, !relay.one_shot, relay.memory_limit);
    let stream = match client.start_command(id, command) {
        Ok(s) => s,
        Err(e) => {
            if relay.one_shot {
                let _ = client.delete(id);
            }
            return match e {
                // The program could not be started: reported as locally (127, 126).
                ClientError::Api {
                    exit_code: Some(code @ (exit::NOT_FOUND | exit::NOT_EXECUTABLE)),
                    message,
                    ..
                } => finish(
                    relay.json,
                    false,
                    &outcome(Ending::ExecFailed { code, message }),
                    masker,
                ),
                e => fail(
                    relay.json,
                    &failure_of(e).map_text(|t| masker.mask_str(t)),
                    relay.t0,
                ),
            };
        }
    };
    let command_id = stream.command_id.clone();
    if relay.interactive {
        if let Some(cid) = command_id.clone() {
            let (client, id) = (client.clone(), id.to_string());
            std::thread::spawn(move || pump_stdin(&client, &id, &cid));
        }
    }
    // The stream is read on its own thread; this one waits for its end or a signal.
    let (done_r, done_w) = match rustix::pipe::pipe() {
        Ok(p) => p,
        Err(e) => {
            if relay.one_shot {
                let _ = client.delete(id);
            }
            return fail(relay.json, &Failure::from(format!("pipe: {e}")), relay.t0);
        }
    };
    let (json, result) = (relay.json, relay.result);
    let reader = std::thread::spawn(move || {
        let end = read_stream(stream, json, result);
        drop(done_w);
        end
    });
    let signal = wait_for_end_or_signal(&signals, &done_r);
    if let Some(sig) = signal {
        // The sandbox goes (or, in a session, the command): what a local run does on a signal.
        if relay.one_shot {
            let _ = client.delete(id);
        } else if let Some(cid) = &command_id {
            let _ = client.signal(id, cid, "KILL");
        }
        return finish(
            relay.json,
            false,
            &outcome(Ending::Interrupted(sig)),
            masker,
        );
    }
    let end = reader
        .join()
        .unwrap_or_else(|_| Err(Failure::from("the stream's reader failed")));
    let mut ended = match end {
        Ok(end) => {
            let mut o = outcome(end.ending(relay.timeout));
            o.oom = end.oom;
            o.truncated = end.truncated;
            o.duration = end.duration;
            o.usage = end.usage;
            o.warnings = end.warnings;
            o.capture = end.capture;
            o
        }
        Err(failure) => {
            if relay.one_shot {
                let _ = client.delete(id);
            }
            return fail(
                relay.json,
                &failure.map_text(|t| masker.mask_str(t)),
                relay.t0,
            );
        }
    };
    if relay.one_shot {
        copy_outs(client, id, &relay.outs, &mut ended.warnings);
        if let Err(e) = client.delete(id) {
            ended
                .warnings
                .push(format!("the sandbox {id} was not deleted: {e}"));
        }
    }
    finish(relay.json, false, &ended, masker)
}

/// Waits until the stream's reader is done (its end of `done` closes) or a signal comes
/// (SIGWINCH is not one that ends a run): the signal, if one came first.
fn wait_for_end_or_signal(
    signals: &std::os::fd::OwnedFd,
    done: &std::os::fd::OwnedFd,
) -> Option<i32> {
    use rustix::event::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [
            PollFd::new(signals, PollFlags::IN),
            PollFd::new(done, PollFlags::IN),
        ];
        if poll(&mut fds, None).is_err() {
            continue;
        }
        let (sig_ready, done_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if sig_ready {
            while let Ok(Some(sig)) = crate::sys::signal::read_signal(signals.as_fd()) {
                if sig != libc::SIGWINCH {
                    return Some(sig);
                }
            }
        }
        if done_ready {
            return None;
        }
    }
}

/// A signal already waiting (taken before a create that could not be interrupted).
fn pending_signal(signals: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsFd;
    while let Ok(Some(sig)) = crate::sys::signal::read_signal(signals.as_fd()) {
        if sig != libc::SIGWINCH {
            return Some(sig);
        }
    }
    None
}

/// The report of a run ended by `signal` before its command started.
fn interrupted(json: bool, id: &str, signal: i32, masker: &Masker) -> i32 {
    let outcome = remote_outcome(id, Ending::Interrupted(signal), false, None);
    finish(json, false, &outcome, masker)
}

/// An [`Outcome`] for what the server reported (the rest is filled in by the caller).
fn remote_outcome(
    id: &str,
    ending: Ending,
    in_session: bool,
    memory_limit: Option<ByteSize>,
) -> Outcome {
    Outcome {
        id: id.to_string(),
        ending,
        oom: false,
        truncated: false,
        duration: Duration::ZERO,
        marks: Vec::new(),
        warnings: Vec::new(),
        memory_limit,
        in_session,
        exec_id: None,
        usage: Usage::default(),
        capture: Capture::default(),
        kept: None,
    }
}

/// Sends this process's stdin to the command, chunk by chunk, then closes it.
fn pump_stdin(client: &ServeClient, id: &str, command_id: &str) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if client.send_stdin(id, command_id, &buf[..n], false).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = client.send_stdin(id, command_id, &[], true);
}

/// How the command's stream ended.
struct StreamEnd {
    code: i32,
    signal: Option<String>,
    oom: bool,
    timeout: bool,
    truncated: bool,
    duration: Duration,
    usage: Usage,
    warnings: Vec<String>,
    capture: Capture,
}

impl StreamEnd {
    fn ending(&self, timeout: Duration) -> Ending {
        if self.timeout {
            return Ending::TimedOut(timeout);
        }
        match self.signal.as_deref().and_then(signal_number) {
            Some(sig) => Ending::Signaled(sig),
            None => Ending::Exited(self.code),
        }
    }
}

/// A signal's number from its name ("SIGKILL").
fn signal_number(name: &str) -> Option<i32> {
    (1..=64).find(|&n| crate::sys::signal::name(n) == name)
}

/// Reads the command's events: output to stdout and stderr (or, with `--json`, the event
/// lines as they are; with `--result-json`, kept for the document) up to the `exit` event.
fn read_stream(mut stream: CommandStream, json: bool, result: bool) -> Result<StreamEnd, Failure> {
    let mut capture = Capture::default();
    let mut warnings = Vec::new();
    let mut truncated = false;
    while let Some(event) = stream.next_event() {
        let event = event.map_err(|e| Failure::from(format!("the command's stream: {e}")))?;
        let kind = event["type"].as_str().unwrap_or_default();
        match kind {
            "stdout" | "stderr" => {
                let data = match (event["data"].as_str(), event["data_b64"].as_str()) {
                    (Some(text), _) => text.as_bytes().to_vec(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default(),
                    (None, None) => Vec::new(),
                };
                if result {
                    if kind == "stdout" {
                        capture.stdout.extend_from_slice(&data);
                    } else {
                        capture.stderr.extend_from_slice(&data);
                    }
                } else if json {
                    // Written again as the local relay writes it (with its phase).
                    let chunk = crate::relay::Chunk {
                        phase: Some("run"),
                        data: event["data"].as_str().map(str::to_string),
                        data_b64: event["data_b64"].as_str().map(str::to_string),
                    };
                    write_event(&if kind == "stdout" {
                        crate::relay::Event::Stdout(chunk)
                    } else {
                        crate::relay::Event::Stderr(chunk)
                    });
                } else if kind == "stdout" {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&data).and_then(|()| out.flush());
                } else {
                    let _ = std::io::stderr().lock().write_all(&data);
                }
            }
            "truncated" => {
                truncated = true;
                if json && !result {
                    let limit = event["limit"].as_u64().unwrap_or_default();
                    write_event(&crate::relay::Event::Truncated { limit });
                }
            }
            "warning" => warnings.push(event["message"].as_str().unwrap_or_default().to_string()),
            "error" => {
                let message = event["message"].as_str().unwrap_or_default().to_string();
                let mut failure = Failure::new(Class::Failed, Phase::Run, message);
                failure.hint = event["hint"].as_str().map(str::to_string);
                return Err(failure);
            }
            "exit" => {
                let usage: Usage = serde_json::from_value(event.clone()).unwrap_or_default();
                return Ok(StreamEnd {
                    code: event["code"]
                        .as_i64()
                        .and_then(|c| i32::try_from(c).ok())
                        .unwrap_or(exit::NSBOX_FAILED),
                    signal: event["signal"].as_str().map(str::to_string),
                    oom: event["oom"].as_bool().unwrap_or(false),
                    timeout: event["timeout"].as_bool().unwrap_or(false),
                    truncated: truncated || event["truncated"].as_bool().unwrap_or(false),
                    duration: Duration::from_secs_f64(
                        event["duration_ms"].as_f64().unwrap_or(0.0).max(0.0) / 1e3,
                    ),
                    usage,
                    warnings,
                    capture,
                });
            }
            // The server's start event: this side wrote its own (with the labels).
            _ => {}
        }
    }
    Err(Failure::from(
        "the server's stream ended before the command did (the server stopped, or the connection broke)",
    ))
}

fn write_event(event: &crate::relay::Event<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&event.to_line()).and_then(|()| out.flush());
}

fn labels_of(view: &serde_json::Value) -> BTreeMap<String, String> {
    view["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `--out PATH:HOSTDIR`, checked before anything is made.
fn parse_outs(outs: &[String]) -> Result<Vec<(String, PathBuf)>, Failure> {
    outs.iter()
        .map(|text| match text.split_once(':') {
            Some((inside, host)) if !inside.is_empty() && !host.is_empty() => {
                Ok((inside.to_string(), PathBuf::from(host)))
            }
            _ => Err(Failure::usage(format!(
                "--out {text}: expected PATH:HOSTDIR (a path inside the sandbox, a host directory)"
            ))
            .with_hint("e.g. --out /sandbox/dist:./artifacts")),
        })
        .collect()
}

/// Copies each `--out` from the sandbox (still there) into its host directory; a failed
/// copy is a warning, as locally.
fn copy_outs(
    client: &ServeClient,
    id: &str,
    outs: &[(String, PathBuf)],
    warnings: &mut Vec<String>,
) {
    for (inside, host) in outs {
        let name = Path::new(inside)
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        let copied = std::fs::create_dir_all(host)
            .map_err(|e| format!("{}: {e}", host.display()))
            .and_then(|()| client.read_tar(id, inside).map_err(|e| e.to_string()))
            .and_then(|tar| host_extract(&tar[..], &name, host).map_err(|e| e.to_string()));
        if let Err(e) = copied {
            warnings.push(format!("--out {inside}:{}: {e}", host.display()));
        }
    }
}

/// `nsbox --host URL create`.
fn create(client: &ServeClient, args: CreateArgs, t0: u64) -> i32 {
    let json = args.json;
    let masker = raw_secret_masker(&args.sandbox);
    let failed = |failure: Failure| fail(json, &failure.map_text(|t| masker.mask_str(t)), t0);
    let mut refused = refused_flags(&args.sandbox);
    if args.rm {
        refused.push("--rm (the server deletes on DELETE or at --ttl)".into());
    }
    if args.idle_action.is_some() {
        refused.push("--idle-action (the server's sandboxes stop when idle)".into());
    }
    if !refused.is_empty() {
        return failed(refusal(&refused));
    }
    let mut request = match create_request(&args.sandbox) {
        Ok(r) => r,
        Err(f) => return failed(f),
    };
    if let Some(name) = &args.name {
        request["name"] = name.clone().into();
    }
    match args.max_age {
        Some(Limit::Value(t)) => request["idle_timeout"] = duration_text(t.0).into(),
        Some(Limit::Unlimited) => {
            return failed(refusal(&[
                "--max-age none (the API takes a duration)".into()
            ]))
        }
        None => {}
    }
    if let Some(t) = args.ttl {
        request["ttl"] = duration_text(t.0).into();
    }
    let script = match (&args.setup, &args.setup_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                return failed(Failure::usage(format!(
                    "--setup-file {}: {e}",
                    path.display()
                )))
            }
        },
        (None, None) => None,
    };
    if let Some(s) = script {
        request["setup"] = s.into();
    }
    if let Some(Limit::Value(t)) = args.timeout {
        request["setup_timeout"] = duration_text(t.0).into();
    }
    if let Some(m) = &args.max_output {
        request["limits"]["max_output"] = size_text(m).into();
    }
    let view = match client.create(&request) {
        Ok(v) => v,
        // A setup script that failed: its exit code, as `nsbox create --setup` gives.
        Err(ClientError::Api {
            code,
            message,
            exit_code: Some(status),
            ..
        }) if code == "setup_failed" => {
            let message = masker.mask_str(&message);
            if json {
                let event = crate::relay::Event::Error {
                    phase: "setup",
                    message,
                    hint: None,
                    code: status,
                };
                let _ = std::io::stdout().lock().write_all(&event.to_line());
            } else {
                error(&message);
            }
            return status;
        }
        Err(e) => return failed(failure_of(e)),
    };
    let id = view["id"].as_str().unwrap_or_default();
    if json {
        start_event(
            id,
            view["profile"].as_str().unwrap_or_default(),
            view["network"].as_str().unwrap_or_default(),
            &labels_of(&view),
        );
        let _ = std::io::stdout().lock().write_all(
            &crate::relay::Event::Created {
                id,
                name: view["name"].as_str(),
            }
            .to_line(),
        );
    } else {
        println!("{id}");
    }
    0
}

/// A server's sandbox in the shape of `ps --format json` (what the server knows of it).
fn ps_row(view: &serde_json::Value, now: u64) -> serde_json::Value {
    let created = view["created"].as_u64().unwrap_or(now);
    let ttl = view["expires_at"]
        .as_u64()
        .map(|e| e.saturating_sub(created));
    serde_json::json!({
        "id": view["id"],
        "name": view["name"],
        "root": view["image"].as_str().map_or("/ (host)".to_string(), |i| format!("image {i}")),
        "state": view["state"],
        "age_secs": now.saturating_sub(created),
        "network": view["network"],
        "memory": view["limits"]["memory"],
        "cpus": view["limits"]["cpus"],
        "pids": view["limits"]["pids"],
        "max_age_secs": view["idle_timeout_secs"],
        "ttl_secs": ttl,
        "rm_after_secs": null,
        "stopped": null,
        "labels": view["labels"],
    })
}

fn row_matches(filter: &session::Filter, row: &serde_json::Value) -> bool {
    use session::Filter;
    match filter {
        Filter::Label(k, None) => row["labels"].get(k).is_some(),
        Filter::Label(k, Some(v)) => row["labels"][k].as_str() == Some(v.as_str()),
        Filter::Name(n) => row["name"].as_str() == Some(n.as_str()),
        Filter::Id(prefix) => row["id"]
            .as_str()
            .is_some_and(|i| i.starts_with(prefix.as_str())),
        Filter::State(s) => row["state"].as_str() == Some(s.as_str()),
    }
}

/// `nsbox --host URL ps`: the sandboxes the key owns (all of them on the unix socket).
fn ps(client: &ServeClient, args: PsArgs) -> i32 {
    use super::listing::{render, Format};
    let views = match client.list(None) {
        Ok(v) => v,
        Err(e) => {
            error(&failure_of(e).to_string());
            return exit::NSBOX_FAILED;
        }
    };
    let now = crate::session::state::now_secs();
    let rows: Vec<serde_json::Value> = views
        .iter()
        .map(|v| ps_row(v, now))
        .filter(|row| args.filter.iter().all(|f| row_matches(f, row)))
        .collect();
    if args.quiet {
        for r in &rows {
            println!("{}", r["id"].as_str().unwrap_or_default());
        }
        return 0;
    }
    let format = match (args.json, args.format) {
        (true, _) => Format::Json,
        (false, format) => format.unwrap_or(Format::Table),
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Format::Template(template) => {
            for r in &rows {
                println!("{}", render(&template, r));
            }
        }
        Format::Table => {
            println!(
                "{:<12}  {:<16}  {:<24}  {:<8}  {:>5}  {:<8}  LIMITS",
                "ID", "NAME", "ROOT", "STATE", "AGE", "NET"
            );
            for r in &rows {
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::Null => "-".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let memory = r["memory"]
                    .as_u64()
                    .map_or("-".into(), |m| ByteSize(m).to_string().replace(' ', ""));
                let ttl = r["ttl_secs"]
                    .as_u64()
                    .map_or(String::new(), |t| format!(" ttl={}", session::age_text(t)));
                println!(
                    "{:<12}  {:<16}  {:<24}  {:<8}  {:>5}  {:<8}  mem={memory} cpus={} pids={}{ttl}",
                    text(&r["id"]),
                    session::shorten(&text(&r["name"]), 16),
                    session::shorten(&text(&r["root"]), 24),
                    text(&r["state"]),
                    session::age_text(r["age_secs"].as_u64().unwrap_or(0)),
                    text(&r["network"]),
                    r["cpus"].as_f64().map_or("-".into(), |c| crate::units::CpuQuota(
                        (c * 1000.0).round() as u64
                    )
                    .to_string()),
                    text(&r["pids"]),
                );
            }
        }
    }
    0
}

/// `nsbox --host URL inspect ID...`: the server's view of each sandbox, as one JSON array.
fn inspect(client: &ServeClient, args: super::inspect::InspectArgs) -> i32 {
    if args.kind == Some(super::inspect::Kind::Image) {
        error(
            &refusal(&["--type image (the server's images are not listed through its API)".into()])
                .to_string(),
        );
        return exit::USAGE;
    }
    let mut found = Vec::new();
    let mut code = 0;
    for target in &args.targets {
        match client.get(target) {
            Ok(mut view) => {
                view["type"] = "session".into();
                found.push(view);
            }
            Err(e) => {
                error(&failure_of(e).to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&found).unwrap_or_else(|_| "[]".into())
    );
    code
}

/// `nsbox --host URL stop [-t D] ID...`.
fn stop(client: &ServeClient, args: StopArgs) -> i32 {
    let mut code = 0;
    for s in &args.sessions {
        match client.stop(s, args.grace.0) {
            Ok(view) => {
                let id = view["id"].as_str().unwrap_or(s);
                if view["was_running"].as_bool() == Some(false) {
                    println!("{id} (already stopped)");
                } else {
                    println!("{id}");
                }
            }
            Err(e) => {
                error(&failure_of(e).to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// `nsbox --host URL stats ID`: the server's numbers, printed as locally.
fn stats(client: &ServeClient, args: super::session::StatsArgs) -> i32 {
    let stats = client
        .stats(&args.session)
        .map_err(failure_of)
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| Failure::from(format!("the server's stats: {e}")))
        });
    match stats {
        Ok(stats) => super::session::print_stats(&stats, args.json),
        Err(failure) => {
            error(&failure.to_string());
            exit::NSBOX_FAILED
        }
    }
}

/// `nsbox --host URL commit ID NAME[:TAG]`: the server's image, printed as locally.
fn commit(client: &ServeClient, args: super::snapshot::CommitArgs) -> i32 {
    match client.commit(&args.session, &args.name) {
        Ok(done) if args.json => {
            println!("{done}");
            0
        }
        Ok(done) => {
            println!("{} {}", text(&done["image"]), text(&done["digest"]));
            eprintln!(
                "nsbox: committed {} entries in {:.2}s (the sandbox was frozen {:.2}s)",
                done["entries"],
                done["seconds"].as_f64().unwrap_or_default(),
                done["frozen_seconds"].as_f64().unwrap_or_default()
            );
            0
        }
        Err(e) => {
            error(&failure_of(e).to_string());
            exit::NSBOX_FAILED
        }
    }
}

/// `nsbox --host URL fork ID [-n N] [--name NAME]...`: the server's forks, one id a line (or
/// its JSON answer), with the network and secrets given here.
fn fork(client: &ServeClient, args: super::snapshot::ForkArgs) -> i32 {
    let request = fork_request(&args);
    let answer = request.and_then(|r| client.fork(&args.session, &r).map_err(failure_of));
    match answer {
        Ok(done) if args.json => {
            println!("{done}");
            0
        }
        Ok(done) => {
            let forks = done["sandboxes"].as_array().cloned().unwrap_or_default();
            for view in &forks {
                println!("{}", text(&view["id"]));
            }
            eprintln!(
                "nsbox: {} fork(s) of {} from its files; processes are not carried over — the forks start with no commands running",
                forks.len(),
                text(&done["parent"])
            );
            0
        }
        Err(failure) => {
            error(&failure.to_string());
            failure.exit_code()
        }
    }
}

/// A string of the server's answer as it is, anything else as JSON.
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The body of `POST .../fork` for `nsbox fork`'s flags.
fn fork_request(args: &super::snapshot::ForkArgs) -> Result<serde_json::Value, Failure> {
    let mut request = serde_json::json!({ "count": args.count, "names": args.name });
    if args.net.is_some() || !args.allow.is_empty() || !args.deny.is_empty() {
        let mode = match &args.net {
            Some(mode) => mode.clone(),
            None if !args.allow.is_empty() => "filtered".into(),
            None => "none".into(),
        };
        request["network"] =
            serde_json::json!({ "mode": mode, "allow": args.allow, "deny": args.deny });
    }
    if let Some(secrets) = secrets_json(&args.secrets, &args.secret_env)? {
        request["secrets"] = secrets;
    }
    Ok(request)
}

/// `--secret`/`--secret-env` values, read here, as the API's `secrets` object (none: `None`).
fn secrets_json(
    secrets: &[String],
    secret_env: &[String],
) -> Result<Option<serde_json::Value>, Failure> {
    let secrets = exec::session_secrets(secrets, secret_env)?;
    Ok((!secrets.is_empty()).then(|| {
        secrets
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }))
}

/// `nsbox --host URL pause|resume ID...`: each id, with a note when it already was so.
fn freeze(client: &ServeClient, args: super::snapshot::FreezeArgs, frozen: bool) -> i32 {
    let mut code = 0;
    for s in &args.sessions {
        match client.set_frozen(s, frozen) {
            Ok(changed) => super::snapshot::print_frozen(s, frozen, changed),
            Err(e) => {
                error(&failure_of(e).to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// `nsbox --host URL rm [-f] ID...`: a running sandbox only with -f, as locally.
fn rm(client: &ServeClient, args: RmArgs) -> i32 {
    let mut code = 0;
    for s in &args.sessions {
        let removed = client.get(s).map_err(failure_of).and_then(|view| {
            let id = view["id"].as_str().unwrap_or(s).to_string();
            if view["state"] == "running" && !args.force {
                return Err(Failure::from(format!("session {id} is running"))
                    .with_hint(format!("`nsbox stop {id}` first, or `nsbox rm -f`")));
            }
            client.delete(&id).map_err(failure_of).map(|()| id)
        });
        match removed {
            Ok(id) => println!("{id}"),
            Err(failure) => {
                error(&failure.to_string());
                code = exit::NSBOX_FAILED;
            }
        }
    }
    code
}

/// `nsbox --host URL cp`: tar streams through the server's files API, with the local
/// copy's naming (an existing directory receives the source under its own name).
fn cp(client: &ServeClient, args: CpArgs) -> i32 {
    let stdio = Path::new("-");
    let max_bytes = match args.max_size {
        Limit::Value(size) => Some(size.bytes()),
        Limit::Unlimited => None,
    };
    let over = |len: usize| {
        max_bytes
            .filter(|max| len as u64 > *max)
            .map(|max| format!("the copy is larger than --max-size ({})", ByteSize(max)))
    };
    let result: Result<(), String> = match (
        parse_endpoint(&args.source),
        parse_endpoint(&args.destination),
    ) {
        (Endpoint::Host(src), Endpoint::Session { session, path }) => {
            copy_in(client, &src, src == stdio, &session, &path)
        }
        (Endpoint::Session { session, path }, Endpoint::Host(dst)) => {
            let inside = path.display().to_string();
            match client.read_tar(&session, &inside) {
                Err(e) => Err(failure_of(e).to_string()),
                Ok(tar) => match over(tar.len()) {
                    Some(m) => Err(m),
                    None if dst == stdio => {
                        if rustix::termios::isatty(rustix::stdio::stdout()) {
                            Err("refusing to write a tar stream to a terminal — hint: redirect it (nsbox cp ID:/sandbox/out - > out.tar) or pipe it into tar -x".into())
                        } else {
                            let mut out = std::io::stdout().lock();
                            out.write_all(&tar)
                                .and_then(|()| out.flush())
                                .map_err(|e| format!("write to stdout: {e}"))
                        }
                    }
                    None => {
                        let name = path.file_name().map(OsStr::to_os_string).unwrap_or_default();
                        host_extract(&tar[..], &name, &dst)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
            }
        }
        _ => Err("exactly one of SRC and DST must be SESSION:PATH — e.g. nsbox cp ./repo mysession:/sandbox/repo".into()),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            error(&message);
            exit::NSBOX_FAILED
        }
    }
}

/// Copies a host path (or, with `stdin_tar`, the tar stream on stdin) to `path` in the
/// session.
fn copy_in(
    client: &ServeClient,
    src: &Path,
    stdin_tar: bool,
    session: &str,
    path: &Path,
) -> Result<(), String> {
    let inside = path.display().to_string();
    if stdin_tar {
        let mut tar = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut tar)
            .map_err(|e| format!("read stdin: {e}"))?;
        return client
            .write_tar(session, &inside, &tar)
            .map_err(|e| failure_of(e).to_string());
    }
    // Into an existing directory under the source's name, or as the named path.
    let is_dir = match client.stat(session, &inside) {
        Ok(st) => st["type"] == "directory",
        Err(ClientError::Api { status: 404, .. }) => false,
        Err(e) => return Err(failure_of(e).to_string()),
    };
    let (dir, name) = if is_dir {
        let name = src.file_name().ok_or_else(|| {
            format!(
                "{}: the source has no file name (use a path such as ./dir)",
                src.display()
            )
        })?;
        (inside, name.to_os_string())
    } else {
        let name = path
            .file_name()
            .ok_or_else(|| format!("{inside}: not a file name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
            _ => ".".to_string(),
        };
        (parent, name.to_os_string())
    };
    let mut tar = Vec::new();
    let report = host_tar(src, &name, &mut tar).map_err(|e| e.to_string())?;
    client
        .write_tar(session, &dir, &tar)
        .map_err(|e| failure_of(e).to_string())?;
    if report.skipped > 0 {
        error(&format!(
            "warning: {} device, fifo or socket entries were not copied",
            report.skipped
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox_args(line: &str) -> SandboxArgs {
        let argv: Vec<&str> = ["nsbox", "run"]
            .into_iter()
            .chain(line.split(' ').filter(|s| !s.is_empty()))
            .chain(["--", "true"])
            .collect();
        match super::super::parse_from(argv).unwrap().command {
            Command::Run(args) => args.sandbox,
            other => panic!("{other:?}"),
        }
    }

    /// Flags map onto the API's create request, values kept apart from flags.
    #[test]
    fn flags_become_a_create_request() {
        let r = create_request(&sandbox_args(
            "--image devbox:latest -m 512m --cpus 1.5 --pids 64 --allow api.github.com -e A=1 -l job=7 -w /sandbox/w --secret K=v",
        ))
        .unwrap();
        assert_eq!(r["image"], "devbox:latest");
        assert_eq!(r["limits"]["memory"], (512u64 << 20).to_string());
        assert_eq!(r["limits"]["cpus"], "1.5");
        assert_eq!(r["limits"]["pids"], 64);
        assert_eq!(r["network"]["mode"], "filtered");
        assert_eq!(r["network"]["allow"][0], "api.github.com");
        assert_eq!(r["env"]["A"], "1");
        assert_eq!(r["labels"]["job"], "7");
        assert_eq!(r["workdir"], "/sandbox/w");
        assert_eq!(r["secrets"]["K"], "v");
        assert!(create_request(&sandbox_args(""))
            .unwrap()
            .as_object()
            .unwrap()
            .is_empty());
    }

    /// Each host-only flag is refused by name, never dropped.
    #[test]
    fn host_only_flags_are_refused_by_name() {
        for (line, flag) in [
            ("-v /tmp:/data", "--mount/-v"),
            ("--copy ./x:x", "--copy"),
            ("--rootfs /srv/root", "--rootfs"),
            ("--profile ./mine.toml", "--profile FILE"),
            ("--writable-root", "--writable-root"),
            ("--tmpfs /scratch", "--tmpfs"),
            ("--user 1000", "--user"),
            ("--dns-upstream 192.0.2.1", "--dns-upstream"),
            ("--log-network", "--log-network"),
        ] {
            let failure = create_request(&sandbox_args(line)).unwrap_err();
            assert_eq!(failure.exit_code(), exit::USAGE, "{line}");
            assert!(
                failure.message.contains(flag),
                "{line}: {}",
                failure.message
            );
        }
        assert!(create_request(&sandbox_args("--profile strict")).is_ok());
    }

    #[test]
    fn server_errors_keep_message_hint_and_code() {
        let api = |status, code: &str, exit_code| ClientError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            hint: Some("h".into()),
            exit_code,
        };
        let f = failure_of(api(422, "create_failed", Some(exit::IMAGE_NOT_FOUND)));
        assert_eq!((f.exit_code(), f.hint.as_deref()), (123, Some("h")));
        assert!(f.message.contains("create_failed") && f.message.ends_with(": m"));
        assert_eq!(
            failure_of(api(400, "invalid", None)).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            failure_of(api(401, "unauthorized", None)).exit_code(),
            exit::USAGE
        );
        assert!(failure_of(api(401, "unauthorized", None))
            .hint
            .unwrap()
            .contains(KEY_ENV));
        assert_eq!(
            failure_of(api(429, "key_limit", None)).exit_code(),
            exit::NSBOX_FAILED
        );
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(
            command_name(
                &super::super::parse_from(["nsbox", "images"])
                    .unwrap()
                    .command
            ),
            "images"
        );
    }
}
