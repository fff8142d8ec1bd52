//! The workload's environment from `--env`, `--env-file`, `--secret` and `--secret-env`: names
//! checked, values read, secrets never echoed back in an error.

use std::collections::BTreeMap;
use std::path::Path;

use super::SpecError;
use crate::profile;

pub(super) fn check_env_name(flag: &'static str, name: &str) -> Result<(), SpecError> {
    if profile::valid_env_name(name) {
        Ok(())
    } else {
        Err(SpecError::Env {
            flag,
            entry: name.to_string(),
            reason: "not a valid variable name (letters, digits, '_')".into(),
        })
    }
}

pub(super) fn mask_all(entry: &str) -> String {
    match entry.split_once('=') {
        Some((k, _)) => format!("{k}=***"),
        None => "***".to_string(),
    }
}

/// TERM for a command given a terminal: nsbox's own, unless unset or dumb.
pub(crate) fn tty_term(host_env: &BTreeMap<String, String>) -> String {
    host_env
        .get("TERM")
        .filter(|t| !t.is_empty() && t.as_str() != "dumb")
        .cloned()
        .unwrap_or_else(|| "xterm-256color".to_string())
}

/// `K=V` sets K; a bare `K` copies K from nsbox's environment (skipped when unset).
pub(crate) fn parse_env_entry(
    flag: &'static str,
    entry: &str,
    host_env: &BTreeMap<String, String>,
) -> Result<Option<(String, String)>, SpecError> {
    match entry.split_once('=') {
        Some((k, v)) => {
            check_env_name(flag, k)?;
            if v.contains('\0') {
                return Err(SpecError::Env {
                    flag,
                    entry: k.to_string(),
                    reason: "the value contains a NUL byte".into(),
                });
            }
            Ok(Some((k.to_string(), v.to_string())))
        }
        None => {
            check_env_name(flag, entry)?;
            Ok(host_env.get(entry).map(|v| (entry.to_string(), v.clone())))
        }
    }
}

/// Reads a docker-style env file: `K=V` lines, `#` comments, blank lines, bare `K` copied from
/// nsbox's environment, an optional leading `export `.
pub(crate) fn read_env_file(
    path: &Path,
    host_env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, SpecError> {
    // Not through a link (crate::host::path): the file may lie where a sandbox could plant one.
    let text = crate::host::path::read_no_follow(path)
        .map_err(|e| e.reason())
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()))
        .map_err(|reason| SpecError::EnvFile {
            path: path.to_path_buf(),
            reason,
        })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match parse_env_entry("--env-file", line, host_env) {
            Ok(Some(kv)) => out.push(kv),
            Ok(None) => {}
            Err(_) => {
                return Err(SpecError::EnvFile {
                    path: path.to_path_buf(),
                    reason: format!("line {}: expected NAME=VALUE or NAME", n + 1),
                })
            }
        }
    }
    Ok(out)
}
