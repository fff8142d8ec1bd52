//! `nsbox exec`: flags → profile → validated spec → sandbox run → messages and exit status.

use std::collections::BTreeMap;
use std::io::Write;

use super::{error, ExecArgs};
use crate::exit;
use crate::profile::Profile;
use crate::relay::{Event, Masker};
use crate::sandbox::{self, Outcome, SandboxError};
use crate::spec::{ExecRequest, SandboxSpec};

pub fn run(args: ExecArgs, t0: u64) -> i32 {
    let json = args.json;
    // Until the spec exists, secrets are known only from the raw flags: mask them anyway.
    let early_masker = Masker::new(
        &args
            .secrets
            .iter()
            .filter_map(|s| s.split_once('=').map(|(_, v)| v.to_string()))
            .collect::<Vec<_>>(),
    );
    let spec = match build_spec(args) {
        Ok(spec) => spec,
        Err(message) => return fail(json, "setup", &early_masker.mask_str(&message), t0),
    };
    let masker = Masker::new(&spec.secrets);
    if json {
        let start = Event::Start {
            id: &spec.id,
            profile: &spec.profile_name,
            network: spec.network.as_str(),
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&start.to_line());
        let _ = out.flush();
    }
    tracing::info!(id = %spec.id, profile = %spec.profile_name, "starting sandbox");
    match sandbox::run(&spec, t0) {
        Ok(outcome) => finish(&spec, &outcome, &masker),
        Err(e) => {
            let message = masker.mask_str(&describe(&e));
            fail(json, e.phase(), &message, t0)
        }
    }
}

fn build_spec(args: ExecArgs) -> Result<SandboxSpec, String> {
    let profile = Profile::load(&args.profile).map_err(|e| e.to_string())?;
    let request = ExecRequest {
        command: args.command,
        rootfs: args.rootfs,
        network: args.net,
        allow: args.allow,
        deny: args.deny,
        dns_upstream: args.dns_upstream,
        log_network: args.log_network,
        hostname: args.hostname,
        user: args.user,
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
        timeout: args.timeout,
        max_output: args.max_output,
        env: args.env,
        env_files: args.env_files,
        secrets: args.secrets,
        secret_env: args.secret_env,
        interactive: args.interactive,
        tty: args.tty,
        json: args.json,
        timings: args.timings,
    };
    let host_env: BTreeMap<String, String> = std::env::vars().collect();
    SandboxSpec::build(request, &profile, &host_env).map_err(|e| e.to_string())
}

fn describe(e: &SandboxError) -> String {
    match e {
        SandboxError::Setup { step, message } if message.contains("Operation not permitted") => {
            format!(
                "{e} — hint: run as root; `nsbox doctor` shows what this host is missing ({step})"
            )
        }
        _ => e.to_string(),
    }
}

/// Reports an nsbox failure (exit code 125).
fn fail(json: bool, phase: &str, message: &str, t0: u64) -> i32 {
    let code = exit::NSBOX_FAILED;
    if json {
        let events = [
            Event::Error {
                phase,
                message: message.to_string(),
                code,
            },
            Event::Exit {
                code,
                signal: None,
                oom: false,
                timeout: false,
                truncated: false,
                duration_ms: elapsed_ms(t0),
            },
        ];
        let mut out = std::io::stdout().lock();
        for event in events {
            let _ = out.write_all(&event.to_line());
        }
        let _ = out.flush();
    } else {
        error(message);
    }
    code
}

fn elapsed_ms(t0: u64) -> f64 {
    sandbox::supervisor::now_ns().saturating_sub(t0) as f64 / 1e6
}

fn finish(spec: &SandboxSpec, outcome: &Outcome, masker: &Masker) -> i32 {
    let code = outcome.exit_code();
    let message = outcome.message().map(|m| masker.mask_str(&m));
    if spec.io.json {
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
                    phase: "setup",
                    message: message.clone(),
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
        };
        let _ = out.write_all(&exit.to_line());
        let _ = out.flush();
    } else {
        for warning in &outcome.warnings {
            error(&format!("warning: {}", masker.mask_str(warning)));
        }
        if let Some(message) = message {
            error(&message);
        }
    }
    if spec.timings {
        print_timings(outcome);
    }
    code
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
