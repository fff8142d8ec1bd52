//! `nsbox config`: the effective configuration, key by key, with where each value came from.

use std::path::Path;

use super::error;
use crate::config::{Config, ConfigError, Discovery};

/// `nsbox config`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Files read, later ones overriding earlier ones: /etc/nsbox/config.toml,\n$XDG_CONFIG_HOME/nsbox/config.toml (~/.config/...), ./nsbox.toml; or only the file given\nwith --config (or NSBOX_CONFIG). Unknown keys are errors. Keys a file leaves out keep the\nbuilt-in value (`builtin`; [defaults] comes from profiles/default.toml)."
)]
pub struct ConfigArgs {
    /// One JSON array of {key, value, origin} instead of TOML-like lines.
    #[arg(long)]
    json: bool,
}

/// The configuration for this run (`--config`, `NSBOX_CONFIG`, or the standard places).
pub(super) fn load(flag: Option<&Path>) -> Result<Config, ConfigError> {
    Config::load(&Discovery::standard(flag))
}

pub fn show(args: ConfigArgs, flag: Option<&Path>) -> i32 {
    let fail = |failure: crate::report::Failure| {
        error(&failure.to_string());
        failure.exit_code()
    };
    let config = match load(flag) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    // The defaults must also make a valid profile (values are checked there).
    if let Err(e) = crate::profile::Profile::load_layered("default", &config.defaults) {
        return fail(e.into());
    }
    let settings = match config.settings() {
        Ok(s) => s,
        Err(e) => return fail(e.into()),
    };
    if args.json {
        let rows: Vec<serde_json::Value> = settings
            .iter()
            .map(|s| serde_json::json!({"key": s.key, "value": s.value, "origin": s.origin}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return 0;
    }
    if config.files.is_empty() {
        println!("# no config file found: built-in values only");
    } else {
        for f in &config.files {
            println!("# read {}", f.display());
        }
    }
    let width = settings
        .iter()
        .map(|s| s.key.len() + s.value.len() + 3)
        .max()
        .unwrap_or(0)
        .min(72);
    for s in &settings {
        let line = format!("{} = {}", s.key, s.value);
        println!("{line:<width$}  # {}", s.origin);
    }
    0
}
