//! The validated plan for one sandbox ([`SandboxSpec`]): plain data built from a profile and
//! the command line, checked once here so the privileged code never sees a bad value.
//!
//! This module reads the host only to validate user input (does a --mount source exist, read an
//! --env-file). It creates nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::ids::{new_id, DEFAULT_UID_BASE};
pub use crate::image::ImageSpec;
use crate::net::{EgressPolicy, PolicyError};
use crate::profile::{self, NetworkMode, Profile, RootChoice, SysMode};
use crate::seccomp::{PolicyRef, SeccompError, SeccompPolicy};
use crate::units::{ByteSize, CpuQuota, Limit};

mod env;
mod paths;
mod request;

use env::{check_env_name, mask_all};
pub(crate) use env::{parse_env_entry, read_env_file, tty_term};
pub use paths::{normalize_inside, parse_copy, parse_mount, BindMount, CopyIn};
pub use request::ExecRequest;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command given — usage: nsbox exec [OPTIONS] -- CMD [ARGS...]")]
    NoCommand,
    #[error("no command given, and image '{0}' has no Entrypoint or Cmd — usage: nsbox exec --image IMAGE -- CMD [ARGS...]")]
    NoImageCommand(String),
    #[error("--rootfs {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
    #[error("--mount '{spec}': {reason}")]
    Mount { spec: String, reason: String },
    #[error("--copy '{spec}': {reason}")]
    Copy { spec: String, reason: String },
    #[error("--hostname '{0}': use 1-63 letters, digits and '-', not starting or ending with '-'")]
    Hostname(String),
    #[error("--workdir '{0}': must be an absolute path without '..'")]
    Workdir(PathBuf),
    #[error("{flag} '{entry}': {reason}")]
    Env {
        flag: &'static str,
        entry: String,
        reason: String,
    },
    #[error("--env-file {path}: {reason}")]
    EnvFile { path: PathBuf, reason: String },
    #[error("an existing network namespace can only be joined by an isolated sandbox, not with the network '{0}'")]
    NetNamespace(&'static str),
    #[error("{0}")]
    Seccomp(#[from] SeccompError),
    #[error("{0}")]
    Egress(#[from] PolicyError),
    #[error("{0}")]
    Credential(#[from] crate::net::credential::CredentialError),
    #[error("{0}")]
    Invalid(String),
}

/// The resource limits of one sandbox. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<ByteSize>,
    pub cpus: Option<CpuQuota>,
    pub pids: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_output: Option<ByteSize>,
}

/// Sizes of the sandbox's writable filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSizes {
    pub sandbox: ByteSize,
    pub tmp: ByteSize,
    pub root: ByteSize,
    pub shm: ByteSize,
}

/// How the workload's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMode {
    /// Relay nsbox's stdin to the command (-i). Otherwise the command reads /dev/null.
    pub stdin: bool,
    /// Give the command a pseudo-terminal (-t).
    pub tty: bool,
    /// Write JSON events instead of raw output (--json).
    pub json: bool,
    /// With `json`: one result document at the end instead of events (--result-json).
    pub result: bool,
}

/// Everything needed to build and run one sandbox, validated.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub profile_name: String,
    pub command: Vec<OsString>,
    pub root: RootChoice,
    /// The image the root is made of (overrides `root`).
    pub image: Option<ImageSpec>,
    pub writable_root: bool,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    /// The workload's umask (the profile's process.umask).
    pub umask: u32,
    /// Keep the filesystem after the command ended, for `exec --out` copies.
    pub keep_filesystem: bool,
    pub uid_base: u32,
    /// The host uid that creates (owns) the sandbox's user namespace; None: root
    /// (see [`crate::idrange`]).
    pub userns_owner: Option<u32>,
    pub workdir: PathBuf,
    pub network: NetworkMode,
    /// With `network` None: join this network namespace instead of a new one (see
    /// [`ExecRequest::net_namespace`]).
    pub net_namespace: Option<PathBuf>,
    /// Join these IPC and UTS namespaces instead of new ones (see [`ExecRequest`]).
    pub ipc_namespace: Option<PathBuf>,
    pub uts_namespace: Option<PathBuf>,
    /// The filtered network is an OCI pod's (see [`ExecRequest::pod_egress`]).
    pub pod_egress: bool,
    /// What a filtered network allows (empty unless `network` is `Filtered`).
    pub egress: EgressPolicy,
    /// Report each DNS decision and connection on stderr (`--log-network`).
    pub log_network: bool,
    pub limits: Limits,
    pub sizes: FsSizes,
    pub sys: SysMode,
    /// With the host's root: the top-level names that stay visible.
    pub host_root_visible: Vec<String>,
    pub hide: Vec<PathBuf>,
    pub mounts: Vec<BindMount>,
    pub copies: Vec<CopyIn>,
    /// The workload's complete environment, in order, secrets included.
    pub env: Vec<(String, String)>,
    /// Values masked as `***` in everything nsbox relays.
    pub secrets: Vec<String>,
    pub io: IoMode,
    pub seccomp: PolicyRef,
    pub timings: bool,
    /// Keep the root's writes in this host directory (its `upper/` and `work/`, made by the
    /// caller on the store's filesystem) instead of a tmpfs: `nsbox build` turns them into an
    /// image layer. None for every other sandbox.
    pub upper_dir: Option<PathBuf>,
    /// Lower layers stacked above the image's, top first: a fork's snapshot layers (its
    /// parent's files, copied by `nsbox fork`, see `crate::snapshot::layer`), leased by whoever
    /// made the spec. They carry the parent's /sandbox, which the fork keeps (the image's run
    /// config then says so). Empty for every other sandbox.
    pub extra_lowers: Vec<PathBuf>,
    /// Extra tmpfs mounts (`--tmpfs PATH[:SIZE]`), checked and added by the command line
    /// after `build`.
    pub tmpfs: Vec<TmpfsMount>,
    /// `--label KEY=VALUE`s: a one-shot's record and lifecycle events carry them.
    pub labels: BTreeMap<String, String>,
    /// Where the sandbox's cgroup goes instead of `nsbox-<id>` (an OCI bundle's
    /// `linux.cgroupsPath`, set by the runtime after `build`). None for every other sandbox.
    pub cgroup_at: Option<crate::cgroup::CgroupAt>,
}

/// A scratch tmpfs the command line asked for, mounted like /tmp (mode 1777, nosuid, nodev).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub target: PathBuf,
    pub size: ByteSize,
}

impl SandboxSpec {
    /// Validates `req` against `profile` and produces the plan. `host_env` is nsbox's own
    /// environment (for `--env K`, `--secret-env K` and bare names in env files).
    pub fn build(
        req: ExecRequest,
        profile: &Profile,
        host_env: &BTreeMap<String, String>,
    ) -> Result<SandboxSpec, SpecError> {
        // The image's run defaults, unless the command line overrides them.
        let mut req = req;
        let image_defaults = match req.image.clone() {
            Some(image) => Some(image_defaults(&mut req, &image)?),
            None => None,
        };
        if req.command.is_empty() {
            return Err(SpecError::NoCommand);
        }
        let id = new_id();
        let root = match &req.rootfs {
            Some(dir) => RootChoice::Dir(dir.clone()),
            None => profile.root.clone(),
        };
        if let RootChoice::Dir(dir) = &root {
            let reason = match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some("is not a directory".to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some("does not exist".to_string())
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(reason) = reason {
                return Err(SpecError::Rootfs {
                    path: dir.clone(),
                    reason,
                });
            }
        }
        let hostname = req.hostname.clone().unwrap_or_else(|| id.clone());
        if !valid_hostname(&hostname) {
            return Err(SpecError::Hostname(hostname));
        }
        let image_user = image_defaults.as_ref().and_then(|d| d.user);
        let (uid, gid) = req.user.or(image_user).unwrap_or(profile.user);
        let workdir = req
            .workdir
            .clone()
            .or_else(|| image_defaults.as_ref().and_then(|d| d.workdir.clone()))
            .unwrap_or_else(|| profile.workdir.clone());
        if !workdir.is_absolute() || workdir.components().any(|c| c == Component::ParentDir) {
            return Err(SpecError::Workdir(workdir));
        }
        let sizes = FsSizes {
            sandbox: req.sandbox_size.unwrap_or(profile.sandbox_size),
            tmp: req.tmp_size.unwrap_or(profile.tmp_size),
            root: req.root_size.unwrap_or(profile.root_size),
            shm: profile.shm_size,
        };
        for (flag, size) in [
            ("--sandbox-size", sizes.sandbox),
            ("--tmp-size", sizes.tmp),
            ("--root-size", sizes.root),
        ] {
            if size.bytes() < 4096 {
                return Err(SpecError::Invalid(format!(
                    "{flag} {size} is too small (at least 4k)"
                )));
            }
        }
        let limits = Limits {
            memory: req.memory.map_or(profile.memory, Limit::into_option),
            cpus: req.cpus.map_or(profile.cpus, Limit::into_option),
            pids: req.pids.map_or(profile.pids, Limit::into_option),
            timeout: req
                .timeout
                .map_or(profile.timeout, |l| l.into_option().map(|t| t.0)),
            max_output: req
                .max_output
                .map_or(profile.max_output, Limit::into_option),
        };
        if limits.pids == Some(0) {
            return Err(SpecError::Invalid("--pids must be at least 1".into()));
        }
        if limits.timeout == Some(Duration::ZERO) {
            return Err(SpecError::Invalid(
                "--timeout must be longer than zero".into(),
            ));
        }
        if let Some(m) = limits.memory {
            if m.bytes() < 4 << 20 {
                return Err(SpecError::Invalid(format!(
                    "--memory {m} is too small to start a process (at least 4m)"
                )));
            }
        }

        let sandbox_dir = PathBuf::from("/sandbox");
        let mut mounts = Vec::new();
        for spec in profile.mounts.iter().chain(req.mounts.iter()) {
            mounts.push(parse_mount(spec)?);
        }
        let mut copies = Vec::new();
        for spec in &req.copies {
            copies.push(parse_copy(spec, &sandbox_dir)?);
        }

        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(slot) = env.iter_mut().find(|(key, _)| *key == k) {
                slot.1 = v;
            } else {
                env.push((k, v));
            }
        };
        for (k, v) in &profile.env {
            set(&mut env, k.clone(), v.clone());
        }
        for (k, v) in image_defaults.iter().flat_map(|d| d.env.iter()) {
            set(&mut env, k.clone(), v.clone());
        }
        if req.tty {
            set(&mut env, "TERM".into(), tty_term(host_env));
        }
        for path in &req.env_files {
            for (k, v) in read_env_file(path, host_env)? {
                set(&mut env, k, v);
            }
        }
        for entry in &req.env {
            if let Some((k, v)) = parse_env_entry("--env", entry, host_env)? {
                set(&mut env, k, v);
            }
        }
        let mut secrets = Vec::new();
        for entry in &req.secrets {
            let (k, v) = entry.split_once('=').ok_or_else(|| SpecError::Env {
                flag: "--secret",
                entry: mask_all(entry),
                reason: "expected NAME=VALUE".into(),
            })?;
            check_env_name("--secret", k)?;
            if v.is_empty() {
                return Err(SpecError::Env {
                    flag: "--secret",
                    entry: k.to_string(),
                    reason: "the value is empty; there is nothing to mask".into(),
                });
            }
            secrets.push(v.to_string());
            set(&mut env, k.to_string(), v.to_string());
        }
        for name in &req.secret_env {
            check_env_name("--secret-env", name)?;
            let value = host_env
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SpecError::Env {
                    flag: "--secret-env",
                    entry: name.clone(),
                    reason: format!("{name} is not set (or empty) in nsbox's environment"),
                })?;
            secrets.push(value.clone());
            set(&mut env, name.clone(), value.clone());
        }

        let seccomp = load_seccomp(&profile.seccomp)?;
        let (network, mut egress) = network_policy(&req, profile)?;
        let pod_egress = req.pod_egress && network == NetworkMode::Filtered;
        if req.net_namespace.is_some() && network != NetworkMode::None && !pod_egress {
            return Err(SpecError::NetNamespace(network.as_str()));
        }
        // The profile's (and the config's) bindings, then the flags'; a flag's binding of a
        // NAME replaces the profile's.
        let mut entries: Vec<&String> = Vec::new();
        for entry in profile.network_credentials.iter().chain(&req.credentials) {
            let name = |e: &str| e.split(['=', ':']).next().unwrap_or_default().to_string();
            entries.retain(|e| name(e) != name(entry));
            entries.push(entry);
        }
        if !entries.is_empty() {
            if network != NetworkMode::Filtered {
                return Err(SpecError::Invalid(format!(
                    "--credential applies to --net filtered (the proxy injects the value), but the network is '{}' — hint: add --net filtered and --allow for its hosts",
                    network.as_str()
                )));
            }
            let mut bindings = Vec::new();
            for entry in entries {
                let c = crate::net::credential::Credential::parse(entry, host_env)?;
                if let Some(host) = c
                    .hosts
                    .iter()
                    .find(|h| !egress.allow.iter().any(|r| r.matches_name(h)))
                {
                    return Err(SpecError::Invalid(format!(
                        "--credential {}: {host} is not on the allowlist — hint: add --allow {host}",
                        c.name
                    )));
                }
                // Masked too, should the value reach nsbox's output some other way.
                secrets.push(c.value().to_string());
                set(&mut env, c.name.clone(), c.placeholder.clone());
                bindings.push(c);
            }
            let extra_ca = host_env
                .get(crate::net::credential::EGRESS_CA_FILE_ENV)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from);
            let creds = crate::net::credential::Credentials::new(bindings, extra_ca.as_deref())?;
            for (k, v) in crate::net::credential::Credentials::trust_env() {
                set(&mut env, k, v);
            }
            egress.credentials = Some(std::sync::Arc::new(creds));
        }

        Ok(SandboxSpec {
            id,
            profile_name: profile.name.clone(),
            command: req.command,
            root,
            image: req.image,
            writable_root: req.writable_root || profile.writable_root,
            hostname,
            uid,
            gid,
            umask: profile.umask,
            keep_filesystem: false,
            uid_base: DEFAULT_UID_BASE,
            userns_owner: None,
            workdir,
            network,
            net_namespace: req.net_namespace,
            pod_egress,
            ipc_namespace: req.ipc_namespace,
            uts_namespace: req.uts_namespace,
            egress,
            log_network: req.log_network,
            limits,
            sizes,
            sys: profile.sys,
            host_root_visible: profile.host_root_visible.clone(),
            hide: profile.hide.clone(),
            mounts,
            copies,
            env,
            secrets,
            io: IoMode {
                stdin: req.interactive,
                tty: req.tty,
                json: req.json,
                result: false,
            },
            seccomp,
            timings: req.timings,
            upper_dir: None,
            extra_lowers: Vec::new(),
            tmpfs: Vec::new(),
            labels: BTreeMap::new(),
            cgroup_at: None,
        })
    }
}

/// What an image contributes to a sandbox's defaults.
struct ImageDefaults {
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    user: Option<(u32, u32)>,
}

/// Applies an image's Entrypoint and Cmd to `req.command` (Docker's rule: the command is
/// ENTRYPOINT + the given arguments, or ENTRYPOINT + CMD when none are given; `--entrypoint`
/// replaces ENTRYPOINT, `--entrypoint ''` removes it) and returns its other defaults.
fn image_defaults(req: &mut ExecRequest, image: &ImageSpec) -> Result<ImageDefaults, SpecError> {
    let run = &image.run;
    let entrypoint: Vec<OsString> = match &req.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![OsString::from(e)],
        None => run
            .entrypoint
            .iter()
            .flatten()
            .map(OsString::from)
            .collect(),
    };
    let args: Vec<OsString> = if req.command.is_empty() {
        // An explicit --entrypoint drops the image's Cmd, as in Docker.
        if req.entrypoint.is_some() {
            Vec::new()
        } else {
            run.cmd.iter().flatten().map(OsString::from).collect()
        }
    } else {
        std::mem::take(&mut req.command)
    };
    req.command = entrypoint.into_iter().chain(args).collect();
    if req.command.is_empty() {
        return Err(SpecError::NoImageCommand(image.reference.clone()));
    }
    let mut env = Vec::new();
    for entry in run.env.iter().flatten() {
        match entry.split_once('=') {
            Some((k, v)) if profile::valid_env_name(k) && !v.contains('\0') => {
                env.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(SpecError::Invalid(format!(
                    "image '{}': Env entry '{}' is not NAME=VALUE",
                    image.reference,
                    entry.split('=').next().unwrap_or_default()
                )))
            }
        }
    }
    let workdir = match run.working_dir.as_deref() {
        None | Some("") => None,
        Some(dir) => Some(normalize_inside(Path::new(dir)).ok_or_else(|| {
            SpecError::Invalid(format!(
                "image '{}': WorkingDir '{dir}' is not an absolute path without '..' — hint: override it with --workdir",
                image.reference
            ))
        })?),
    };
    Ok(ImageDefaults {
        env,
        workdir,
        user: image.user,
    })
}

/// The network mode and, for `filtered`, its policy. Allow/deny patterns and upstreams given on
/// the command line imply `--net filtered` when no mode was given and the profile says `none`;
/// with another mode they are an error rather than silently unused.
fn network_policy(
    req: &ExecRequest,
    profile: &Profile,
) -> Result<(NetworkMode, EgressPolicy), SpecError> {
    let lists_given = !req.allow.is_empty() || !req.deny.is_empty() || !req.dns_upstream.is_empty();
    let network = match req.network {
        Some(mode) => mode,
        None if lists_given && profile.network == NetworkMode::None => NetworkMode::Filtered,
        None => profile.network,
    };
    if network != NetworkMode::Filtered {
        if lists_given {
            return Err(SpecError::Invalid(format!(
                "--allow, --deny and --dns-upstream apply to --net filtered, but the network is '{}' — hint: add --net filtered",
                network.as_str()
            )));
        }
        if req.log_network {
            return Err(SpecError::Invalid(format!(
                "--log-network reports a filtered network's decisions, but the network is '{}' — hint: add --net filtered",
                network.as_str()
            )));
        }
        return Ok((network, EgressPolicy::default()));
    }
    let allow: Vec<String> = profile
        .network_allow
        .iter()
        .chain(&req.allow)
        .cloned()
        .collect();
    let deny: Vec<String> = profile
        .network_deny
        .iter()
        .chain(&req.deny)
        .cloned()
        .collect();
    let upstream = if req.dns_upstream.is_empty() {
        &profile.dns_upstream
    } else {
        &req.dns_upstream
    };
    Ok((network, EgressPolicy::parse(&allow, &deny, upstream)?))
}

fn load_seccomp(name_or_path: &str) -> Result<PolicyRef, SpecError> {
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        let text = std::fs::read_to_string(name_or_path).map_err(|e| {
            SpecError::Invalid(format!("cannot read seccomp policy {name_or_path}: {e}"))
        })?;
        Ok(PolicyRef::Parsed(SeccompPolicy::parse(
            &text,
            name_or_path,
        )?))
    } else {
        Ok(PolicyRef::builtin(name_or_path)?)
    }
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Timeout;

    fn req(cmd: &[&str]) -> ExecRequest {
        ExecRequest {
            command: cmd.iter().map(OsString::from).collect(),
            ..Default::default()
        }
    }

    fn build(r: ExecRequest) -> Result<SandboxSpec, SpecError> {
        let env = BTreeMap::from([
            ("TOKEN".to_string(), "s3cr3t-value".to_string()),
            ("TERM".to_string(), "screen".to_string()),
        ]);
        SandboxSpec::build(r, &Profile::default_profile().unwrap(), &env)
    }

    #[test]
    fn defaults_come_from_the_profile() {
        let s = build(req(&["true"])).unwrap();
        assert_eq!(s.id.len(), 12);
        assert_eq!(s.hostname, s.id);
        assert_eq!((s.uid, s.gid), (100, 101));
        assert_eq!(s.network, NetworkMode::None);
        assert_eq!(s.root, RootChoice::Host);
        assert!(!s.writable_root);
        assert_eq!(s.limits.memory, Some(ByteSize(2 << 30)));
        let keys: Vec<_> = s.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HOME", "LANG", "PATH"]);
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageSpec {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        ImageSpec {
            reference: "img:1".into(),
            digest: crate::image::Digest::of(b"m"),
            layers: vec![PathBuf::from("/layers/a")],
            run: crate::image::RunConfig {
                user: None,
                env: Some(vec!["PATH=/opt/bin".into(), "A=image".into()]),
                entrypoint: list(entrypoint),
                cmd: list(cmd),
                working_dir: Some("/app".into()),
                labels: None,
            },
            user: Some((1000, 1000)),
        }
    }

    #[test]
    fn image_defaults_apply_unless_the_command_line_overrides() {
        let command = |r: &SandboxSpec| -> Vec<String> {
            r.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let mut r = req(&[]);
        r.image = Some(image(&["/ep", "x"], &["default"]));
        let s = build(r).unwrap();
        assert_eq!(command(&s), ["/ep", "x", "default"], "ENTRYPOINT + CMD");
        assert_eq!((s.uid, s.gid), (1000, 1000));
        assert_eq!(s.workdir, PathBuf::from("/app"));
        let get = |s: &SandboxSpec, k: &str| {
            s.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(&s, "PATH").as_deref(), Some("/opt/bin"));
        assert_eq!(
            get(&s, "HOME").as_deref(),
            Some("/sandbox"),
            "profile variables stay"
        );

        let mut r = req(&["arg"]);
        r.image = Some(image(&["/ep"], &["default"]));
        r.user = Some((5, 6));
        r.workdir = Some("/w".into());
        r.env = vec!["A=flag".into()];
        let s = build(r).unwrap();
        assert_eq!(command(&s), ["/ep", "arg"], "arguments replace CMD");
        assert_eq!(
            (s.uid, s.gid, s.workdir.clone()),
            (5, 6, PathBuf::from("/w"))
        );
        assert_eq!(get(&s, "A").as_deref(), Some("flag"));

        let mut r = req(&[]);
        r.image = Some(image(&["/ep"], &["default"]));
        r.entrypoint = Some("/other".into());
        assert_eq!(
            command(&build(r).unwrap()),
            ["/other"],
            "--entrypoint drops CMD"
        );
        let mut r = req(&["sh"]);
        r.image = Some(image(&["/ep"], &[]));
        r.entrypoint = Some(String::new());
        assert_eq!(
            command(&build(r).unwrap()),
            ["sh"],
            "--entrypoint '' clears it"
        );
        let mut r = req(&[]);
        r.image = Some(image(&[], &[]));
        assert!(matches!(build(r), Err(SpecError::NoImageCommand(_))));
    }

    #[test]
    fn allow_lists_imply_filtered_and_merge_with_the_profile() {
        let mut r = req(&["true"]);
        r.allow = vec!["api.github.com".into(), "203.0.113.0/24:443".into()];
        r.deny = vec!["evil.github.com".into()];
        r.dns_upstream = vec!["192.0.2.53".into()];
        let s = build(r).unwrap();
        assert_eq!(s.network, NetworkMode::Filtered);
        assert_eq!(s.egress.allow.len(), 2);
        assert_eq!(s.egress.deny.len(), 1);
        assert_eq!(s.egress.dns_upstream, ["192.0.2.53:53".parse().unwrap()]);
        // Explicit filtered with nothing allowed is valid: everything is refused.
        let mut r = req(&["true"]);
        r.network = Some(NetworkMode::Filtered);
        assert!(build(r).unwrap().egress.allow.is_empty());
    }

    #[test]
    fn allow_lists_with_another_mode_are_errors() {
        let mut r = req(&["true"]);
        r.network = Some(NetworkMode::Host);
        r.allow = vec!["api.github.com".into()];
        assert!(build(r).unwrap_err().to_string().contains("--net filtered"));
        let mut r = req(&["true"]);
        r.log_network = true;
        assert!(build(r).unwrap_err().to_string().contains("--log-network"));
        let mut r = req(&["true"]);
        r.allow = vec!["bad name".into()];
        assert!(build(r)
            .unwrap_err()
            .to_string()
            .contains("--allow 'bad name'"));
    }

    #[test]
    fn no_command_is_an_error() {
        assert!(matches!(build(req(&[])), Err(SpecError::NoCommand)));
    }

    #[test]
    fn flags_override_and_unlimited_switches_off() {
        let mut r = req(&["true"]);
        r.memory = Some(Limit::Unlimited);
        r.pids = Some(Limit::Value(10));
        r.timeout = Some(Limit::Value(Timeout(Duration::from_secs(3))));
        let s = build(r).unwrap();
        assert_eq!(s.limits.memory, None);
        assert_eq!(s.limits.pids, Some(10));
        assert_eq!(s.limits.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn env_precedence_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# comment\nA=from-file\nexport B=2\n\nTOKEN\n").unwrap();
        let mut r = req(&["env"]);
        r.env_files = vec![file];
        r.env = vec!["A=from-flag".into(), "LANG=C".into()];
        r.secrets = vec!["API_KEY=abcdef123".into()];
        r.secret_env = vec!["TOKEN".into()];
        r.tty = true;
        let s = build(r).unwrap();
        let get = |k: &str| {
            s.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("from-flag"));
        assert_eq!(get("B"), Some("2"));
        assert_eq!(get("LANG"), Some("C"));
        assert_eq!(get("TERM"), Some("screen"));
        assert_eq!(get("API_KEY"), Some("abcdef123"));
        assert_eq!(get("TOKEN"), Some("s3cr3t-value"));
        assert_eq!(s.secrets, ["abcdef123", "s3cr3t-value"]);
    }

    #[test]
    fn bad_env_is_rejected_without_echoing_secrets() {
        let mut r = req(&["env"]);
        r.secrets = vec!["novalue".into()];
        let e = build(r).unwrap_err().to_string();
        assert!(!e.contains("novalue"), "{e}");
        let mut r = req(&["env"]);
        r.secret_env = vec!["UNSET_VAR".into()];
        assert!(build(r).unwrap_err().to_string().contains("UNSET_VAR"));
        let mut r = req(&["env"]);
        r.env = vec!["1X=y".into()];
        assert!(build(r).is_err());
        let mut r = req(&["env"]);
        r.env_files = vec![PathBuf::from("/nonexistent/env")];
        assert!(matches!(build(r), Err(SpecError::EnvFile { .. })));
    }

    #[test]
    fn credentials_put_a_placeholder_inside_and_keep_the_value_out() {
        // A filtered network with the hosts allowed is required; errors never show the value.
        let mut r = req(&["env"]);
        r.credentials = vec!["TOKEN=api.example.com".into()];
        let e = build(r).unwrap_err().to_string();
        assert!(e.contains("--net filtered") && !e.contains("s3cr3t"), "{e}");
        let mut r = req(&["env"]);
        r.network = Some(NetworkMode::Filtered);
        r.allow = vec!["other.example.com".into()];
        r.credentials = vec!["TOKEN=api.example.com".into()];
        let e = build(r).unwrap_err().to_string();
        assert!(e.contains("api.example.com is not on the allowlist"), "{e}");
        if !std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            return; // No system roots to trust upstream hosts with here.
        }
        let mut r = req(&["env"]);
        r.network = Some(NetworkMode::Filtered);
        r.allow = vec!["api.example.com".into()];
        r.credentials = vec!["TOKEN=api.example.com".into()];
        let s = build(r).unwrap();
        let get = |k: &str| s.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert!(get("TOKEN").unwrap().starts_with("nsbox-cred-token-"));
        assert!(!s.env.iter().any(|(_, v)| v.contains("s3cr3t")));
        assert_eq!(get("SSL_CERT_FILE").unwrap(), "/etc/nsbox-ca-bundle.pem");
        assert_eq!(s.secrets, ["s3cr3t-value"]);
        let creds = s.egress.credentials.as_ref().unwrap();
        assert!(creds.binds("api.example.com") && !creds.binds("other.example.com"));
        assert!(!format!("{:?}", s.egress).contains("s3cr3t-value"));
    }

    #[test]
    fn a_profiles_credentials_apply_and_a_flag_replaces_one_by_name() {
        if !std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            return; // No system roots to trust upstream hosts with here.
        }
        let mut profile = Profile::default_profile().unwrap();
        profile.network = NetworkMode::Filtered;
        profile.network_allow = vec!["api.example.com".into(), "b.example.com".into()];
        profile.network_credentials = vec!["TOKEN=api.example.com".into()];
        let env = BTreeMap::from([
            ("TOKEN".to_string(), "s3cr3t-value".to_string()),
            ("OTHER".to_string(), "0ther-value".to_string()),
        ]);
        let s = SandboxSpec::build(req(&["env"]), &profile, &env).unwrap();
        let creds = s.egress.credentials.as_ref().unwrap();
        assert!(creds.binds("api.example.com") && !creds.binds("b.example.com"));
        let mut r = req(&["env"]);
        r.credentials = vec![
            "TOKEN:x-api-key=b.example.com".into(),
            "OTHER=b.example.com".into(),
        ];
        let s = SandboxSpec::build(r, &profile, &env).unwrap();
        let creds = s.egress.credentials.as_ref().unwrap();
        assert_eq!(creds.bindings.len(), 2);
        assert!(!creds.binds("api.example.com") && creds.binds("b.example.com"));
        assert_eq!(creds.bindings[0].headers, ["x-api-key"]);
    }

    #[test]
    fn hostnames_and_workdirs_are_checked() {
        let mut r = req(&["true"]);
        r.hostname = Some("bad_name".into());
        assert!(matches!(build(r), Err(SpecError::Hostname(_))));
        let mut r = req(&["true"]);
        r.workdir = Some(PathBuf::from("rel"));
        assert!(matches!(build(r), Err(SpecError::Workdir(_))));
        let mut r = req(&["true"]);
        r.rootfs = Some(PathBuf::from("/nonexistent-rootfs"));
        assert!(build(r).unwrap_err().to_string().contains("does not exist"));
    }
}
