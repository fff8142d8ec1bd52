//! Devbox image recipes (`images/NAME.toml`): a base image, packages to install, a setup
//! script, the hosts the build may reach, and the environment the image keeps. Strict TOML:
//! unknown keys are errors naming the key and the file.
//!
//! A recipe's *hash* covers everything that changes what the build produces (base digest,
//! packages, script, hosts, environment, limits) and nothing that does not (the tag, the
//! description, the file's formatting), so an unchanged recipe is never built again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BuildError;
use crate::image::digest::{printable, Digest};

/// Bumped when what a build produces from the same recipe changes (the capture format).
const BUILD_FORMAT: u32 = 1;

/// A recipe as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub description: Option<String>,
    /// The image to start from (pulled when missing).
    pub base: Option<String>,
    /// The tag to give the result (`--tag` overrides it).
    pub tag: Option<String>,
    /// Hosts (allowlist patterns) the build's sandbox may reach; none: no network at all.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Packages installed with the base's package manager (apt-get, apk, dnf, yum).
    #[serde(default)]
    pub install: Vec<String>,
    /// A /bin/sh script run as root inside the image after the installs.
    pub setup: Option<String>,
    /// Variables the image's config keeps (and the build's sandbox sees).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Deadline for the installs and the setup ("30m").
    pub timeout: Option<String>,
    /// Memory for the build's sandbox ("4g").
    pub memory: Option<String>,
}

/// A complete recipe: what a build runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipe {
    pub base: String,
    pub hosts: Vec<String>,
    pub install: Vec<String>,
    pub setup: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<String>,
    pub memory: Option<String>,
}

impl RecipeFile {
    pub fn parse(path: &Path, text: &str) -> Result<RecipeFile, BuildError> {
        toml::from_str(text).map_err(|e| BuildError::Recipe {
            origin: path.display().to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    pub fn load(path: &Path) -> Result<RecipeFile, BuildError> {
        let text = std::fs::read_to_string(path).map_err(|e| BuildError::Recipe {
            origin: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Checks the recipe and fills it in (`origin` names it in messages).
    pub fn complete(self, origin: &str) -> Result<Recipe, BuildError> {
        let bad = |message: String| BuildError::Recipe {
            origin: origin.to_string(),
            message,
        };
        let base = self.base.ok_or_else(|| {
            bad("no base image: set `base = \"IMAGE\"` (or pass --base IMAGE)".into())
        })?;
        for package in &self.install {
            let ok = !package.is_empty()
                && !package.starts_with('-')
                && package
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-:=~*/@".contains(&b));
            if !ok {
                return Err(bad(format!(
                    "install: '{}' is not a package name (letters, digits and ._+-:=~*/@)",
                    printable(package)
                )));
            }
        }
        for host in &self.hosts {
            if host.is_empty() || host.chars().any(char::is_whitespace) {
                return Err(bad(format!(
                    "hosts: '{}' is not a host pattern",
                    printable(host)
                )));
            }
        }
        for key in self.env.keys() {
            if !crate::profile::valid_env_name(key) {
                return Err(bad(format!(
                    "env: '{}' is not a variable name",
                    printable(key)
                )));
            }
        }
        if let Some(t) = &self.timeout {
            crate::units::parse_duration(t).map_err(|e| bad(format!("timeout: {e}")))?;
        }
        if let Some(m) = &self.memory {
            m.parse::<crate::units::ByteSize>()
                .map_err(|e| bad(format!("memory: {e}")))?;
        }
        Ok(Recipe {
            base,
            hosts: self.hosts,
            install: self.install,
            setup: self.setup,
            env: self.env,
            timeout: self.timeout,
            memory: self.memory,
        })
    }
}

impl Recipe {
    /// The content hash of this recipe on `base` (the base image's manifest digest).
    pub fn hash(&self, base: &Digest) -> String {
        #[derive(Serialize)]
        struct Hashed<'a> {
            format: u32,
            base: String,
            hosts: &'a [String],
            install: &'a [String],
            setup: &'a Option<String>,
            env: &'a BTreeMap<String, String>,
            timeout: &'a Option<String>,
            memory: &'a Option<String>,
        }
        let hashed = Hashed {
            format: BUILD_FORMAT,
            base: base.to_string(),
            hosts: &self.hosts,
            install: &self.install,
            setup: &self.setup,
            env: &self.env,
            timeout: &self.timeout,
            memory: &self.memory,
        };
        // serde_json writes struct fields in order and BTreeMaps sorted: canonical enough.
        let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
        Digest::of(&bytes).to_string()
    }

    /// The shell script the build's sandbox runs: the installs (with whichever package
    /// manager the base has), then the setup. Output goes to stderr (stdout is nsbox's).
    pub fn script(&self) -> String {
        let mut s = String::from("exec 1>&2\nset -e\numask 022\n");
        if !self.install.is_empty() {
            let pkgs = self.install.join(" ");
            s.push_str(&format!(
                r#"if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o APT::Sandbox::User=root update
  apt-get -o APT::Sandbox::User=root install -y --no-install-recommends {pkgs}
  rm -rf /var/lib/apt/lists/*
elif command -v apk >/dev/null 2>&1; then
  apk add --no-cache {pkgs}
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y {pkgs} && dnf clean all
elif command -v yum >/dev/null 2>&1; then
  yum install -y {pkgs} && yum clean all
else
  echo "nsbox build: the base image has no package manager nsbox knows (apt-get, apk, dnf, yum) to install: {pkgs}" >&2
  exit 1
fi
"#
            ));
        }
        if let Some(setup) = &self.setup {
            s.push_str(setup);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, BuildError> {
        RecipeFile::parse(Path::new("images/x.toml"), text)?.complete("images/x.toml")
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_file() {
        let e = parse("base = \"x\"\ninstal = [\"git\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("images/x.toml") && e.contains("instal"), "{e}");
        let e = parse("install = [\"git\"]\n").unwrap_err().to_string();
        assert!(e.contains("no base image"), "{e}");
        let e = parse("base = \"x\"\ninstall = [\"git; rm -rf /\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a package name"), "{e}");
        let e = parse("base = \"x\"\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn the_shipped_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = RecipeFile::load(&path).unwrap();
            assert!(file.tag.is_some() && file.description.is_some(), "{path:?}");
            let recipe = file.complete(&path.display().to_string()).unwrap();
            assert!(!recipe.hosts.is_empty(), "{path:?} installs from somewhere");
            seen += 1;
        }
        assert!(seen >= 4, "python, node, rust, agent");
    }

    #[test]
    fn the_hash_follows_content_not_form() {
        let base = Digest::of(b"base");
        let a = parse("base = \"x\"\ninstall = [\"git\"]\nsetup = \"echo hi\"\n").unwrap();
        let b = parse("# same, written differently\ndescription = \"d\"\ntag = \"t:1\"\nbase = \"y\"\nsetup = 'echo hi'\ninstall = ['git']\n").unwrap();
        assert_eq!(a.hash(&base), b.hash(&base));
        let c = parse("base = \"x\"\ninstall = [\"git\"]\nsetup = \"echo bye\"\n").unwrap();
        assert_ne!(a.hash(&base), c.hash(&base));
        assert_ne!(a.hash(&base), a.hash(&Digest::of(b"other base")));
    }
}
