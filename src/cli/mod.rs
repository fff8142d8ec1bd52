//! The command line: parses flags once into typed values, builds the validated plan and hands
//! it to the library. Errors that reach the user say what to do; exit codes follow the table
//! in [`crate::exit`].

mod build;
mod doctor;
mod events;
mod exec;
mod image;
mod inspect;
mod listing;
mod prune;
mod pull;
mod remote;
mod serve;
mod session;
mod settings;
mod snapshot;
#[cfg(test)]
mod spec_tests;
mod user;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::exit;
use crate::profile::NetworkMode;
use crate::units::{ByteSize, CpuQuota};
use crate::units::{Limit, Timeout};

const AFTER_HELP: &str = "\
Examples:
  nsbox run -- uname -a                           run on the host's root, read-only, no network
  nsbox run -it -- bash                           an interactive shell in a throwaway sandbox
  nsbox run --copy ./repo:repo -w /sandbox/repo -- make test
  nsbox run -m 512m --pids 64 --timeout 30s -- ./untrusted
  nsbox run -v $PWD:/work:rw -w /work -- make     a host directory, writable (default: read-only)
  nsbox exec --secret API_KEY=sk-123 -- ./agent   API_KEY is masked as *** in all output
  nsbox exec --image python:3.12 -- python3 -V    pulled from Docker Hub when missing
  nsbox load devbox-oci && nsbox exec --image devbox-oci:1.0 -- make test
  nsbox build --file images/agent.toml            a devbox image, rebuilt only when changed
  nsbox exec --allow api.github.com -- curl -s https://api.github.com/zen
  S=$(nsbox create --image devbox:latest) && nsbox exec --session $S -- git status
  nsbox doctor                                    check that this host can run sandboxes

Exit codes: the command's own status; 121 bad usage; 122 host cannot run sandboxes; 123 image
not found; 124 timeout; 125 nsbox failed; 126 not executable; 127 not found; 128+N killed by
signal N (137 also for out of memory). `nsbox` alone prints this help on stderr and exits 121.

Docker habits: `run` is `exec` without --session; -m is --memory, -v is --mount (also
--volume; host paths are read-only unless :rw); --network is --net; -p is --profile (nsbox
publishes no ports).";

/// nsbox: a disposable, locked-down Linux sandbox per command. One binary, no daemon.
#[derive(Debug, Parser)]
#[command(
    name = "nsbox",
    version,
    after_help = AFTER_HELP,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes (declared apart so that [`parse_from`]'s fast path can
/// build the root command without the subcommand tree).
#[derive(Debug, Args)]
struct Globals {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). NSBOX_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Format of nsbox's own log lines on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Where nsbox keeps images (default /var/lib/nsbox; NSBOX_STATE_ROOT overrides the default).
    #[arg(long, value_name = "DIR", global = true)]
    state_root: Option<PathBuf>,
    /// Read this config file only (default: /etc/nsbox/config.toml, then
    /// $XDG_CONFIG_HOME/nsbox/config.toml, then ./nsbox.toml; NSBOX_CONFIG sets it too).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Run run/exec/create/cp/ps/inspect/stop/rm on an `nsbox serve` server instead of this
    /// machine: unix:///PATH, http://HOST:PORT or https://HOST:PORT (NSBOX_HOST sets it too;
    /// NSBOX_API_KEY holds the key a TCP server needs).
    #[arg(long, value_name = "URL", global = true)]
    host: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new sandbox, then remove the sandbox (Docker's `run`).
    #[command(after_help = AFTER_HELP)]
    Run(Box<RunArgs>),
    /// Run a command in a new sandbox like `run`, or with --session in a living session.
    #[command(after_help = AFTER_HELP)]
    Exec(Box<ExecArgs>),
    /// Start a sandbox that stays up (a session); prints its id.
    Create(Box<session::CreateArgs>),
    /// List sessions (-a: running one-shot sandboxes too).
    Ps(session::PsArgs),
    /// Print sessions, one-shot sandboxes and images as one JSON array (what nsbox knows).
    Inspect(inspect::InspectArgs),
    /// The output of a session's commands (kept masked, at most 16 MiB per session).
    Logs(session::LogsArgs),
    /// A session's resource usage (memory, CPU, processes).
    Stats(session::StatsArgs),
    /// Stop a session or a one-shot sandbox: TERM to its processes, KILL after a grace period.
    Stop(session::StopArgs),
    /// Wait until sessions or one-shot sandboxes stopped; print each one's exit code.
    Wait(events::WaitArgs),
    /// Print lifecycle events of sessions and one-shot sandboxes as JSON lines, following new
    /// ones (host-wide, from every nsbox process).
    Events(events::EventsArgs),
    /// Remove stopped sessions (-f: stop them first).
    Rm(session::RmArgs),
    /// Copy files or trees between the host and a session: SRC SESSION:DST or SESSION:SRC DST
    /// (`-` for a tar stream on stdin/stdout).
    Cp(session::CpArgs),
    /// Freeze every process of a session (cgroup freezer): no CPU used, memory kept; commands
    /// are refused until `nsbox resume`.
    Pause(snapshot::FreezeArgs),
    /// Let a paused session's processes run again.
    Resume(snapshot::FreezeArgs),
    /// Make an image of a session's files (its root's changes and /sandbox) on top of its
    /// image; the session is frozen while they are read and goes on afterwards.
    Commit(snapshot::CommitArgs),
    /// New sessions from a session's files, copy-on-write on one frozen snapshot (processes
    /// are not carried over; network policy is the parent's unless given; secrets never are).
    Fork(snapshot::ForkArgs),
    /// Check that this host can run sandboxes, and say what to fix if not.
    Doctor(doctor::DoctorArgs),
    /// Remove what killed nsbox processes left behind (cgroups, sessions, cached layers).
    Prune(prune::PruneArgs),
    /// List the built-in profiles.
    Profiles,
    /// Load the images of an OCI layout, OCI archive or docker-save archive into the store.
    Load(image::LoadArgs),
    /// Add a root filesystem tarball to the store as a one-layer image.
    Import(image::ImportArgs),
    /// List the images in the store.
    Images(image::ImagesArgs),
    /// Give an image another name.
    Tag(image::TagArgs),
    /// Remove image names (and images no name refers to any more).
    Rmi(image::RmiArgs),
    /// Write an image as an OCI archive.
    Save(image::SaveArgs),
    /// Image store maintenance.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Pull an image from a registry into the store.
    Pull(pull::PullArgs),
    /// Save credentials for a registry (checked first).
    Login(pull::LoginArgs),
    /// Forget the credentials saved for a registry.
    Logout(pull::LogoutArgs),
    /// Print the effective configuration and where each value came from.
    Config(settings::ConfigArgs),
    /// Build a devbox image from a recipe (skipped when recipe and base are unchanged).
    Build(build::BuildArgs),
    /// Build every image the config lists (unchanged ones are skipped).
    Setup(build::SetupArgs),
    /// Serve sandboxes over a REST API (unix socket; TCP with API keys); `serve key` manages keys.
    Serve(serve::ServeArgs),
    /// Print nsbox's version (also `nsbox --version`).
    Version(VersionArgs),
    /// Print a shell completion script: nsbox completion bash|zsh|fish.
    #[command(
        after_help = "Examples:\n  nsbox completion bash > /etc/bash_completion.d/nsbox\n  nsbox completion zsh > \"${fpath[1]}/_nsbox\"\n  nsbox completion fish > ~/.config/fish/completions/nsbox.fish"
    )]
    Completion(CompletionArgs),
    /// Print nsbox's man page (roff), or write one page per command into a directory.
    #[command(
        after_help = "Examples:\n  nsbox man | man -l -\n  nsbox man --dir /usr/local/share/man/man1 && mandb"
    )]
    Man(ManArgs),
}

/// Flags of `nsbox version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Flags of `nsbox completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Flags of `nsbox man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write nsbox.1 and one nsbox-COMMAND.1 per command into DIR instead of printing
    /// nsbox.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What defines a sandbox: the flags of `nsbox exec` (without `--session`) and `nsbox create`.
/// Values left out come from the profile (profiles/default.toml).
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Profile to start from: a built-in name (default, strict), /etc/nsbox/profiles/NAME.toml,
    /// or a path to a TOML file.
    #[arg(long, short = 'p', value_name = "NAME|PATH")]
    profile: Option<String>,

    /// Use this directory as the root filesystem (read-only, under an ephemeral overlay)
    /// instead of the host's root.
    #[arg(long, value_name = "DIR", help_heading = "Filesystem")]
    rootfs: Option<PathBuf>,
    /// Use an image from the store as the root (read-only, under an ephemeral overlay); its
    /// Env, WorkingDir and User become defaults, and the command runs as ENTRYPOINT + (CMD
    /// given here, or the image's Cmd).
    #[arg(
        long,
        value_name = "NAME[:TAG]|NAME@DIGEST",
        conflicts_with = "rootfs",
        help_heading = "Filesystem"
    )]
    image: Option<String>,
    /// With --image: pull it from its registry when missing (default, or the config's
    /// pull.policy), always, or never.
    #[arg(
        long,
        value_name = "WHEN",
        value_enum,
        requires = "image",
        help_heading = "Filesystem"
    )]
    pull: Option<crate::registry::pull::PullPolicy>,
    /// Let the command write anywhere in the root; writes go to an ephemeral layer.
    #[arg(long, help_heading = "Filesystem")]
    writable_root: bool,
    /// Bind a host path into the sandbox: READ-ONLY unless :rw (Docker's -v is writable by
    /// default; nsbox's is not). -v/--volume is the Docker spelling; -m is --memory.
    /// Repeatable.
    #[arg(
        long = "mount",
        short = 'v',
        visible_alias = "volume",
        value_name = "SRC:DST[:ro|rw]",
        help_heading = "Filesystem"
    )]
    mounts: Vec<String>,
    /// Copy a host file or tree into /sandbox before the command starts (DST relative to
    /// /sandbox; a DST ending in / keeps SRC's name). Repeatable.
    #[arg(long = "copy", value_name = "SRC:DST", help_heading = "Filesystem")]
    copies: Vec<String>,
    /// Mount a fresh tmpfs at PATH (writable by all like /tmp, nosuid, nodev; SIZE defaults
    /// to --tmp-size's; its contents count against --memory). Repeatable.
    #[arg(
        long = "tmpfs",
        value_name = "PATH[:SIZE]",
        help_heading = "Filesystem"
    )]
    tmpfs: Vec<String>,
    /// Size of the writable /sandbox tmpfs (the working directory and HOME).
    #[arg(long, value_name = "SIZE", help_heading = "Filesystem")]
    sandbox_size: Option<ByteSize>,
    /// Size of /tmp.
    #[arg(long, value_name = "SIZE", help_heading = "Filesystem")]
    tmp_size: Option<ByteSize>,
    /// Size of the ephemeral layer that holds writes to the root (with --writable-root).
    #[arg(long, value_name = "SIZE", help_heading = "Filesystem")]
    root_size: Option<ByteSize>,

    /// Memory limit for the whole sandbox (e.g. 512m, 2g, none). Swap is always off; the
    /// /sandbox and /tmp tmpfs count against it.
    #[arg(long, short = 'm', value_name = "SIZE", value_parser = parse_memory, help_heading = "Limits")]
    memory: Option<Limit<ByteSize>>,
    /// CPU time limit in cores (e.g. 0.5, 2, none).
    #[arg(long, value_name = "CORES", help_heading = "Limits")]
    cpus: Option<Limit<CpuQuota>>,
    /// Maximum number of processes and threads (or none).
    #[arg(long, value_name = "N", help_heading = "Limits")]
    pids: Option<Limit<u64>>,

    /// Network: none (loopback only, the default), filtered (only what --allow lists) or host
    /// (the host's network, opt-in). --network is the Docker spelling.
    #[arg(long, visible_alias = "network", value_name = "MODE", value_parser = parse_network, help_heading = "Network")]
    net: Option<NetworkMode>,
    /// Allow a host (api.github.com), a wildcard (*.pypi.org), an IP or CIDR range
    /// (203.0.113.7, 2001:db8::/64), each with an optional :PORT, or re:REGEX (whole names).
    /// Implies --net filtered. Repeatable.
    #[arg(long = "allow", value_name = "PATTERN", help_heading = "Network")]
    allow: Vec<String>,
    /// Refuse what a pattern matches even when --allow does (deny wins). Repeatable.
    #[arg(long = "deny", value_name = "PATTERN", help_heading = "Network")]
    deny: Vec<String>,
    /// Upstream DNS resolver for the filtered network (default: the host's /etc/resolv.conf).
    /// Repeatable.
    #[arg(
        long = "dns-upstream",
        value_name = "ADDR[:PORT]",
        help_heading = "Network"
    )]
    dns_upstream: Vec<String>,
    /// Print each DNS decision and each allowed or refused connection on stderr (with --json
    /// they are events in the stream).
    #[arg(long, help_heading = "Network")]
    log_network: bool,

    /// User inside the sandbox (default 100:101, `sandbox`): numbers, or names looked up in the
    /// sandbox root's own /etc/passwd and /etc/group. Never has capabilities.
    #[arg(
        long,
        short = 'u',
        value_name = "UID[:GID]|NAME[:GROUP]",
        help_heading = "Process"
    )]
    user: Option<String>,
    /// Working directory inside the sandbox (default /sandbox; created if missing).
    #[arg(long, short = 'w', value_name = "DIR", help_heading = "Process")]
    workdir: Option<PathBuf>,
    /// Hostname inside the sandbox (default: the sandbox id).
    #[arg(long, value_name = "NAME", help_heading = "Process")]
    hostname: Option<String>,
    /// Set an environment variable; a bare NAME copies it from nsbox's environment. Repeatable.
    #[arg(
        long = "env",
        short = 'e',
        value_name = "NAME=VALUE",
        help_heading = "Process"
    )]
    env: Vec<String>,
    /// Read variables from a file of NAME=VALUE lines. Repeatable.
    #[arg(long = "env-file", value_name = "FILE", help_heading = "Process")]
    env_files: Vec<PathBuf>,
    /// Attach a label (a job id, a PR): in the --json start event, `ps` (-a for a one-shot),
    /// `inspect` and `events`, selected with `--filter label=KEY[=VALUE]`. Repeatable.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = session::parse_label, help_heading = "Process")]
    labels: Vec<(String, String)>,
    /// Set a secret variable: its value is masked as *** in everything nsbox relays. Repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE", help_heading = "Process")]
    secrets: Vec<String>,
    /// Like --secret, with the value taken from nsbox's own environment. Repeatable.
    #[arg(long = "secret-env", value_name = "NAME", help_heading = "Process")]
    secret_env: Vec<String>,
    /// A secretless credential (filtered network): the sandbox's NAME holds a placeholder, and
    /// the egress proxy puts the real value (NAME in nsbox's environment) into request headers
    /// to these hosts only; with :HEADER, only into those headers. Repeatable.
    #[arg(
        long = "credential",
        value_name = "NAME[:HEADER]=HOST[,HOST...]",
        help_heading = "Network"
    )]
    credentials: Vec<String>,
}

impl SandboxArgs {
    /// The sandbox-defining flags given (they make no sense with `exec --session`).
    fn defining_flags(&self) -> Vec<&'static str> {
        let mut used = Vec::new();
        let mut check = |given: bool, name: &'static str| {
            if given {
                used.push(name);
            }
        };
        check(self.profile.is_some(), "--profile");
        check(self.rootfs.is_some(), "--rootfs");
        check(self.image.is_some(), "--image");
        check(self.pull.is_some(), "--pull");
        check(self.writable_root, "--writable-root");
        check(!self.mounts.is_empty(), "--mount");
        check(!self.copies.is_empty(), "--copy");
        check(!self.tmpfs.is_empty(), "--tmpfs");
        check(self.sandbox_size.is_some(), "--sandbox-size");
        check(self.tmp_size.is_some(), "--tmp-size");
        check(self.root_size.is_some(), "--root-size");
        check(self.memory.is_some(), "--memory");
        check(self.cpus.is_some(), "--cpus");
        check(self.pids.is_some(), "--pids");
        check(self.net.is_some(), "--net");
        check(!self.allow.is_empty(), "--allow");
        check(!self.deny.is_empty(), "--deny");
        check(!self.dns_upstream.is_empty(), "--dns-upstream");
        check(!self.credentials.is_empty(), "--credential");
        check(self.log_network, "--log-network");
        check(self.user.is_some(), "--user");
        check(self.hostname.is_some(), "--hostname");
        check(!self.env_files.is_empty(), "--env-file");
        check(!self.labels.is_empty(), "--label");
        used
    }
}

/// Flags of `nsbox exec`: those of `run`, and --session.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run the command in this living session (see `nsbox create`) instead of a new sandbox.
    /// With it, only -e, -w, -i, -t, --json, --timeout, --max-output, --secret and
    /// --secret-env apply.
    #[arg(long, short = 's', value_name = "ID|NAME", help_heading = "Sessions")]
    session: Option<String>,

    #[command(flatten)]
    run: RunArgs,
}

/// Flags of `nsbox run` (a new sandbox for one command).
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,

    /// With --image: run PROG instead of the image's Entrypoint ('' clears it).
    #[arg(
        long,
        value_name = "PROG",
        requires = "image",
        help_heading = "Filesystem"
    )]
    entrypoint: Option<String>,

    /// Kill every process of the sandbox after this long (e.g. 30s, 5m, 1h; or none). Exit 124.
    /// With --session: kill the command (and its process group).
    #[arg(long, value_name = "DURATION", help_heading = "Limits")]
    timeout: Option<Limit<Timeout>>,
    /// Relay at most this many bytes of output (e.g. 10m, or none); the rest is dropped.
    #[arg(long, value_name = "SIZE", help_heading = "Limits")]
    max_output: Option<Limit<ByteSize>>,

    /// Pass nsbox's stdin to the command (otherwise it reads /dev/null).
    #[arg(long, short = 'i', help_heading = "Input/output")]
    interactive: bool,
    /// Give the command a terminal (use with -i for an interactive shell).
    #[arg(
        long,
        short = 't',
        conflicts_with = "json",
        help_heading = "Input/output"
    )]
    tty: bool,
    /// Write one JSON event per line (output chunks, exit, errors) instead of raw output.
    #[arg(long, help_heading = "Input/output")]
    json: bool,
    /// Print ONE JSON document when the command ended instead of its output: exit code,
    /// signal/oom/timeout, stdout and stderr (masked, capped), truncation, timings, resource use.
    #[arg(long, conflicts_with_all = ["json", "tty"], help_heading = "Input/output")]
    result_json: bool,
    /// Print where the time went, phase by phase, on stderr.
    #[arg(long, help_heading = "Input/output")]
    timings: bool,
    /// After the command ended, copy PATH (inside; relative to the working directory) into
    /// the host directory HOSTDIR (created if missing) before the sandbox is removed.
    /// Repeatable. Not with --session (use `nsbox cp`).
    #[arg(long = "out", value_name = "PATH:HOSTDIR", help_heading = "Filesystem")]
    outs: Vec<String>,

    /// The command and its arguments.
    #[arg(value_name = "CMD", trailing_var_arg = true, num_args = 0..)]
    command: Vec<OsString>,
}

fn parse_network(s: &str) -> Result<NetworkMode, String> {
    s.parse()
}

/// `--memory`, with a hint for the old `-m SRC:DST` (`-m` was `--mount` before it became
/// Docker's memory letter).
fn parse_memory(s: &str) -> Result<Limit<ByteSize>, String> {
    s.parse::<Limit<ByteSize>>().map_err(|e| {
        if s.contains(':') || s.starts_with('/') || s.starts_with('.') {
            format!("{e} — hint: '{s}' looks like a mount: -m is --memory (as in Docker); bind a host path with -v/--mount SRC:DST")
        } else {
            e.to_string()
        }
    })
}

/// The subcommands whose own short `-v` is --volume (the global --verbose stays `-v` before
/// the command, and `--verbose` everywhere).
const VOLUME_COMMANDS: &[&str] = &["run", "exec", "create"];

/// The command line's definition: the derived one, with the global options hidden below the
/// top level, so each command's --help shows its own options and `nsbox --help` the global
/// ones once. They still work after the command (`nsbox exec --state-root X ...`).
pub fn command() -> clap::Command {
    with_hidden_globals(Cli::command())
}

/// Copies `root`'s global options, hidden, into every command below it.
fn with_hidden_globals(root: clap::Command) -> clap::Command {
    let globals: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    fn hide_in(cmd: clap::Command, globals: &[clap::Arg], top: bool) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd;
        for name in names {
            let volume = top && VOLUME_COMMANDS.contains(&name.as_str());
            cmd = cmd.mut_subcommand(&name, |mut sub| {
                for arg in globals {
                    // A copy of the global option under the same id: clap does not propagate
                    // the visible one where this exists, and the value still reaches the top.
                    let mut hidden = arg.clone().hide(true);
                    if volume && arg.get_short() == Some('v') {
                        hidden = hidden.short(None);
                    }
                    sub = sub.arg(hidden);
                }
                hide_in(sub, globals, false)
            });
        }
        cmd
    }
    hide_in(root, &globals, true)
}

/// Parses a command line with [`command`] (never `Cli::parse`: the derived definition alone
/// has `-v` twice below `run`, `exec` and `create`).
pub fn parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    if let Some(cli) = parse_one_shot(&argv) {
        return Ok(cli);
    }
    command()
        .try_get_matches_from(argv)
        .and_then(|m| Cli::from_arg_matches(&m))
}

/// The cold-start fast path: `nsbox run|exec ...` parsed with a root that holds only that one
/// command (building all thirty commands' definitions took half of the parse, a tenth of a
/// millisecond of every one-shot sandbox). Anything else, and any command line this parse
/// refuses (including --help and --version), goes to the whole tree, so that help, errors and
/// suggestions are the whole tree's, word for word.
fn parse_one_shot(argv: &[OsString]) -> Option<Cli> {
    let sub = match argv.get(1)?.to_str()? {
        "run" => RunArgs::augment_args(clap::Command::new("run")),
        "exec" => ExecArgs::augment_args(clap::Command::new("exec")),
        _ => return None,
    };
    let root = Globals::augment_args(clap::Command::new("nsbox")).subcommand(sub);
    let matches = with_hidden_globals(root).try_get_matches_from(argv).ok()?;
    Cli::from_arg_matches(&matches).ok()
}

/// Runs nsbox with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    let t0 = crate::sandbox::supervisor::now_ns();
    let parsed = parse_from(std::env::args_os());
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                // `nsbox` alone: the help, on stderr, as a usage error (like git).
                _ => exit::USAGE,
            };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.globals.verbose, cli.globals.log_format);
    if let Some(host) = remote::host(cli.globals.host.as_deref()) {
        if !remote::runs_locally(&cli.command) {
            return remote::main(&host, cli.command, t0);
        }
    }
    let state_root = image::state_root(cli.globals.state_root.as_deref());
    // Only the commands that use the configuration read it (a broken file does not stop
    // `ps`, `stop` or `rm`).
    let config = || settings::load(cli.globals.config.as_deref());
    match cli.command {
        Command::Run(args) => with_config(config(), |c| exec::run(*args, &state_root, c, t0)),
        Command::Exec(args) => match args.session.clone() {
            Some(session) => exec::run_in_session(args.run, &session, t0),
            None => with_config(config(), |c| exec::run(args.run, &state_root, c, t0)),
        },
        Command::Create(args) => {
            with_config(config(), |c| session::create(*args, &state_root, c, t0))
        }
        Command::Ps(args) => session::ps(args),
        Command::Inspect(args) => inspect::run(args, &state_root),
        Command::Logs(args) => session::logs(args),
        Command::Stats(args) => session::stats(args),
        Command::Stop(args) => session::stop(args),
        Command::Wait(args) => events::wait(args),
        Command::Events(args) => events::events(args),
        Command::Rm(args) => session::rm(args),
        Command::Cp(args) => session::cp(args),
        Command::Pause(args) => snapshot::freeze(args, true),
        Command::Resume(args) => snapshot::freeze(args, false),
        Command::Commit(args) => snapshot::commit(args, &state_root),
        Command::Fork(args) => with_config(config(), |c| snapshot::fork(args, &state_root, c)),
        Command::Doctor(args) => doctor::run(args),
        Command::Prune(args) => with_config(config(), |c| prune::run(args, c, &state_root)),
        Command::Profiles => {
            for name in crate::profile::builtin_names() {
                let description = crate::profile::Profile::load(name)
                    .map(|p| p.description)
                    .unwrap_or_default();
                println!("{name:<10} {description}");
            }
            0
        }
        Command::Load(args) => image::load(args, &state_root),
        Command::Import(args) => image::import(args, &state_root),
        Command::Images(args) => image::images(args, &state_root),
        Command::Tag(args) => image::tag(args, &state_root),
        Command::Rmi(args) => image::rmi(args, &state_root),
        Command::Save(args) => image::save(args, &state_root),
        Command::Image(cmd) => image::prune(cmd, &state_root),
        Command::Pull(args) => with_config(config(), |c| pull::pull(args, &state_root, c)),
        Command::Login(args) => with_config(config(), |c| pull::login(args, &state_root, c)),
        Command::Logout(args) => pull::logout(args, &state_root),
        Command::Config(args) => settings::show(args, cli.globals.config.as_deref()),
        Command::Build(args) => with_config(config(), |c| build::build(args, &state_root, c, t0)),
        Command::Setup(args) => with_config(config(), |c| build::setup(args, &state_root, c, t0)),
        Command::Version(args) => version(args),
        Command::Completion(args) => {
            let mut cmd = command();
            clap_complete::generate(args.shell, &mut cmd, "nsbox", &mut std::io::stdout());
            0
        }
        Command::Man(args) => man(args),
        Command::Serve(args) => serve::run(args, &state_root, cli.globals.config.as_deref()),
    }
}

fn version(args: VersionArgs) -> i32 {
    let version = env!("CARGO_PKG_VERSION");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "version": version,
                "arch": std::env::consts::ARCH,
                "os": std::env::consts::OS,
            })
        );
    } else {
        println!(
            "nsbox {version} ({} {})",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
    }
    0
}

/// `nsbox man`: the top page on stdout, or every page (nsbox.1, nsbox-COMMAND.1, and
/// nsbox-image-prune.1 for nested commands) into `--dir`.
fn man(args: ManArgs) -> i32 {
    let cmd = command();
    let Some(dir) = args.dir else {
        let mut out = std::io::stdout().lock();
        return match clap_mangen::Man::new(cmd).render(&mut out) {
            Ok(()) => 0,
            Err(e) => {
                error(&format!("writing the man page: {e}"));
                exit::NSBOX_FAILED
            }
        };
    };
    // After `build`, every command's display name is its page's name (nsbox-image-prune).
    fn write_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write_pages(sub, dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd;
    cmd.build();
    match std::fs::create_dir_all(&dir).and_then(|()| write_pages(&cmd, &dir)) {
        Ok(()) => {
            println!("wrote the man pages to {}", dir.display());
            0
        }
        Err(e) => {
            error(&format!("writing the man pages to {}: {e}", dir.display()));
            exit::NSBOX_FAILED
        }
    }
}

/// Runs `f` with the configuration, or reports why it could not be read (a usage error).
fn with_config(
    config: Result<crate::config::Config, crate::config::ConfigError>,
    f: impl FnOnce(&crate::config::Config) -> i32,
) -> i32 {
    match config {
        Ok(c) => f(&c),
        Err(e) => {
            let failure = crate::report::Failure::of(&e);
            error(&failure.to_string());
            failure.exit_code()
        }
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let env = std::env::var("NSBOX_LOG").ok();
    if verbose == 0 && env.is_none() {
        // Quiet by default: no subscriber at all costs nothing at start-up.
        return;
    }
    let level = match verbose {
        0 | 1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::new(env.unwrap_or_else(|| format!("nsbox={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Prints a user-facing error on stderr.
fn error(message: &str) {
    eprintln!("nsbox: {message}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::command().debug_assert();
    }

    fn argv(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    fn full_parse(line: &str) -> Result<super::Cli, clap::Error> {
        use clap::FromArgMatches;
        super::command()
            .try_get_matches_from(argv(line))
            .and_then(|m| super::Cli::from_arg_matches(&m))
    }

    /// The one-shot fast path reads every accepted `run`/`exec` line exactly as the whole
    /// tree does (global options before and after the command, `-v` as --volume, trailing
    /// arguments that look like flags).
    #[test]
    fn the_fast_path_parses_like_the_whole_tree() {
        for line in [
            "nsbox exec -- /bin/true",
            "nsbox run -- /bin/true",
            "nsbox exec --timings --net none -m 256M -- sh -c true",
            "nsbox exec -v /tmp:/data:rw --state-root /x --config /c.toml -- ls -la",
            "nsbox run --verbose --log-format json --image devbox:latest -e A=1 -- env",
            "nsbox exec --session s1 -- git status --short",
            "nsbox exec --allow api.github.com -p strict -- curl -s https://x",
            "nsbox run /bin/echo --not-a-flag-of-ours",
        ] {
            let fast = super::parse_one_shot(&argv(line))
                .unwrap_or_else(|| panic!("no fast path for {line}"));
            let full = full_parse(line).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{line}");
        }
    }

    /// Help, version, mistakes and other commands come from the whole tree, word for word.
    #[test]
    fn help_and_errors_are_the_whole_trees() {
        for line in [
            "nsbox exec --help",
            "nsbox run -h",
            "nsbox exec --version",
            "nsbox exec --nett none -- true",
            "nsbox run --memory lots -- true",
            "nsbox exec --net sideways -- true",
            "nsbox exec --session",
            "nsbox exe -- true",
            "nsbox ps --bogus",
        ] {
            let got = super::parse_from(argv(line)).unwrap_err();
            let want = full_parse(line).unwrap_err();
            assert_eq!(got.kind(), want.kind(), "{line}");
            assert_eq!(
                got.render().to_string(),
                want.render().to_string(),
                "{line}"
            );
        }
        assert!(super::parse_one_shot(&argv("nsbox ps")).is_none());
        assert!(super::parse_one_shot(&argv("nsbox -v exec -- true")).is_none());
    }
}
