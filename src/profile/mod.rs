//! Sandbox profiles: policy as data (limits, filesystem, network, identity, seccomp choice).
//!
//! A profile is a strict TOML file (unknown keys are errors). `profiles/default.toml` is the one
//! place where defaults live; every other profile is applied on top of it. This module only
//! parses and resolves profiles into typed values; it does not decide anything about how a
//! sandbox is built (that is `spec`'s job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{self, ByteSize, CpuQuota, UnitError};

mod precompiled;

/// Profiles compiled into the binary, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../profiles/default.toml")),
    ("strict", include_str!("../../profiles/strict.toml")),
];

/// Where `--profile NAME` is looked up before the built-in profiles.
pub const SYSTEM_PROFILE_DIR: &str = "/etc/nsbox/profiles";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile '{name}' not found — hint: built-in profiles are {builtins}; a path (containing '/' or ending in .toml) loads a file; {dir}/NAME.toml is searched too")]
    NotFound {
        name: String,
        builtins: String,
        dir: &'static str,
    },
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {origin} is not valid: {message}")]
    Parse { origin: String, message: String },
    #[error("profile {origin}: {key}: {source}")]
    Unit {
        origin: String,
        key: &'static str,
        source: UnitError,
    },
    #[error("profile {origin}: {key}: {message}")]
    Value {
        origin: String,
        key: &'static str,
        message: String,
    },
}

/// One profile file as written: every key optional, unknown keys rejected. The config file's
/// `[defaults]` table has the same shape (see `crate::config`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    description: Option<String>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    filesystem: FilesystemFile,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    process: ProcessFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<String>,
    cpus: Option<NumOrString>,
    pids: Option<NumOrString>,
    timeout: Option<String>,
    max_output: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesystemFile {
    root: Option<String>,
    writable_root: Option<bool>,
    sandbox_size: Option<String>,
    tmp_size: Option<String>,
    root_size: Option<String>,
    shm_size: Option<String>,
    sys: Option<String>,
    host_root_visible: Option<Vec<String>>,
    hide: Option<Vec<String>>,
    mounts: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    mode: Option<String>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    dns_upstream: Option<Vec<String>>,
    credentials: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessFile {
    user: Option<String>,
    workdir: Option<String>,
    umask: Option<String>,
    seccomp: Option<String>,
    env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Int(u64),
    Float(f64),
    Str(String),
}

impl NumOrString {
    fn text(&self) -> String {
        match self {
            NumOrString::Int(n) => n.to_string(),
            NumOrString::Float(f) => f.to_string(),
            NumOrString::Str(s) => s.clone(),
        }
    }
}

/// Where the sandbox's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootChoice {
    /// The host's own root, read-only under an ephemeral overlay.
    Host,
    /// A directory on the host used as the lower layer.
    Dir(PathBuf),
}

/// Whether the sandbox gets a read-only sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysMode {
    ReadOnly,
    Absent,
}

/// The network a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new network namespace with only loopback.
    None,
    /// The host's network namespace (explicit opt-in).
    Host,
    /// A namespace of its own whose traffic goes only where the allowlist says (DNS through
    /// nsbox's resolver, TCP through nsbox's egress proxy; see `crate::net`).
    Filtered,
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            "filtered" => Ok(NetworkMode::Filtered),
            other => Err(format!("unknown network mode '{other}' — use 'none' (loopback only), 'filtered' (an allowlist, with --allow) or 'host'")),
        }
    }
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Filtered => "filtered",
        }
    }
}

/// A fully resolved profile: every value present and typed.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub memory: Option<ByteSize>,
    pub cpus: Option<CpuQuota>,
    pub pids: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_output: Option<ByteSize>,
    pub root: RootChoice,
    pub writable_root: bool,
    pub sandbox_size: ByteSize,
    pub tmp_size: ByteSize,
    pub root_size: ByteSize,
    pub shm_size: ByteSize,
    pub sys: SysMode,
    pub host_root_visible: Vec<String>,
    pub hide: Vec<PathBuf>,
    pub mounts: Vec<String>,
    pub network: NetworkMode,
    /// `--net filtered` allow and deny patterns and upstream resolvers, as written (validated).
    pub network_allow: Vec<String>,
    pub network_deny: Vec<String>,
    pub dns_upstream: Vec<String>,
    /// Secretless credentials (`--credential` bindings, as written; checked), whose values
    /// come from nsbox's environment when a sandbox starts.
    pub network_credentials: Vec<String>,
    pub user: (u32, u32),
    pub workdir: PathBuf,
    /// The file mode creation mask of the workload (process.umask, octal).
    pub umask: u32,
    pub seccomp: String,
    pub env: BTreeMap<String, String>,
}

impl Profile {
    /// Loads `default` merged with nothing.
    pub fn default_profile() -> Result<Profile, ProfileError> {
        Self::load("default")
    }

    /// Loads a profile by built-in name, by name from [`SYSTEM_PROFILE_DIR`], or from a path
    /// (anything containing '/' or ending in ".toml"), and applies it on top of the default.
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        Self::load_layered(name_or_path, &[])
    }

    /// Parses `text` (named `origin` in messages) and applies it on top of the default.
    pub fn from_text(origin: &str, text: &str) -> Result<Profile, ProfileError> {
        Self::layered(origin, text, &[])
    }

    /// Like [`Profile::load`], with `layers` (the config file's `[defaults]`, in order)
    /// applied over the built-in default and under the named profile: the config sets a
    /// site's defaults, a profile chosen for a run still wins, and flags win over both.
    pub fn load_layered(
        name_or_path: &str,
        layers: &[ProfileLayer],
    ) -> Result<Profile, ProfileError> {
        let (origin, text) = Self::find(name_or_path)?;
        Self::layered(&origin, &text, layers)
    }

    fn layered(origin: &str, text: &str, layers: &[ProfileLayer]) -> Result<Profile, ProfileError> {
        let mut resolved = Self::builtin_default()?;
        for layer in layers {
            apply(&mut resolved, &layer.origin, layer.file.clone())?;
        }
        if origin != "builtin:default" {
            apply(&mut resolved, origin, parse_file(origin, text)?)?;
        }
        resolved.name = origin
            .strip_prefix("builtin:")
            .unwrap_or(origin)
            .to_string();
        Ok(resolved)
    }

    /// The built-in default, resolved. It comes pre-parsed when `precompiled.rs` matches its
    /// text (a test keeps it so): starting a sandbox then never touches the TOML parser, with
    /// any profile.
    fn builtin_default() -> Result<Profile, ProfileError> {
        if precompiled::SOURCE_FNV == DEFAULT_SOURCE_FNV {
            return Ok(precompiled::default_profile());
        }
        resolve_base(parse_file(
            "builtin:default",
            builtin_text("default").unwrap_or_default(),
        )?)
    }

    fn find(name_or_path: &str) -> Result<(String, String), ProfileError> {
        let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        if looks_like_path {
            let path = PathBuf::from(name_or_path);
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            return Ok((path.display().to_string(), text));
        }
        let system = Path::new(SYSTEM_PROFILE_DIR).join(format!("{name_or_path}.toml"));
        match std::fs::read_to_string(&system) {
            Ok(text) => return Ok((system.display().to_string(), text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProfileError::Read {
                    path: system,
                    source,
                })
            }
        }
        match builtin_text(name_or_path) {
            Some(text) => Ok((format!("builtin:{name_or_path}"), text.to_string())),
            None => Err(ProfileError::NotFound {
                name: name_or_path.to_string(),
                builtins: builtin_names().join(", "),
                dir: SYSTEM_PROFILE_DIR,
            }),
        }
    }
}

/// FNV-1a of the embedded default profile, computed at compile time.
const DEFAULT_SOURCE_FNV: u64 = crate::fingerprint::fnv1a(BUILTIN[0].1.as_bytes());

/// Rust source that rebuilds `p` (for `precompiled.rs`).
#[cfg(test)]
fn profile_source(p: &Profile) -> String {
    let opt = |o: Option<String>| o.map_or("None".to_string(), |v| format!("Some({v})"));
    let strings = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}.into()"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let paths = |v: &[PathBuf]| {
        v.iter()
            .map(|p| format!("PathBuf::from({:?})", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Profile {{
        name: {:?}.into(),
        description: {:?}.into(),
        memory: {},
        cpus: {},
        pids: {:?},
        timeout: {},
        max_output: {},
        root: {},
        writable_root: {},
        sandbox_size: ByteSize({}),
        tmp_size: ByteSize({}),
        root_size: ByteSize({}),
        shm_size: ByteSize({}),
        sys: SysMode::{:?},
        host_root_visible: vec![{}],
        hide: vec![{}],
        mounts: vec![{}],
        network: NetworkMode::{:?},
        network_allow: vec![{}],
        network_deny: vec![{}],
        dns_upstream: vec![{}],
        network_credentials: vec![{}],
        user: {:?},
        workdir: PathBuf::from({:?}),
        umask: 0o{:o},
        seccomp: {:?}.into(),
        env: BTreeMap::from([{}]),
    }}",
        p.name,
        p.description,
        opt(p.memory.map(|m| format!("ByteSize({})", m.0))),
        opt(p.cpus.map(|c| format!("CpuQuota({})", c.0))),
        p.pids,
        opt(p
            .timeout
            .map(|d| format!("Duration::from_nanos({})", d.as_nanos()))),
        opt(p.max_output.map(|m| format!("ByteSize({})", m.0))),
        match &p.root {
            RootChoice::Host => "RootChoice::Host".to_string(),
            RootChoice::Dir(d) => format!(
                "RootChoice::Dir(PathBuf::from({:?}))",
                d.display().to_string()
            ),
        },
        p.writable_root,
        p.sandbox_size.0,
        p.tmp_size.0,
        p.root_size.0,
        p.shm_size.0,
        p.sys,
        p.host_root_visible
            .iter()
            .map(|v| format!("{v:?}.into()"))
            .collect::<Vec<_>>()
            .join(", "),
        paths(&p.hide),
        p.mounts
            .iter()
            .map(|v| format!("{v:?}.into()"))
            .collect::<Vec<_>>()
            .join(", "),
        p.network,
        strings(&p.network_allow),
        strings(&p.network_deny),
        strings(&p.dns_upstream),
        strings(&p.network_credentials),
        p.user,
        p.workdir.display().to_string(),
        p.umask,
        p.seccomp,
        p.env
            .iter()
            .map(|(k, v)| format!("({k:?}.into(), {v:?}.into())"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A profile-shaped table from a config file, named by where it came from.
#[derive(Debug, Clone)]
pub struct ProfileLayer {
    pub origin: String,
    pub file: ProfileFile,
}

/// Names of the profiles compiled into the binary.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(name, _)| *name).collect()
}

/// The text of a built-in profile.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

fn parse_file(origin: &str, text: &str) -> Result<ProfileFile, ProfileError> {
    toml::from_str(text).map_err(|e| ProfileError::Parse {
        origin: origin.to_string(),
        // Kept on several lines: the parser points at the spot with a caret.
        message: e.to_string().trim_end().replace('\n', "\n    "),
    })
}

/// Turns the default profile (which must set every key) into a [`Profile`].
fn resolve_base(file: ProfileFile) -> Result<Profile, ProfileError> {
    let origin = "builtin:default";
    let missing = |key: &'static str| ProfileError::Value {
        origin: origin.to_string(),
        key,
        message: "the default profile must set every key".into(),
    };
    let mut profile = Profile {
        name: "default".into(),
        description: file
            .description
            .clone()
            .ok_or_else(|| missing("description"))?,
        memory: None,
        cpus: None,
        pids: None,
        timeout: None,
        max_output: None,
        root: RootChoice::Host,
        writable_root: false,
        sandbox_size: ByteSize(0),
        tmp_size: ByteSize(0),
        root_size: ByteSize(0),
        shm_size: ByteSize(0),
        sys: SysMode::ReadOnly,
        host_root_visible: Vec::new(),
        hide: Vec::new(),
        mounts: Vec::new(),
        network: NetworkMode::None,
        network_allow: Vec::new(),
        network_deny: Vec::new(),
        dns_upstream: Vec::new(),
        network_credentials: Vec::new(),
        user: (100, 101),
        workdir: PathBuf::from("/sandbox"),
        umask: 0o022,
        seccomp: String::new(),
        env: BTreeMap::new(),
    };
    let l = &file.limits;
    let f = &file.filesystem;
    let p = &file.process;
    let complete = l.memory.is_some()
        && l.cpus.is_some()
        && l.pids.is_some()
        && l.timeout.is_some()
        && l.max_output.is_some()
        && f.root.is_some()
        && f.writable_root.is_some()
        && f.sandbox_size.is_some()
        && f.tmp_size.is_some()
        && f.root_size.is_some()
        && f.shm_size.is_some()
        && f.sys.is_some()
        && f.host_root_visible.is_some()
        && f.hide.is_some()
        && f.mounts.is_some()
        && file.network.mode.is_some()
        && file.network.allow.is_some()
        && file.network.deny.is_some()
        && file.network.dns_upstream.is_some()
        && p.user.is_some()
        && p.workdir.is_some()
        && p.umask.is_some()
        && p.seccomp.is_some()
        && p.env.is_some();
    if !complete {
        return Err(missing("(some key)"));
    }
    apply(&mut profile, origin, file)?;
    Ok(profile)
}

/// Applies the keys a profile file sets onto `profile`, validating each.
fn apply(profile: &mut Profile, origin: &str, file: ProfileFile) -> Result<(), ProfileError> {
    let unit = |key: &'static str| {
        move |source: UnitError| ProfileError::Unit {
            origin: origin.to_string(),
            key,
            source,
        }
    };
    let value = |key: &'static str, message: String| ProfileError::Value {
        origin: origin.to_string(),
        key,
        message,
    };
    if let Some(d) = file.description {
        profile.description = d;
    }
    let l = file.limits;
    if let Some(s) = l.memory {
        profile.memory = optional(&s, |t| t.parse::<ByteSize>()).map_err(unit("limits.memory"))?;
    }
    if let Some(c) = l.cpus {
        profile.cpus =
            optional(&c.text(), |t| t.parse::<CpuQuota>()).map_err(unit("limits.cpus"))?;
    }
    if let Some(p) = l.pids {
        let text = p.text();
        profile.pids = if units::is_unlimited(&text) {
            None
        } else {
            let n: u64 = text
                .parse()
                .map_err(|_| value("limits.pids", format!("'{text}' is not a whole number")))?;
            if n == 0 {
                return Err(value("limits.pids", "must be at least 1".into()));
            }
            Some(n)
        };
    }
    if let Some(t) = l.timeout {
        profile.timeout = optional(&t, units::parse_duration).map_err(unit("limits.timeout"))?;
    }
    if let Some(m) = l.max_output {
        profile.max_output =
            optional(&m, |t| t.parse::<ByteSize>()).map_err(unit("limits.max_output"))?;
    }
    let f = file.filesystem;
    if let Some(root) = f.root {
        profile.root = if root == "host" {
            RootChoice::Host
        } else if root.starts_with('/') {
            RootChoice::Dir(PathBuf::from(root))
        } else {
            return Err(value(
                "filesystem.root",
                format!("'{root}' is neither \"host\" nor an absolute directory path"),
            ));
        };
    }
    if let Some(w) = f.writable_root {
        profile.writable_root = w;
    }
    let size = |key: &'static str, s: String| s.parse::<ByteSize>().map_err(unit(key));
    if let Some(s) = f.sandbox_size {
        profile.sandbox_size = size("filesystem.sandbox_size", s)?;
    }
    if let Some(s) = f.tmp_size {
        profile.tmp_size = size("filesystem.tmp_size", s)?;
    }
    if let Some(s) = f.root_size {
        profile.root_size = size("filesystem.root_size", s)?;
    }
    if let Some(s) = f.shm_size {
        profile.shm_size = size("filesystem.shm_size", s)?;
    }
    if let Some(sys) = f.sys {
        profile.sys = match sys.as_str() {
            "ro" => SysMode::ReadOnly,
            "none" => SysMode::Absent,
            other => {
                return Err(value(
                    "filesystem.sys",
                    format!("'{other}' is not one of \"ro\", \"none\""),
                ))
            }
        };
    }
    if let Some(visible) = f.host_root_visible {
        let mut names = Vec::with_capacity(visible.len());
        for v in visible {
            let name = v.strip_prefix('/').unwrap_or("");
            if name.is_empty() || name.contains('/') || name == ".." || name == "." {
                return Err(value(
                    "filesystem.host_root_visible",
                    format!("'{v}' must be a top-level path such as \"/usr\""),
                ));
            }
            names.push(name.to_string());
        }
        profile.host_root_visible = names;
    }
    if let Some(hide) = f.hide {
        let mut paths = Vec::with_capacity(hide.len());
        for h in hide {
            if !h.starts_with('/') || h == "/" || h.split('/').any(|c| c == "..") {
                return Err(value(
                    "filesystem.hide",
                    format!("'{h}' must be an absolute path below / without '..'"),
                ));
            }
            paths.push(PathBuf::from(h));
        }
        profile.hide = paths;
    }
    if let Some(m) = f.mounts {
        profile.mounts = m;
    }
    let n = file.network;
    if let Some(mode) = n.mode {
        profile.network = mode
            .parse()
            .map_err(|message: String| value("network.mode", message))?;
    }
    for (key, list, target) in [
        ("network.allow", n.allow, &mut profile.network_allow),
        ("network.deny", n.deny, &mut profile.network_deny),
    ] {
        if let Some(list) = list {
            for text in &list {
                crate::net::policy::Rule::parse("pattern", text)
                    .map_err(|e| value(key, e.to_string()))?;
            }
            *target = list;
        }
    }
    if let Some(list) = n.dns_upstream {
        for text in &list {
            crate::net::policy::parse_upstream("address", text)
                .map_err(|e| value("network.dns_upstream", e.to_string()))?;
        }
        profile.dns_upstream = list;
    }
    if let Some(list) = n.credentials {
        for text in &list {
            crate::net::credential::Credential::binding(text)
                .map_err(|e| value("network.credentials", e.to_string()))?;
        }
        profile.network_credentials = list;
    }
    let p = file.process;
    if let Some(user) = p.user {
        profile.user = parse_user(&user).map_err(|e| value("process.user", e.to_string()))?;
    }
    if let Some(w) = p.workdir {
        if !w.starts_with('/') {
            return Err(value(
                "process.workdir",
                format!("'{w}' must be an absolute path"),
            ));
        }
        profile.workdir = PathBuf::from(w);
    }
    if let Some(mask) = p.umask {
        profile.umask = parse_umask(&mask).map_err(|e| value("process.umask", e))?;
    }
    if let Some(s) = p.seccomp {
        profile.seccomp = s;
    }
    if let Some(env) = p.env {
        for key in env.keys() {
            if !valid_env_name(key) {
                return Err(value(
                    "process.env",
                    format!("'{key}' is not a valid variable name"),
                ));
            }
        }
        profile.env = env;
    }
    Ok(())
}

/// Parses an octal umask ("022", "0027"); only permission bits.
fn parse_umask(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mask) if mask <= 0o777 && !digits.is_empty() => Ok(mask),
        _ => Err(format!(
            "'{text}' must be an octal file mode mask up to 0777 (e.g. \"022\", \"077\")"
        )),
    }
}

fn optional<T, E>(text: &str, parse: impl Fn(&str) -> Result<T, E>) -> Result<Option<T>, E> {
    if units::is_unlimited(text) {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

/// Why a `UID[:GID]` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("'{text}': the {what} must be a number (UID[:GID]), names are not resolved")]
    NotANumber { text: String, what: &'static str },
    #[error("'{text}': the {what} must be below {max} (the sandbox maps 65536 ids)")]
    OutOfRange {
        text: String,
        what: &'static str,
        max: u32,
    },
}

/// Parses "UID[:GID]". Without a GID the group is the uid's own number, except for the
/// sandbox user 100, whose group is 101.
pub fn parse_user(text: &str) -> Result<(u32, u32), UserIdError> {
    let parse_id = |s: &str, what: &'static str| -> Result<u32, UserIdError> {
        let id: u32 = s.parse().map_err(|_| UserIdError::NotANumber {
            text: text.to_string(),
            what,
        })?;
        let max = crate::ids::IDS_IN_SANDBOX;
        if id >= max {
            return Err(UserIdError::OutOfRange {
                text: text.to_string(),
                what,
                max,
            });
        }
        Ok(id)
    };
    match text.split_once(':') {
        Some((u, g)) => Ok((parse_id(u, "uid")?, parse_id(g, "gid")?)),
        None => {
            let uid = parse_id(text, "uid")?;
            Ok((uid, if uid == 100 { 101 } else { uid }))
        }
    }
}

/// POSIX-ish environment variable names: letters, digits and '_', not starting with a digit.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_is_octal_and_bounded() {
        assert_eq!(Profile::default_profile().unwrap().umask, 0o022);
        let p = Profile::from_text("t.toml", "[process]\numask = \"077\"\n").unwrap();
        assert_eq!(p.umask, 0o077);
        for bad in ["999", "", "01777", "22x", "-1"] {
            let text = format!("[process]\numask = {bad:?}\n");
            let e = Profile::from_text("t.toml", &text).unwrap_err().to_string();
            assert!(e.contains("process.umask"), "{bad}: {e}");
        }
    }

    /// Keeps `precompiled.rs` equal to the parsed default profile. After changing
    /// profiles/default.toml (or the Profile type):
    ///     NSBOX_REGENERATE_PROFILE=1 cargo test --lib profile::tests::precompiled
    #[test]
    fn precompiled_default_is_current() {
        let base = parse_file("builtin:default", BUILTIN[0].1).unwrap();
        let mut parsed = resolve_base(base).unwrap();
        parsed.name = "default".into();
        let wanted = profile_source(&parsed);
        let current = precompiled::SOURCE_FNV == DEFAULT_SOURCE_FNV
            && profile_source(&precompiled::default_profile()) == wanted;
        if current {
            return;
        }
        if std::env::var("NSBOX_REGENERATE_PROFILE").as_deref() == Ok("1") {
            let out = format!(
                "//! GENERATED by `NSBOX_REGENERATE_PROFILE=1 cargo test --lib profile::tests::precompiled`.\n\
                 //! Do not edit. profiles/default.toml, parsed ahead of time, so starting a sandbox\n\
                 //! does not run the TOML parser; `precompiled_default_is_current` fails when stale.\n\n\
                 use std::collections::BTreeMap;\nuse std::path::PathBuf;\n#[allow(unused_imports)]\nuse std::time::Duration;\n\n\
                 #[allow(unused_imports)]\nuse super::{{NetworkMode, Profile, RootChoice, SysMode}};\n\
                 #[allow(unused_imports)]\nuse crate::units::{{ByteSize, CpuQuota}};\n\n\
                 /// FNV-1a of the profile text this was made from.\n\
                 pub(super) const SOURCE_FNV: u64 = {DEFAULT_SOURCE_FNV:#018x};\n\n\
                 /// The default profile.\n\
                 #[rustfmt::skip]\n\
                 pub(super) fn default_profile() -> Profile {{\n    {wanted}\n}}\n"
            );
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/profile/precompiled.rs");
            std::fs::write(&path, out).unwrap();
            eprintln!("regenerated {}", path.display());
            return;
        }
        panic!(
            "src/profile/precompiled.rs is stale (profiles/default.toml changed): \
             run NSBOX_REGENERATE_PROFILE=1 cargo test --lib profile::tests::precompiled"
        );
    }

    #[test]
    fn default_profile_sets_every_key_and_resolves() {
        let p = Profile::default_profile().unwrap();
        assert_eq!(p.name, "default");
        assert_eq!(p.user, (100, 101));
        assert_eq!(p.network, NetworkMode::None);
        assert_eq!(p.workdir, PathBuf::from("/sandbox"));
        assert_eq!(p.memory, Some(ByteSize(2 << 30)));
        assert_eq!(p.timeout, None);
        assert!(p.hide.contains(&PathBuf::from("/home")));
        assert!(p.hide.contains(&PathBuf::from("/run")));
        assert!(p.host_root_visible.iter().any(|v| v == "usr"));
        assert!(!p.host_root_visible.iter().any(|v| v == "work"));
        assert_eq!(p.env.get("HOME").map(String::as_str), Some("/sandbox"));
    }

    #[test]
    fn builtin_profiles_all_load() {
        for name in builtin_names() {
            Profile::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let strict = Profile::load("strict").unwrap();
        assert_eq!(strict.sys, SysMode::Absent);
        assert_eq!(strict.pids, Some(128));
        // Keys strict leaves out come from the default.
        assert_eq!(strict.workdir, PathBuf::from("/sandbox"));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = Profile::from_text("x.toml", "[limits]\nmemroy = \"1g\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x.toml") && msg.contains("memroy"), "{msg}");
        let e = Profile::from_text("x.toml", "colour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_that_name_the_key() {
        let e = Profile::from_text("p", "[limits]\nmemory = \"12xb\"\n").unwrap_err();
        assert!(e.to_string().contains("limits.memory") && e.to_string().contains("12xb"));
        let e = Profile::from_text("p", "[network]\nmode = \"wifi\"\n").unwrap_err();
        assert!(e.to_string().contains("wifi"));
        let e = Profile::from_text("p", "[filesystem]\nsys = \"rw\"\n").unwrap_err();
        assert!(e.to_string().contains("filesystem.sys"));
        let e = Profile::from_text("p", "[filesystem]\nhost_root_visible = [\"/usr/lib\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("host_root_visible"));
        let e = Profile::from_text("p", "[filesystem]\nhide = [\"relative\"]\n").unwrap_err();
        assert!(e.to_string().contains("filesystem.hide"));
        let e = Profile::from_text("p", "[process]\nenv = { \"1BAD\" = \"x\" }\n").unwrap_err();
        assert!(e.to_string().contains("1BAD"));
        let e = Profile::from_text("p", "[limits]\npids = 0\n").unwrap_err();
        assert!(e.to_string().contains("limits.pids"));
    }

    #[test]
    fn network_lists_are_validated_with_the_key_named() {
        let p = Profile::from_text(
            "p",
            "[network]\nmode = \"filtered\"\nallow = [\"*.pypi.org\", \"203.0.113.0/24:443\"]\ndeny = [\"evil.pypi.org\"]\ndns_upstream = [\"192.0.2.53\"]\n",
        )
        .unwrap();
        assert_eq!(p.network, NetworkMode::Filtered);
        assert_eq!(p.network_allow, ["*.pypi.org", "203.0.113.0/24:443"]);
        assert_eq!(p.network_deny, ["evil.pypi.org"]);
        assert_eq!(p.dns_upstream, ["192.0.2.53"]);
        let p = Profile::from_text(
            "p",
            "[network]\ncredentials = [\"LLM_KEY=api.example.com\", \"GH:authorization=github.com\"]\n",
        )
        .unwrap();
        assert_eq!(
            p.network_credentials,
            ["LLM_KEY=api.example.com", "GH:authorization=github.com"]
        );
        let e = Profile::from_text("p", "[network]\ncredentials = [\"K=*.example.com\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("network.credentials"), "{e}");
        // The config file's [defaults] is the same shape: its bindings reach every profile.
        let layer = ProfileLayer {
            origin: "config".into(),
            file: parse_file(
                "config",
                "[network]\ncredentials = [\"LLM_KEY=api.example.com\"]\n",
            )
            .unwrap(),
        };
        let p = Profile::load_layered("strict", &[layer]).unwrap();
        assert_eq!(p.network_credentials, ["LLM_KEY=api.example.com"]);
        let e = Profile::from_text("p", "[network]\nallow = [\"a b\"]\n").unwrap_err();
        assert!(e.to_string().contains("network.allow"), "{e}");
        let e =
            Profile::from_text("p", "[network]\ndns_upstream = [\"dns.example\"]\n").unwrap_err();
        assert!(e.to_string().contains("network.dns_upstream"), "{e}");
    }

    #[test]
    fn unlimited_words_switch_limits_off() {
        let p = Profile::from_text(
            "p",
            "[limits]\nmemory = \"none\"\ncpus = \"unlimited\"\npids = \"max\"\n",
        )
        .unwrap();
        assert_eq!((p.memory, p.cpus, p.pids), (None, None, None));
        let p = Profile::from_text("p", "[limits]\ncpus = 1.5\n").unwrap();
        assert_eq!(p.cpus, Some(CpuQuota(1500)));
    }

    #[test]
    fn unknown_profile_names_list_the_builtins() {
        let e = Profile::load("no-such-profile").unwrap_err().to_string();
        assert!(e.contains("default") && e.contains("strict"), "{e}");
    }

    #[test]
    fn profile_paths_are_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "[limits]\npids = 7\n").unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.pids, Some(7));
        let e = Profile::load(dir.path().join("missing.toml").to_str().unwrap()).unwrap_err();
        assert!(matches!(e, ProfileError::Read { .. }));
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("100").unwrap(), (100, 101));
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("0:0").unwrap(), (0, 0));
        assert!(parse_user("root").is_err());
        assert!(parse_user("70000").is_err());
        assert!(parse_user("1:x").is_err());
    }
}
