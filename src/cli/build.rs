//! `nsbox build` (a devbox image from a recipe and flags) and `nsbox setup` (every image the
//! config lists).

use std::path::{Path, PathBuf};

use super::error;
use crate::build::{self, BuildError, BuildOutcome, BuildRequest, RecipeFile};
use crate::config::Config;
use crate::exit;

const BUILD_HELP: &str = "\
A recipe (images/NAME.toml) names a base image, packages, a setup script, the hosts the build
may reach and the environment the image keeps:

  description = \"Python devbox\"
  base = \"python:3.12-slim\"
  tag = \"devbox/python:3.12\"
  hosts = [\"deb.debian.org\", \"pypi.org\", \"files.pythonhosted.org\"]
  install = [\"git\", \"curl\"]
  setup = \"pip install --no-cache-dir pytest ruff\"
  env = { PIP_DISABLE_PIP_VERSION_CHECK = \"1\" }
  timeout = \"30m\"

The installs (apt-get, apk, dnf or yum, whichever the base has) and the setup run as root
without capabilities in a sandbox on the base, with a filtered network that reaches only the
recipe's hosts (no network when it names none). What they change becomes one new layer.
The image records the hash of the recipe and the base's digest: building an unchanged recipe
again does nothing (--force builds anyway). The installs' and setup's output goes to stderr;
if they fail, nothing is tagged. --log-network prints every lookup and connection the build
makes, allowed or refused: run it once without hosts to learn which a recipe needs.

Examples:
  nsbox build --file images/python.toml
  nsbox build --base busybox:latest --setup 'echo hi > /etc/motd' --tag mybox:1";

/// `nsbox build`.
#[derive(Debug, clap::Args)]
#[command(after_help = BUILD_HELP)]
pub struct BuildArgs {
    /// The recipe (TOML); flags below add to it or override it.
    #[arg(long, short = 'f', value_name = "RECIPE")]
    file: Option<PathBuf>,
    /// The base image (overrides the recipe's).
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
    /// A package to install (added to the recipe's). Repeatable.
    #[arg(long = "install", value_name = "PKG")]
    install: Vec<String>,
    /// The setup script (replaces the recipe's).
    #[arg(long, value_name = "SCRIPT")]
    setup: Option<String>,
    /// A host the build may reach (added to the recipe's hosts). Repeatable.
    #[arg(long = "allow", value_name = "HOST")]
    allow: Vec<String>,
    /// The image's name (default: the recipe's tag).
    #[arg(long, short = 't', value_name = "NAME[:TAG]")]
    tag: Option<String>,
    /// Build even when an image of this recipe and base exists.
    #[arg(long)]
    force: bool,
    /// Print each DNS answer and connection the build's network allows or refuses (on
    /// stderr): how to find the hosts a recipe needs.
    #[arg(long)]
    log_network: bool,
}

/// `nsbox setup`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Builds every image the config's [images.NAME] tables list (recipe = \"PATH\", optional\ntag), skipping those whose recipe and base did not change. Example config:\n\n  [images.python]\n  recipe = \"images/python.toml\"\n  [images.agent]\n  recipe = \"images/agent.toml\"\n  tag = \"devbox:latest\""
)]
pub struct SetupArgs {
    /// Build even unchanged images.
    #[arg(long)]
    force: bool,
}

fn request(args: BuildArgs) -> Result<BuildRequest, BuildError> {
    let (mut file, origin) = match &args.file {
        Some(path) => (RecipeFile::load(path)?, path.display().to_string()),
        None => (RecipeFile::default(), "command line".to_string()),
    };
    if let Some(base) = args.base {
        file.base = Some(base);
    }
    file.install.extend(args.install);
    file.hosts.extend(args.allow);
    if let Some(setup) = args.setup {
        file.setup = Some(setup);
    }
    let tag = args
        .tag
        .or(file.tag.clone())
        .ok_or_else(|| BuildError::Recipe {
            origin: origin.clone(),
            message: "no tag — hint: pass --tag NAME[:TAG] or set `tag` in the recipe".into(),
        })?;
    let recipe = file.complete(&origin)?;
    Ok(BuildRequest {
        recipe,
        origin,
        tag,
        force: args.force,
        log_network: args.log_network,
    })
}

fn report(outcome: &BuildOutcome, tag: &str) {
    match outcome {
        BuildOutcome::Unchanged(image) => {
            println!(
                "unchanged {tag} ({}): recipe and base as built",
                image.digest
            )
        }
        BuildOutcome::Retagged(image) => println!(
            "tagged {tag} ({}): an image of this recipe and base was built before",
            image.digest
        ),
        BuildOutcome::Built {
            image,
            seconds,
            entries,
        } => println!(
            "built {tag} ({}, {} layers, {entries} entries changed, {seconds:.1} s)",
            image.digest,
            image.layers.len()
        ),
    }
}

pub fn build(args: BuildArgs, state_root: &Path, config: &Config, t0: u64) -> i32 {
    let result = request(args)
        .and_then(|req| build::build(&req, state_root, config, t0).map(|outcome| (outcome, req)));
    match result {
        Ok((outcome, req)) => {
            report(&outcome, &req.tag);
            0
        }
        Err(e) => {
            let failure = crate::report::Failure::of(&e);
            error(&failure.to_string());
            failure.exit_code()
        }
    }
}

pub fn setup(args: SetupArgs, state_root: &Path, config: &Config, t0: u64) -> i32 {
    if config.images.is_empty() {
        println!("no images configured — add [images.NAME] tables with `recipe = \"PATH\"` to the config (see `nsbox config`)");
        return 0;
    }
    let mut failed = 0;
    for (name, entry) in &config.images {
        let args = BuildArgs {
            file: Some(entry.recipe.clone()),
            base: None,
            install: Vec::new(),
            setup: None,
            allow: Vec::new(),
            tag: entry.tag.clone(),
            force: args.force,
            log_network: false,
        };
        let result = request(args)
            .and_then(|req| build::build(&req, state_root, config, t0).map(|o| (o, req.tag)));
        match result {
            Ok((outcome, tag)) => report(&outcome, &tag),
            Err(e) => {
                error(&format!("images.{name} ({}): {e}", entry.origin.display()));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        error(&format!(
            "{failed} of {} images failed",
            config.images.len()
        ));
        return exit::NSBOX_FAILED;
    }
    0
}
