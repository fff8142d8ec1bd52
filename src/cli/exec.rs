//! `nsbox exec`: flags → profile → validated spec → sandbox run → messages and exit status.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{error, RunArgs, SandboxArgs};
use crate::profile::Profile;
use crate::relay::result::{text_or_base64, ResultDoc, ResultError};
use crate::relay::{Event, Masker, Usage};
use crate::report::{Failure, Phase};
use crate::sandbox::{self, Outcome};
use crate::session::client::{SessionClient, SessionExec};
use crate::session::state::SessionStore;
use crate::spec::{ExecRequest, SandboxSpec};
use crate::units::ByteSize;
use crate::units::{Limit, Timeout};

pub fn run(
    args: RunArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
    t0: u64,
) -> i32 {
    let json = result_mode(&args);
    // Until the spec exists, secrets are known only from the raw flags: mask them anyway.
    let early_masker = raw_secret_masker(&args.sandbox);
    let labels: BTreeMap<String, String> = args.sandbox.labels.iter().cloned().collect();
    let outs = match parse_outs(&args.outs) {
        Ok(outs) => outs,
        Err(failure) => return fail(json, &failure, t0),
    };
    // The image's layers stay locked (shared) for as long as this process supervises the
    // sandbox, so `nsbox image prune` and `rmi` never delete them under it.
    let image = match open_image(&args.sandbox, state_root, config) {
        Ok(image) => image,
        Err(failure) => return fail(json, &failure, t0),
    };
    let command = ExecExtras {
        command: args.command,
        entrypoint: args.entrypoint,
        timeout: args.timeout,
        max_output: args.max_output,
        interactive: args.interactive,
        tty: args.tty,
        json,
        timings: args.timings,
    };
    let mut spec = match build_spec(
        args.sandbox,
        command,
        image.as_ref().map(|i| i.spec()),
        config,
    ) {
        Ok(spec) => spec,
        Err(failure) => return fail(json, &failure.map_text(|t| early_masker.mask_str(t)), t0),
    };
    // The sandbox's own host id range, held until it ends (crate::idrange).
    let _ids = match crate::idrange::assign(&mut spec) {
        Ok(range) => range,
        Err(e) => return fail(json, &Failure::of(&e), t0),
    };
    spec.io.result = args.result_json;
    spec.keep_filesystem = !outs.is_empty();
    spec.labels = labels.clone();
    let masker = Masker::new(&spec.secrets);
    if json {
        start_event(&spec.id, &spec.profile_name, spec.network.as_str(), &labels);
    }
    tracing::info!(id = %spec.id, profile = %spec.profile_name, "starting sandbox");
    match sandbox::run(&spec, t0) {
        Ok(mut outcome) => {
            copy_outs(&mut outcome, &outs, &spec.workdir);
            finish(spec.io.json, spec.timings, &outcome, &masker)
        }
        Err(e) => fail(json, &Failure::of(&e).map_text(|t| masker.mask_str(t)), t0),
    }
}

/// `--out PATH:HOSTDIR` flags, checked before anything runs.
fn parse_outs(outs: &[String]) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    outs.iter()
        .map(|text| match text.split_once(':') {
            Some((inside, host)) if !inside.is_empty() && !host.is_empty() => {
                let inside = PathBuf::from(inside);
                crate::session::copy::inside_path(&inside, Path::new("/"))
                    .map_err(|e| Failure::usage(format!("--out {text}: {e}")))?;
                Ok((inside, PathBuf::from(host)))
            }
            _ => Err(Failure::usage(format!(
                "--out {text}: expected PATH:HOSTDIR (a path inside the sandbox, a host directory)"
            ))
            .with_hint("e.g. --out /sandbox/dist:./artifacts")),
        })
        .collect()
}

/// Copies each `--out` from the sandbox's filesystem (kept past its end) to the host, with
/// `nsbox cp`'s rules (no link followed on either side, holes and hard links kept, 8g of data
/// at most per copy), then lets the filesystem go. A failed copy is a warning: a command that
/// failed may not have made what it was to leave behind; the exit status stays the command's.
fn copy_outs(outcome: &mut Outcome, outs: &[(PathBuf, PathBuf)], workdir: &Path) {
    let Some(kept) = outcome.kept.take() else {
        if !outs.is_empty() && outcome.warnings.iter().all(|w| !w.contains("--out")) {
            outcome
                .warnings
                .push("--out: nothing copied (the sandbox ended before its command did)".into());
        }
        return;
    };
    for (inside, host) in outs {
        let result = ensure_host_dir(host).and_then(|()| {
            crate::session::copy::copy_out_of_root(
                kept.root.as_fd(),
                workdir,
                inside,
                host,
                Some(OUT_MAX_BYTES),
            )
            .map_err(|e| e.to_string())
        });
        match result {
            Ok(report) if report.skipped > 0 => outcome.warnings.push(format!(
                "--out {}: {} device, fifo or socket entries were not copied",
                inside.display(),
                report.skipped
            )),
            Ok(_) => {}
            Err(e) => outcome.warnings.push(format!(
                "--out {}:{}: {e}",
                inside.display(),
                host.display()
            )),
        }
    }
}

/// The bound of one `--out` copy's file data (as `nsbox cp`'s default `--max-size`).
const OUT_MAX_BYTES: u64 = 8 << 30;

/// Creates the host directory of an `--out` when missing. The existing part is checked for
/// links first (crate::host::path), so the directories created cannot land behind one.
fn ensure_host_dir(dir: &Path) -> Result<(), String> {
    use crate::host::path::{open_no_follow, Access, HostPathError};
    match open_no_follow(dir, Access::Path) {
        Ok((_, st)) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => Ok(()),
        Ok(_) => Err(format!("{}: not a directory", dir.display())),
        Err(HostPathError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
        }
        Err(e) => Err(format!("{}: {}", dir.display(), e.reason())),
    }
}

/// Masks the values of `--secret` flags in messages printed before the spec exists.
pub(super) fn raw_secret_masker(sandbox: &SandboxArgs) -> Masker {
    Masker::new(
        &sandbox
            .secrets
            .iter()
            .filter_map(|s| s.split_once('=').map(|(_, v)| v.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// `--result-json`: remembered for the whole process, since every way out of `exec` (the
/// failures before a spec exists too) must end in the one document instead of events.
static RESULT_DOCUMENT: AtomicBool = AtomicBool::new(false);

/// Notes `--result-json` and returns whether JSON (events or the document) is wanted.
pub(super) fn result_mode(args: &RunArgs) -> bool {
    RESULT_DOCUMENT.store(args.result_json, Ordering::Relaxed);
    args.json || args.result_json
}

pub(super) fn result_document() -> bool {
    RESULT_DOCUMENT.load(Ordering::Relaxed)
}

fn write_stdout(line: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line);
    let _ = out.flush();
}

pub(super) fn start_event(
    id: &str,
    profile: &str,
    network: &str,
    labels: &BTreeMap<String, String>,
) {
    if result_document() {
        return;
    }
    let start = Event::Start {
        id,
        profile,
        network,
        labels: (!labels.is_empty()).then_some(labels),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&start.to_line());
    let _ = out.flush();
}

/// The flags of an exec that are not about the sandbox itself.
pub(super) struct ExecExtras {
    pub command: Vec<std::ffi::OsString>,
    pub entrypoint: Option<String>,
    pub timeout: Option<Limit<Timeout>>,
    pub max_output: Option<Limit<ByteSize>>,
    pub interactive: bool,
    pub tty: bool,
    pub json: bool,
    pub timings: bool,
}

/// Resolves and locks `--image`, pulling it first as `--pull` (or the
/// config) says; the lock lasts as long as the result.
pub(super) fn open_image(
    sandbox: &SandboxArgs,
    state_root: &std::path::Path,
    config: &crate::config::Config,
) -> Result<Option<crate::image::ImageRoot>, Failure> {
    match sandbox.image.as_deref() {
        Some(reference) => {
            let policy = sandbox.pull.unwrap_or(config.pull.policy);
            super::pull::ensure_image(reference, policy, state_root, config)
                .map_err(|e| Failure::of(&e))?;
            crate::image::open_root(state_root, reference)
                .map(Some)
                .map_err(|e| {
                    let failure = Failure::of(&e);
                    match (&e, policy) {
                        (
                            crate::image::ImageError::NotFound { .. },
                            crate::registry::pull::PullPolicy::Never,
                        ) => {
                            let pull = format!(
                                "`nsbox pull {reference}` fetches it (with --pull never, or the config's pull.policy = \"never\", nothing is pulled)"
                            );
                            let hint = match &failure.hint {
                                Some(other) => format!("{pull}; {other}"),
                                None => pull,
                            };
                            failure.with_hint(hint)
                        }
                        _ => failure,
                    }
                })
        }
        None => Ok(None),
    }
}

pub(super) fn build_spec(
    args: SandboxArgs,
    extra: ExecExtras,
    image: Option<crate::spec::ImageSpec>,
    config: &crate::config::Config,
) -> Result<SandboxSpec, Failure> {
    if let Some(message) = verbose_after_command(&args) {
        return Err(usage(message));
    }
    let profile = Profile::load_layered(
        args.profile.as_deref().unwrap_or("default"),
        &config.defaults,
    )
    .map_err(|e| config_or_profile_error(e, config))?;
    let user = match &args.user {
        Some(text) => Some(super::user::resolve(
            text,
            args.rootfs.as_deref(),
            image.as_ref(),
        )?),
        None => None,
    };
    let explicit_sandbox_size = args.sandbox_size;
    let tmpfs = args.tmpfs.clone();
    let request = ExecRequest {
        command: extra.command,
        rootfs: args.rootfs,
        image,
        entrypoint: extra.entrypoint,
        network: args.net,
        net_namespace: None,
        ipc_namespace: None,
        uts_namespace: None,
        pod_egress: false,
        allow: args.allow,
        deny: args.deny,
        dns_upstream: args.dns_upstream,
        log_network: args.log_network,
        hostname: args.hostname,
        user,
        workdir: args.workdir,
        writable_root: args.writable_root,
        sandbox_size: args.sandbox_size,
        tmp_size: args.tmp_size,
        root_size: args.root_size,
        mounts: args.mounts,
        copies: args.copies,
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        timeout: extra.timeout,
        max_output: extra.max_output,
        env: args.env,
        env_files: args.env_files,
        secrets: args.secrets,
        secret_env: args.secret_env,
        credentials: args.credentials,
        interactive: extra.interactive,
        tty: extra.tty,
        json: extra.json,
        timings: extra.timings,
    };
    let host_env: BTreeMap<String, String> = std::env::vars().collect();
    let mut spec = SandboxSpec::build(request, &profile, &host_env).map_err(|e| Failure::of(&e))?;
    spec.tmpfs = tmpfs_mounts(&tmpfs, &spec).map_err(usage)?;
    if let (Some(size), Some(memory)) = (explicit_sandbox_size, spec.limits.memory) {
        if size.bytes() > memory.bytes() {
            return Err(usage(format!(
                "--sandbox-size {size} is larger than the memory limit {memory}: /sandbox is a tmpfs whose contents count against the sandbox's memory, so the command would be killed for out of memory before it filled it — hint: raise --memory (-m) or lower --sandbox-size"
            )));
        }
    }
    Ok(spec)
}

/// `--tmpfs PATH[:SIZE]` (also Docker's `PATH:size=SIZE`), checked against the spec: an
/// absolute path, not /, not where the sandbox mounts its own filesystems, and not inside a
/// bind mount (which would cover it).
fn tmpfs_mounts(
    entries: &[String],
    spec: &SandboxSpec,
) -> Result<Vec<crate::spec::TmpfsMount>, String> {
    use std::path::{Component, Path, PathBuf};
    let mut out: Vec<crate::spec::TmpfsMount> = Vec::new();
    for entry in entries {
        let err = |reason: &str| format!("--tmpfs '{entry}': {reason}");
        let (path, size) = match entry.split_once(':') {
            Some((path, size)) => {
                let text = size.strip_prefix("size=").unwrap_or(size);
                let size: ByteSize = text
                    .parse()
                    .map_err(|e| err(&format!("{e} (the only option is a size: PATH:64m)")))?;
                (path, size)
            }
            None => (entry.as_str(), spec.sizes.tmp),
        };
        let mut target = PathBuf::from("/");
        if !path.starts_with('/') {
            return Err(err("the path must be absolute"));
        }
        for c in Path::new(path).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => target.push(part),
                _ => return Err(err("the path must not contain '..'")),
            }
        }
        if target == Path::new("/") {
            return Err(err("the path cannot be / (use --writable-root)"));
        }
        for own in ["/proc", "/dev", "/sys"] {
            if target.starts_with(own) {
                return Err(err(&format!(
                    "{own} is the sandbox's own; nothing can be mounted inside it"
                )));
            }
        }
        for (own, flag) in [("/tmp", "--tmp-size"), ("/sandbox", "--sandbox-size")] {
            if target == Path::new(own) {
                return Err(err(&format!(
                    "{own} is a tmpfs already — hint: size it with {flag}"
                )));
            }
        }
        if let Some(bind) = spec.mounts.iter().find(|m| target.starts_with(&m.target)) {
            return Err(err(&format!(
                "it is inside the bind mount at {}, which would cover it",
                bind.target.display()
            )));
        }
        if out.iter().any(|t| t.target == target) {
            return Err(err("given twice"));
        }
        if let Some(memory) = spec.limits.memory {
            if size.bytes() > memory.bytes() {
                return Err(err(&format!(
                    "its size {size} is larger than the memory limit {memory}, which its contents count against — hint: a smaller PATH:SIZE, or raise --memory"
                )));
            }
        }
        out.push(crate::spec::TmpfsMount { target, size });
    }
    Ok(out)
}

/// A usage error the command line finds itself, its text split at " — hint: " like every
/// nsbox error's.
pub(super) fn usage(text: String) -> Failure {
    match text.split_once(" — hint: ") {
        Some((message, hint)) => Failure::usage(message).with_hint(hint),
        None => Failure::usage(text),
    }
}

/// `nsbox run -vv ...`: after the command `-v` is --volume, so `-vv` is a mount of "v".
pub(super) fn verbose_after_command(args: &SandboxArgs) -> Option<String> {
    args.mounts
        .iter()
        .find(|m| !m.is_empty() && m.chars().all(|c| c == 'v'))
        .map(|m| {
            format!(
                "-v{m} is a mount of '{m}': after the command, -v is --volume (as in Docker) — hint: give nsbox's own -v/-vv before the command (nsbox -v{m} run ...) or write --verbose"
            )
        })
}

/// A profile error about a value the config file's `[defaults]` set is the config's error:
/// it names the file and the key as written there.
fn config_or_profile_error(
    e: crate::profile::ProfileError,
    config: &crate::config::Config,
) -> Failure {
    use crate::profile::ProfileError;
    let from_config = |origin: &str| config.defaults.iter().any(|l| l.origin == origin);
    match &e {
        ProfileError::Unit {
            origin,
            key,
            source,
        } if from_config(origin) => {
            Failure::usage(format!("config {origin}: defaults.{key}: {source}"))
        }
        ProfileError::Value {
            origin,
            key,
            message,
        } if from_config(origin) => {
            Failure::usage(format!("config {origin}: defaults.{key}: {message}"))
        }
        _ => Failure::of(&e),
    }
}

/// `nsbox exec --session ID -- CMD`: the session was made with its own flags and
/// configuration, so nothing of the config file is read here. `--secret` and `--secret-env`
/// add variables for this one command, masked in its output like the session's own.
pub fn run_in_session(args: RunArgs, session: &str, t0: u64) -> i32 {
    let json = result_mode(&args);
    if let Some(message) = verbose_after_command(&args.sandbox) {
        return fail(json, &usage(message), t0);
    }
    let mut used = args.sandbox.defining_flags();
    // `-u` runs this one command as another user of the sandbox (`docker exec -u`), never
    // with capabilities: numbers, or the accounts nsbox writes itself (root, sandbox,
    // nobody); an image's own names are looked up at create only.
    let user = match args.sandbox.user.as_deref() {
        None => None,
        Some(text) => match super::user::resolve(text, None, None) {
            Ok(ids) => Some(ids),
            Err(failure) => {
                return fail(
                    json,
                    &failure
                        .with_hint("with --session, -u takes UID[:GID] or root, sandbox, nobody"),
                    t0,
                )
            }
        },
    };
    if user.is_some() {
        used.retain(|f| *f != "--user");
    }
    if args.entrypoint.is_some() {
        used.push("--entrypoint");
    }
    if !args.outs.is_empty() {
        used.push("--out (use `nsbox cp` with a session)");
    }
    if !used.is_empty() {
        return fail(
            json,
            &Failure::usage(format!(
                "{} do not apply with --session (the session was created with its own)",
                used.join(", ")
            ))
            .with_hint(
                "with --session use -e, -w, -i, -t, -u, --json, --result-json, --timeout, --max-output, --secret, --secret-env",
            ),
            t0,
        );
    }
    if args.command.is_empty() {
        return fail(
            json,
            &Failure::usage("no command given")
                .with_hint("usage: nsbox exec --session ID [OPTIONS] -- CMD [ARGS...]"),
            t0,
        );
    }
    let early_masker = raw_secret_masker(&args.sandbox);
    let mut env = match session_env(&args.sandbox.env, args.tty) {
        Ok(env) => env,
        Err(failure) => return fail(json, &failure.map_text(|t| early_masker.mask_str(t)), t0),
    };
    let secrets = match session_secrets(&args.sandbox.secrets, &args.sandbox.secret_env) {
        Ok(secrets) => secrets,
        Err(failure) => return fail(json, &failure.map_text(|t| early_masker.mask_str(t)), t0),
    };
    let secret_values: Vec<String> = secrets.iter().map(|(_, v)| v.clone()).collect();
    let masker = Masker::new(&secret_values);
    env.extend(secrets);
    let store = SessionStore::system();
    let client = match SessionClient::connect(&store, session) {
        Ok(c) => c,
        Err(e) => return fail(json, &Failure::of(&e), t0),
    };
    // The start event waits for the command to run, so that it carries the exec id.
    let exec = SessionExec {
        argv: args.command,
        env,
        replace_env: false,
        workdir: args.sandbox.workdir,
        stdin: args.interactive,
        tty: args.tty,
        winsize: None,
        json,
        timeout: args.timeout.and_then(Limit::into_option).map(|t| t.0),
        max_output: args.max_output.map(Limit::into_option),
        phase: None,
        output_to_stderr: false,
        result: args.result_json,
        start_event: true,
        labels: Some(super::session::read_labels(&store, &client.record.id))
            .filter(|l| !l.is_empty()),
        secrets: secret_values,
        user,
    };
    match client.exec(exec, t0) {
        Ok(outcome) => finish(json, args.timings, &outcome, &masker),
        Err(e) => fail(json, &Failure::of(&e).map_text(|t| masker.mask_str(t)), t0),
    }
}

/// `--secret NAME=VALUE` and `--secret-env NAME` of a session exec, checked as for a new
/// sandbox (a value comes from nsbox's environment with --secret-env; an empty value is refused,
/// there would be nothing to mask).
pub(super) fn session_secrets(
    secrets: &[String],
    secret_env: &[String],
) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    let check = |flag: &str, name: &str, value: Option<&str>| -> Result<(), Failure> {
        if flag == "--secret-env" && name.contains('=') {
            // Never the part after '=': it may be the secret itself.
            return Err(Failure::usage(format!(
                "--secret-env '{}': takes the NAME of a variable set in nsbox's environment, not NAME=VALUE",
                name.split('=').next().unwrap_or_default()
            )));
        }
        if !crate::profile::valid_env_name(name) {
            return Err(Failure::usage(format!(
                "{flag} '{name}': not a valid variable name (letters, digits and '_')"
            )));
        }
        match value {
            Some(v) if !v.is_empty() => Ok(()),
            Some(_) => Err(Failure::usage(format!(
                "{flag} '{name}': the value is empty; there is nothing to mask"
            ))),
            None => Err(Failure::usage(format!(
                "{flag} '{name}': {name} is not set (or empty) in nsbox's environment"
            ))),
        }
    };
    for entry in secrets {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(Failure::usage("--secret: expected NAME=VALUE"));
        };
        check("--secret", name, Some(value))?;
        out.push((name.to_string(), value.to_string()));
    }
    for name in secret_env {
        let value = std::env::var(name).ok().filter(|v| !v.is_empty());
        check("--secret-env", name, value.as_deref())?;
        out.push((name.clone(), value.unwrap_or_default()));
    }
    Ok(out)
}

/// `-e` flags of a session exec, parsed as for a new sandbox: NAME=VALUE, or NAME copied from
/// nsbox's environment; TERM added with a terminal.
pub(super) fn session_env(entries: &[String], tty: bool) -> Result<Vec<(String, String)>, Failure> {
    let host_env: BTreeMap<String, String> = std::env::vars().collect();
    let mut env = Vec::new();
    if tty {
        env.push(("TERM".to_string(), crate::spec::tty_term(&host_env)));
    }
    for entry in entries {
        if let Some(kv) =
            crate::spec::parse_env_entry("--env", entry, &host_env).map_err(|e| Failure::of(&e))?
        {
            env.push(kv);
        }
    }
    Ok(env)
}

/// Reports an nsbox failure: its message and hint on stderr, or an `error` event and an
/// `exit` event with `--json`. Returns the failure's exit code.
pub(super) fn fail(json: bool, failure: &Failure, t0: u64) -> i32 {
    let code = failure.exit_code();
    if result_document() {
        let error = ResultError {
            phase: failure.phase.as_str().to_string(),
            message: failure.message.clone(),
            hint: failure.hint.clone(),
        };
        write_stdout(&ResultDoc::failed(code, error, elapsed_ms(t0)).to_line());
    } else if json {
        let events = [
            Event::Error {
                phase: failure.phase.as_str(),
                message: failure.message.clone(),
                hint: failure.hint.clone(),
                code,
            },
            Event::Exit {
                code,
                signal: None,
                oom: false,
                timeout: false,
                truncated: false,
                duration_ms: elapsed_ms(t0),
                usage: Usage::default(),
            },
        ];
        let mut out = std::io::stdout().lock();
        for event in events {
            let _ = out.write_all(&event.to_line());
        }
        let _ = out.flush();
    } else {
        error(&failure.to_string());
    }
    code
}

fn elapsed_ms(t0: u64) -> f64 {
    sandbox::supervisor::now_ns().saturating_sub(t0) as f64 / 1e6
}

pub(super) fn finish(json: bool, timings: bool, outcome: &Outcome, masker: &Masker) -> i32 {
    let code = outcome.exit_code();
    let message = outcome.message().map(|m| masker.mask_str(&m));
    if result_document() {
        write_stdout(&result_doc(outcome, message, masker).to_line());
    } else if json {
        let mut out = std::io::stdout().lock();
        for warning in &outcome.warnings {
            let _ = out.write_all(
                &Event::Warning {
                    phase: "run",
                    message: masker.mask_str(warning),
                }
                .to_line(),
            );
        }
        if let (Some(message), sandbox::Ending::ExecFailed { .. }) = (&message, &outcome.ending) {
            let _ = out.write_all(
                &Event::Error {
                    phase: Phase::Setup.as_str(),
                    message: message.clone(),
                    hint: None,
                    code,
                }
                .to_line(),
            );
        }
        let exit = Event::Exit {
            code,
            signal: outcome.signal_name(),
            oom: outcome.oom,
            timeout: matches!(outcome.ending, sandbox::Ending::TimedOut(_)),
            truncated: outcome.truncated,
            duration_ms: outcome.duration.as_secs_f64() * 1e3,
            usage: outcome.usage,
        };
        let _ = out.write_all(&exit.to_line_for(outcome.exec_id));
        let _ = out.flush();
    } else {
        for warning in &outcome.warnings {
            error(&format!("warning: {}", masker.mask_str(warning)));
        }
        if let Some(message) = message {
            error(&message);
        }
    }
    if timings {
        print_timings(outcome);
    }
    code
}

/// The `--result-json` document of a command that ran (or failed to start).
fn result_doc(outcome: &Outcome, message: Option<String>, masker: &Masker) -> ResultDoc {
    let capture = outcome.capture.clone();
    let (stdout, stdout_b64) = text_or_base64(capture.stdout);
    let (stderr, stderr_b64) = text_or_base64(capture.stderr);
    let error = match (&message, &outcome.ending) {
        (Some(message), sandbox::Ending::ExecFailed { .. }) => Some(ResultError {
            phase: Phase::Setup.as_str().to_string(),
            message: message.clone(),
            hint: None,
        }),
        _ => None,
    };
    let mut warnings: Vec<String> = outcome
        .warnings
        .iter()
        .map(|w| masker.mask_str(w))
        .collect();
    // The human message of an ending (a timeout, an OOM kill) is a warning in the document.
    if let (Some(message), None) = (message, &error) {
        warnings.push(message);
    }
    ResultDoc {
        id: Some(outcome.id.clone()),
        exec_id: outcome.exec_id,
        code: outcome.exit_code(),
        signal: outcome.signal_name(),
        oom: outcome.oom,
        timeout: matches!(outcome.ending, sandbox::Ending::TimedOut(_)),
        stdout,
        stdout_b64,
        stderr,
        stderr_b64,
        truncated: outcome.truncated,
        duration_ms: outcome.duration.as_secs_f64() * 1e3,
        usage: outcome.usage,
        error,
        warnings,
        network: capture.network,
        ts: crate::relay::events::rfc3339_now(),
    }
}

fn print_timings(outcome: &Outcome) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "nsbox: timings for sandbox {} (ms since nsbox started)",
        outcome.id
    );
    let mut previous = 0u64;
    for (label, at) in &outcome.marks {
        let _ = writeln!(
            err,
            "  {:>8.3}  +{:>7.3}  {label}",
            *at as f64 / 1e6,
            at.saturating_sub(previous) as f64 / 1e6
        );
        previous = *at;
    }
    let _ = writeln!(
        err,
        "  {:>8.3}            total",
        outcome.duration.as_secs_f64() * 1e3
    );
}
