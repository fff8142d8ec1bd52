//! nsbox as an OCI runtime: runc's command line (`create`, `start`, `state`, `kill`, `delete`,
//! `features`), so containerd's runc shim and podman can run nsbox sandboxes. The same binary
//! answers as `nsbox-runc` (argv[0]) or as `nsbox runtime ...`.
//!
//! A container is a session ([`crate::session`]): `create` maps the bundle's `config.json` onto
//! a [`crate::spec::SandboxSpec`] ([`bundle`]), starts the session's supervisor (the one that
//! owns the sandbox's [`crate::sandbox::Handle`]), and forks the container's **waiter** — the
//! process whose pid `create` writes to the pid file. The waiter keeps `create`'s standard
//! streams, blocks on the container's start FIFO, and on `start` runs the process in the session
//! as a session client, exits with its status and stops the session. The engine's shim is a
//! subreaper, so once `create` exits the waiter becomes its child and the shim sees the
//! container's exit status as the waiter's ([`container`]). With `process.terminal` (or `exec
//! --tty`), the process's pty, made in the sandbox, has its master sent to the engine's
//! `--console-socket` ([`console`]). docs/runtime.md has the details.

// Stricter than the crate: no silently truncating or sign-losing `as` casts here.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::error_impl_error
)]

pub mod bundle;
pub mod console;
pub mod container;
pub mod rlimit;
pub mod sysctl;
pub mod update;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::session::SessionError;
use crate::spec::SpecError;

/// The state directory when `--root` is not given (runc's is /run/runc).
pub const DEFAULT_ROOT: &str = "/run/nsbox-runc";

/// Why a runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("config.json: {field}: {reason}")]
    Refused { field: String, reason: String },
    #[error("--process file: {field}: {reason}")]
    ProcessRefused { field: String, reason: String },
    #[error("{}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: &'static str,
        what: &'static str,
    },
    #[error("'{0}': not a container id (use letters, digits, '_', '-', '.', at most 128)")]
    BadId(String),
    #[error("unknown signal '{0}'")]
    BadSignal(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("--console-socket {}: cannot connect: {source} — hint: give the path of a listening unix socket (the engine's, which receives the terminal's pty master)", path.display())]
    ConsoleSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `process.terminal`, `--tty` and `--console-socket` do not fit together (runc's rules).
    #[error("{0}")]
    TerminalFlags(String),
    #[error("{0}")]
    Sysctl(String),
    #[error("the process's terminal was not set up: {0}")]
    Terminal(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("{0}")]
    Profile(String),
    #[error("{0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// `update --resources`: the JSON, or a field nsbox cannot apply.
    #[error("--resources: {0}")]
    Resources(String),
}

impl RuntimeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }
}

/// runc's global flags and commands.
#[derive(Debug, Parser)]
#[command(
    name = "nsbox-runc",
    version,
    about = "nsbox as an OCI runtime (runc's command line)",
    after_help = "Called by container engines (containerd's runc shim with BinaryName, podman --runtime, \
                  dockerd --add-runtime) as nsbox-runc or `nsbox runtime`. nsbox's floor holds whatever \
                  config.json asks: a user namespace, no capabilities, its seccomp filter; what it \
                  refuses is named by field.\n\n\
                  Annotations: io.nsbox.net.allow / io.nsbox.net.deny / io.nsbox.net.dns-upstream give \
                  the container's (or its pod's) network namespace nsbox's filtered egress \
                  (containerd: pod_annotations = [\"io.nsbox.net.*\"]).\n\n\
                  Every command and field: docs/runtime.md"
)]
pub struct RuntimeCli {
    /// Where container state is kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Append errors (and warnings) to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The format of --log lines: JSON lines with "level", "msg" and "time", or text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// runc's systemd cgroup manager: nsbox manages cgroupfs itself, so a `linux.cgroupsPath`
    /// in systemd's `slice:prefix:name` form is refused; without one this is ignored.
    #[arg(long)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility and ignored.
    #[arg(long)]
    debug: bool,
    #[command(subcommand)]
    command: RuntimeCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Create a container: its sandbox is built and waits for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start(IdArg),
    /// Print a container's state (runtime-spec JSON).
    State(IdArg),
    /// Send a signal to a container's process (default SIGTERM).
    Kill(KillArgs),
    /// Remove a container (--force: kill it first).
    Delete(DeleteArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the container's processes (host pids).
    Ps(PsArgs),
    /// Freeze every process of a container.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Change a running container's cgroup limits (memory, pids, cpu).
    Update(UpdateArgs),
    /// Print what this runtime supports (JSON).
    Features,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// The process to run (the runtime spec's `process` object, as JSON).
    #[arg(short, long, value_name = "FILE")]
    process: PathBuf,
    /// Return at once; the process's pid (for the engine to wait on) goes to --pid-file.
    #[arg(short, long)]
    detach: bool,
    /// Write the process's pid here.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// With a terminal and --detach: the unix socket that receives its pty master.
    #[arg(long, value_name = "SOCKET")]
    console_socket: Option<PathBuf>,
    /// Give the process a terminal (as process.terminal does).
    #[arg(short, long)]
    tty: bool,
    id: String,
}

#[derive(Debug, Args)]
struct PsArgs {
    /// `table` (one pid a line under a PID header) or `json` (an array of pids).
    #[arg(short, long, default_value = "table")]
    format: String,
    id: String,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The new resources (runtime-spec `linux.resources` JSON), `-` for stdin.
    #[arg(short, long, value_name = "FILE")]
    resources: Option<PathBuf>,
    id: String,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    bundle: PathBuf,
    /// Write the container process's pid here before returning.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// With process.terminal: the unix socket that receives the terminal's pty master.
    #[arg(long, value_name = "SOCKET")]
    console_socket: Option<PathBuf>,
    /// Accepted and ignored (nsbox always pivots into the new root).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted and ignored (the sandbox has no session keyring of the host's).
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

#[derive(Debug, Args)]
struct IdArg {
    id: String,
}

#[derive(Debug, Args)]
struct KillArgs {
    /// Signal every process of the container (its whole sandbox).
    #[arg(short, long)]
    all: bool,
    id: String,
    /// A number or a name, with or without SIG.
    #[arg(default_value = "SIGTERM")]
    signal: String,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    force: bool,
    id: String,
}

/// Runs the runtime command line (`args[0]` is the program name); returns the exit code.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match RuntimeCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                crate::exit::USAGE
            } else {
                0
            };
        }
    };
    let log = Log {
        path: cli.log.clone(),
        json: cli.log_format == LogFormat::Json,
    };
    match run(&cli, &log) {
        Ok(code) => code,
        Err(e) => {
            let message = e.to_string();
            log.write("error", &message);
            eprintln!("nsbox-runc: {message}");
            1
        }
    }
}

/// Runs one command; its exit code (an attached `exec` returns its process's).
fn run(cli: &RuntimeCli, log: &Log) -> Result<i32, RuntimeError> {
    let root = &cli.root;
    match &cli.command {
        RuntimeCommand::Exec(a) => container::exec(
            root,
            &a.id,
            &a.process,
            container::ExecMode {
                detach: a.detach,
                pid_file: a.pid_file.as_deref(),
                tty: a.tty,
                console_socket: a.console_socket.as_deref(),
            },
        ),
        RuntimeCommand::Ps(a) => {
            let pids = container::pids(root, &a.id)?;
            match a.format.as_str() {
                "json" => println!("{}", serde_json::json!(pids)),
                "table" => {
                    println!("PID");
                    for pid in pids {
                        println!("{pid}");
                    }
                }
                other => {
                    return Err(RuntimeError::Unsupported(format!(
                        "--format {other}: use table or json"
                    )))
                }
            }
            Ok(0)
        }
        RuntimeCommand::Pause(a) => container::set_paused(root, &a.id, true).map(|()| 0),
        RuntimeCommand::Resume(a) => container::set_paused(root, &a.id, false).map(|()| 0),
        RuntimeCommand::Update(a) => {
            let Some(file) = &a.resources else {
                return Err(RuntimeError::Resources(
                    "missing — hint: pass --resources FILE (runtime-spec linux.resources JSON), or --resources - to read it from stdin".into(),
                ));
            };
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(RuntimeError::io("read --resources from stdin"))?;
                text
            } else {
                std::fs::read_to_string(file).map_err(RuntimeError::io(format!(
                    "read --resources {}",
                    file.display()
                )))?
            };
            let update = update::ResourceUpdate::parse(&text)?;
            container::update(root, &a.id, &update).map(|()| 0)
        }
        RuntimeCommand::Create(a) => container::create(
            root,
            &a.id,
            &a.bundle,
            a.pid_file.as_deref(),
            a.console_socket.as_deref(),
            cli.systemd_cgroup,
            log,
        )
        .map(|()| 0),
        RuntimeCommand::Start(a) => container::start(root, &a.id).map(|()| 0),
        RuntimeCommand::State(a) => {
            let state = container::state(root, &a.id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&state).unwrap_or_default()
            );
            Ok(0)
        }
        RuntimeCommand::Kill(a) => {
            let signal = parse_signal(&a.signal)?;
            container::kill(root, &a.id, signal, a.all).map(|()| 0)
        }
        RuntimeCommand::Delete(a) => container::delete(root, &a.id, a.force).map(|()| 0),
        RuntimeCommand::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&features()).unwrap_or_default()
            );
            Ok(0)
        }
    }
}

/// Where errors and warnings go: `--log FILE` (runc's format), besides stderr.
#[derive(Debug, Clone)]
pub struct Log {
    path: Option<PathBuf>,
    json: bool,
}

impl Log {
    pub fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.path else { return };
        let time = crate::units::rfc3339(crate::session::state::now_secs());
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time={time} level={level} msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// A signal as runc takes it: `9`, `KILL`, `SIGKILL` (any case).
pub fn parse_signal(s: &str) -> Result<i32, RuntimeError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(RuntimeError::BadSignal(s.into()))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sig)| *sig)
        .ok_or_else(|| RuntimeError::BadSignal(s.into()))
}

/// `features`: the runtime-spec features document, for what nsbox honours.
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["pid", "mount", "network", "uts", "ipc", "user"],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.nsbox.runtime.floor": "user namespace, no capabilities, nsbox's seccomp filter"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").ok(), Some(libc::SIGKILL));
        assert_eq!(parse_signal("KILL").ok(), Some(libc::SIGKILL));
        assert_eq!(parse_signal("sigterm").ok(), Some(libc::SIGTERM));
        assert_eq!(parse_signal("SIGUSR1").ok(), Some(libc::SIGUSR1));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn runc_global_flags_come_before_the_command() {
        let cli = RuntimeCli::try_parse_from([
            "nsbox-runc",
            "--root",
            "/tmp/r",
            "--log",
            "/tmp/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--no-pivot",
            "--no-new-keyring",
            "c1",
        ])
        .expect("parse");
        assert_eq!(cli.root, PathBuf::from("/tmp/r"));
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(cli.command, RuntimeCommand::Create(ref a) if a.id == "c1"));
        let kill = RuntimeCli::try_parse_from(["nsbox-runc", "kill", "--all", "c1", "9"])
            .expect("parse kill");
        assert!(matches!(kill.command, RuntimeCommand::Kill(ref a) if a.all && a.signal == "9"));
    }
}
