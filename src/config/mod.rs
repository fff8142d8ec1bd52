//! nsbox's configuration file: site defaults for sandboxes, registry settings, how `--image`
//! pulls, the devbox images `nsbox setup` builds, and the clean-up policy.
//!
//! Discovery: `--config FILE` (or `NSBOX_CONFIG`) reads that file alone; otherwise
//! `/etc/nsbox/config.toml`, `$XDG_CONFIG_HOME/nsbox/config.toml` (`~/.config/...`) and
//! `./nsbox.toml` are read in that order, a later file overriding the keys an earlier one set.
//! Every file is strict TOML: an unknown key is an error naming the key and the file.
//!
//! The defaults of every key live in one place: [`BUILTIN`] here, and
//! `profiles/default.toml` for `[defaults]`, which has the shape of a profile and is applied as
//! a layer over the built-in default profile (see `Profile::load_layered`), so the config
//! feeds the same spec building as profiles and flags do. This module parses and merges; it
//! decides nothing about sandboxes, pulls or builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::profile::{ProfileFile, ProfileLayer};
use crate::registry::pull::{PullOptions, PullPolicy};
use crate::registry::RegistrySettings;
use crate::units;

/// Where the system-wide configuration lives.
pub const SYSTEM_CONFIG: &str = "/etc/nsbox/config.toml";
/// The configuration in the current directory (a project's).
pub const LOCAL_CONFIG: &str = "nsbox.toml";

/// The built-in values of every key outside `[defaults]` (whose built-in values are
/// `profiles/default.toml`'s).
pub const BUILTIN: &str = r#"
[pull]
# When `exec --image` / `create --image` pull: "missing", "always" or "never".
policy = "missing"
# Layers downloaded at once.
jobs = 4

[cleanup]
# How long an idle session lives unless `create --max-age` says otherwise ("none": forever).
session_max_age = "1h"
# What an idle session does after that: "stop" or "pause" (`create --idle-action`).
session_idle_action = "stop"
# `nsbox prune` removes stopped sessions only once they stopped this long ago ("none": all).
prune_older_than = "none"
"#;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {message} — hint: the README's *Configuration* section lists every key", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One config file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    defaults: Option<ProfileFile>,
    #[serde(default)]
    registries: BTreeMap<String, RegistryFile>,
    pull: Option<PullFile>,
    #[serde(default)]
    images: BTreeMap<String, ImageFile>,
    cleanup: Option<CleanupFile>,
    serve: Option<ServeFile>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    insecure_http: Option<bool>,
    tls: Option<bool>,
    ca_file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullFile {
    policy: Option<String>,
    jobs: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    recipe: Option<String>,
    tag: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupFile {
    session_max_age: Option<String>,
    session_idle_action: Option<String>,
    prune_older_than: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    socket: Option<String>,
    listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_sandboxes: Option<usize>,
    max_connections: Option<usize>,
    max_body: Option<String>,
    pool: Option<Vec<String>>,
}

/// `[serve]`: defaults of `nsbox serve`'s flags (a flag given wins). Values are checked by
/// the server (addresses, pool entries), not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSettings {
    pub socket: Option<PathBuf>,
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_sandboxes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_body: Option<u64>,
    /// `--pool` entries (`IMAGE=N[,...]`).
    pub pool: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    pub policy: PullPolicy,
    pub jobs: usize,
}

/// A devbox image `nsbox setup` builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The recipe file (relative paths are taken from the config file's directory).
    pub recipe: PathBuf,
    /// The tag to build (None: the recipe's own).
    pub tag: Option<String>,
    /// The config file that named it.
    pub origin: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub session_max_age: Option<Duration>,
    pub session_idle_action: crate::session::daemon::IdleAction,
    pub prune_older_than: Option<Duration>,
}

/// One effective key, its value as TOML, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub origin: String,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// `[defaults]` of each file, in order (layers over the built-in default profile).
    pub defaults: Vec<ProfileLayer>,
    registries: BTreeMap<String, RegistrySettings>,
    pub pull: PullConfig,
    pub images: BTreeMap<String, ImageEntry>,
    pub cleanup: Cleanup,
    pub serve: ServeSettings,
    /// The files' texts, for [`Config::settings`].
    sources: Vec<(PathBuf, String)>,
}

/// Where to look for config files.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `--config` (or `NSBOX_CONFIG`): this file only.
    pub explicit: Option<PathBuf>,
    /// The system file (tests point it elsewhere).
    pub system: PathBuf,
    /// `$XDG_CONFIG_HOME/nsbox/config.toml`.
    pub user: Option<PathBuf>,
    /// `./nsbox.toml`.
    pub local: PathBuf,
}

impl Discovery {
    /// The standard places, with `--config` (else `NSBOX_CONFIG`) taking over.
    pub fn standard(flag: Option<&Path>) -> Discovery {
        let explicit = flag.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("NSBOX_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .map(|dir| dir.join("nsbox/config.toml"));
        Discovery {
            explicit,
            system: PathBuf::from(SYSTEM_CONFIG),
            user,
            local: PathBuf::from(LOCAL_CONFIG),
        }
    }

    /// The files to read, in order (an explicit file must exist; the others may not).
    fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        if let Some(path) = &self.explicit {
            // Not only regular files: `--config /dev/null` is "no configuration".
            if !path.exists() || path.is_dir() {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file (given with --config or NSBOX_CONFIG)",
                    ),
                });
            }
            return Ok(vec![path.clone()]);
        }
        Ok([Some(&self.system), self.user.as_ref(), Some(&self.local)]
            .into_iter()
            .flatten()
            .filter(|p| p.is_file())
            .cloned()
            .collect())
    }
}

impl Config {
    /// Reads and merges the files `discovery` finds (none: the built-in configuration).
    pub fn load(discovery: &Discovery) -> Result<Config, ConfigError> {
        let mut texts = Vec::new();
        for path in discovery.files()? {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            texts.push((path, text));
        }
        Config::from_texts(&texts)
    }

    /// Merges config texts (path, contents) over the built-in configuration. With no file
    /// (the usual case for `nsbox exec`) nothing is parsed: the built-in values are compiled
    /// in ([`Config::builtin`], checked against [`BUILTIN`] by a test).
    pub fn from_texts(texts: &[(PathBuf, String)]) -> Result<Config, ConfigError> {
        let mut config = Config::builtin();
        for (path, text) in texts {
            let file = parse_file(path, text)?;
            config.apply(path, file)?;
            config.files.push(path.clone());
        }
        config.sources = texts.to_vec();
        Ok(config)
    }

    /// Every key's effective value and where it came from (for `nsbox config`).
    pub fn settings(&self) -> Result<Vec<Setting>, ConfigError> {
        let builtin = Path::new("builtin");
        let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
        let profile_text = crate::profile::builtin_text("default").unwrap_or_default();
        record(
            &mut settings,
            "defaults",
            &parse_table(builtin, profile_text)?,
            "builtin (profiles/default.toml)",
        );
        record(
            &mut settings,
            "",
            &parse_table(builtin, BUILTIN)?,
            "builtin",
        );
        for (path, text) in &self.sources {
            record(
                &mut settings,
                "",
                &parse_table(path, text)?,
                &path.display().to_string(),
            );
        }
        Ok(settings.into_values().collect())
    }

    fn apply(&mut self, path: &Path, file: ConfigFile) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("{key}: {message}"),
        };
        if let Some(defaults) = file.defaults {
            self.defaults.push(ProfileLayer {
                origin: path.display().to_string(),
                file: defaults,
            });
        }
        for (host, r) in file.registries {
            let entry = self.registries.entry(host).or_default();
            if let Some(v) = r.insecure_http {
                entry.insecure_http = v;
            }
            if let Some(v) = r.tls {
                entry.tls = Some(v);
            }
            if let Some(ca) = r.ca_file {
                entry.ca_file = Some(relative_to(path, &ca));
            }
        }
        if let Some(pull) = file.pull {
            if let Some(policy) = pull.policy {
                self.pull.policy = policy
                    .parse()
                    .map_err(|m: String| invalid("pull.policy", m))?;
            }
            if let Some(jobs) = pull.jobs {
                if !(1..=64).contains(&jobs) {
                    return Err(invalid("pull.jobs", format!("{jobs} is not 1 to 64")));
                }
                self.pull.jobs = jobs as usize;
            }
        }
        for (name, image) in file.images {
            let existing = self.images.get(&name).cloned();
            let recipe = match (image.recipe, &existing) {
                (Some(r), _) => relative_to(path, &r),
                (None, Some(e)) => e.recipe.clone(),
                (None, None) => {
                    return Err(invalid(
                        &format!("images.{name}"),
                        "needs `recipe = \"PATH\"` (a recipe file, e.g. images/python.toml)".into(),
                    ))
                }
            };
            let tag = image.tag.or(existing.and_then(|e| e.tag));
            self.images.insert(
                name,
                ImageEntry {
                    recipe,
                    tag,
                    origin: path.to_path_buf(),
                },
            );
        }
        if let Some(c) = file.cleanup {
            let duration = |key: &str, text: &str| -> Result<Option<Duration>, ConfigError> {
                if units::is_unlimited(text) {
                    return Ok(None);
                }
                units::parse_duration(text)
                    .map(Some)
                    .map_err(|e| invalid(key, e.to_string()))
            };
            if let Some(t) = c.session_max_age {
                self.cleanup.session_max_age = duration("cleanup.session_max_age", &t)?;
            }
            if let Some(t) = c.session_idle_action {
                self.cleanup.session_idle_action = t
                    .parse()
                    .map_err(|e: String| invalid("cleanup.session_idle_action", e))?;
            }
            if let Some(t) = c.prune_older_than {
                self.cleanup.prune_older_than = duration("cleanup.prune_older_than", &t)?;
            }
        }
        if let Some(sv) = file.serve {
            let s = &mut self.serve;
            if let Some(v) = sv.socket {
                s.socket = Some(relative_to(path, &v));
            }
            s.listen = sv.listen.or(s.listen.take());
            if let Some(v) = sv.tls_cert {
                s.tls_cert = Some(relative_to(path, &v));
            }
            if let Some(v) = sv.tls_key {
                s.tls_key = Some(relative_to(path, &v));
            }
            s.max_sandboxes = sv.max_sandboxes.or(s.max_sandboxes);
            s.max_connections = sv.max_connections.or(s.max_connections);
            if let Some(v) = sv.max_body {
                let size: units::ByteSize = v
                    .parse()
                    .map_err(|e: units::UnitError| invalid("serve.max_body", e.to_string()))?;
                s.max_body = Some(size.0);
            }
            if let Some(pool) = sv.pool {
                s.pool = pool;
            }
        }
        Ok(())
    }

    /// How to talk to `registry` (host[:port]).
    pub fn registry_settings(&self, registry: &str) -> RegistrySettings {
        self.registries.get(registry).cloned().unwrap_or_default()
    }

    /// Options for pulling from `registry` (credentials under `state_root`).
    pub fn pull_options(&self, state_root: &Path, registry: &str, progress: bool) -> PullOptions {
        PullOptions {
            limits: Default::default(),
            progress,
            jobs: self.pull.jobs,
            settings: self.registry_settings(registry),
            credentials: crate::registry::auth::CredentialStore::new(state_root),
        }
    }

    /// The built-in configuration: [`BUILTIN`]'s values (a test keeps them equal).
    pub fn builtin() -> Config {
        let mut config = Config::empty();
        config.cleanup.session_max_age = Some(Duration::from_secs(3600));
        config
    }

    /// Nothing set.
    fn empty() -> Config {
        Config {
            files: Vec::new(),
            defaults: Vec::new(),
            registries: BTreeMap::new(),
            pull: PullConfig {
                policy: PullPolicy::Missing,
                jobs: crate::registry::pull::DEFAULT_JOBS,
            },
            images: BTreeMap::new(),
            cleanup: Cleanup {
                session_max_age: None,
                session_idle_action: crate::session::daemon::IdleAction::Stop,
                prune_older_than: None,
            },
            serve: ServeSettings::default(),
            sources: Vec::new(),
        }
    }
}

/// `value` as a path: relative ones are taken from the config file's directory.
fn relative_to(config: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| p.to_path_buf(), |d| d.join(p))
}

/// A TOML error as the parser lays it out (a line, the source line and a caret under the
/// spot), its continuation lines indented under nsbox's own "config FILE:" prefix.
fn toml_message(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n    ")
}

fn parse_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: toml_message(&e),
    })
}

fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: toml_message(&e),
        })
}

/// Keys are flattened to `section.name.key` (three levels: deeper tables, such as a
/// profile's `env`, are one value, as they are applied whole).
fn record(out: &mut BTreeMap<String, Setting>, prefix: &str, table: &toml::Table, origin: &str) {
    fn key_part(k: &str) -> String {
        if !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            k.to_string()
        } else {
            format!("{k:?}")
        }
    }
    fn walk(
        out: &mut BTreeMap<String, Setting>,
        path: Vec<String>,
        value: &toml::Value,
        origin: &str,
    ) {
        match value {
            toml::Value::Table(t) if path.len() < 3 => {
                for (k, v) in t {
                    let mut p = path.clone();
                    p.push(key_part(k));
                    walk(out, p, v, origin);
                }
            }
            _ => {
                let key = path.join(".");
                out.insert(
                    key.clone(),
                    Setting {
                        key,
                        value: value.to_string(),
                        origin: origin.to_string(),
                    },
                );
            }
        }
    }
    let start: Vec<String> = if prefix.is_empty() {
        Vec::new()
    } else {
        vec![prefix.to_string()]
    };
    for (k, v) in table {
        if k == "description" && prefix == "defaults" {
            continue;
        }
        let mut p = start.clone();
        p.push(key_part(k));
        walk(out, p, v, origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(texts: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_texts(
            &texts
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_compiled_builtin_matches_the_builtin_text() {
        let builtin = Path::new("builtin");
        let mut parsed = Config::empty();
        parsed
            .apply(builtin, parse_file(builtin, BUILTIN).unwrap())
            .unwrap();
        let compiled = Config::builtin();
        assert_eq!(parsed.pull, compiled.pull);
        assert_eq!(parsed.cleanup, compiled.cleanup);
        assert_eq!(parsed.registries, compiled.registries);
        assert_eq!(parsed.images, compiled.images);
        assert!(parsed.defaults.is_empty() && compiled.defaults.is_empty());
    }

    #[test]
    fn builtin_values_and_origins() {
        let c = Config::builtin();
        assert_eq!(c.pull.policy, PullPolicy::Missing);
        assert_eq!(c.pull.jobs, 4);
        assert_eq!(c.cleanup.session_max_age, Some(Duration::from_secs(3600)));
        let memory = c
            .settings()
            .unwrap()
            .into_iter()
            .find(|s| s.key == "defaults.limits.memory")
            .unwrap();
        assert_eq!(memory.value, "\"2g\"");
        assert!(memory.origin.contains("profiles/default.toml"));
    }

    #[test]
    fn later_files_override_and_say_so() {
        let c = cfg(&[
            (
                "/etc/nsbox/config.toml",
                "[defaults.limits]\nmemory = \"4g\"\n[pull]\njobs = 2\n[registries.\"127.0.0.1:5000\"]\ntls = true\nca_file = \"ca.pem\"\n",
            ),
            ("/w/nsbox.toml", "[pull]\npolicy = \"never\"\n[images.py]\nrecipe = \"images/python.toml\"\n[cleanup]\nprune_older_than = \"7d\"\n"),
        ])
        .unwrap();
        assert_eq!(c.pull.policy, PullPolicy::Never);
        assert_eq!(c.pull.jobs, 2);
        assert_eq!(
            c.registry_settings("127.0.0.1:5000").ca_file,
            Some(PathBuf::from("/etc/nsbox/ca.pem"))
        );
        assert_eq!(
            c.images["py"].recipe,
            PathBuf::from("/w/images/python.toml")
        );
        assert_eq!(
            c.cleanup.prune_older_than,
            Some(Duration::from_secs(7 * 86400))
        );
        let settings = c.settings().unwrap();
        let find = |k: &str| settings.iter().find(|s| s.key == k).unwrap().clone();
        assert_eq!(
            find("defaults.limits.memory").origin,
            "/etc/nsbox/config.toml"
        );
        assert_eq!(find("defaults.limits.memory").value, "\"4g\"");
        assert_eq!(find("pull.policy").origin, "/w/nsbox.toml");
        assert_eq!(find("pull.jobs").origin, "/etc/nsbox/config.toml");
        assert_eq!(find("cleanup.session_max_age").origin, "builtin");
        assert!(settings
            .iter()
            .any(|s| s.key == "registries.\"127.0.0.1:5000\".tls"));
        // The defaults feed the profile.
        let p = crate::profile::Profile::load_layered("default", &c.defaults).unwrap();
        assert_eq!(p.memory.map(|m| m.0), Some(4 << 30));
        let strict = crate::profile::Profile::load_layered("strict", &c.defaults).unwrap();
        assert_eq!(
            strict.memory.map(|m| m.0),
            Some(512 << 20),
            "a named profile wins"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        for (text, key) in [
            ("[pull]\npolcy = \"never\"\n", "polcy"),
            ("[defaults.limits]\nmemroy = \"1g\"\n", "memroy"),
            ("colour = 1\n", "colour"),
            ("[registries.x]\ninsecure = true\n", "insecure"),
        ] {
            let e = cfg(&[("/tmp/c.toml", text)]).unwrap_err().to_string();
            assert!(e.contains("/tmp/c.toml") && e.contains(key), "{e}");
        }
        let e = cfg(&[("/tmp/c.toml", "[pull]\npolicy = \"sometimes\"\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pull.policy") && e.contains("sometimes"), "{e}");
        let e = cfg(&[("/tmp/c.toml", "[images.x]\ntag = \"x:1\"\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("recipe"), "{e}");
    }
}
