//! Image recipes (`nsbox build`) and nsbox's config files: any text parses to a value or an
//! error with a one-line message, never a panic; a complete recipe hashes and renders its
//! script.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use nsbox::build::recipe::RecipeFile;
use nsbox::config::Config;
use nsbox::image::digest::Digest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RecipeFile::parse(Path::new("recipe.toml"), text) {
        Ok(file) => {
            if let Ok(recipe) = file.complete("recipe.toml") {
                let _ = recipe.hash(&Digest::of(b"base"));
                let _ = recipe.script();
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    if let Ok(config) = Config::from_texts(&[(PathBuf::from("config.toml"), text.to_string())]) {
        let _ = config.settings();
        let _ = config.registry_settings("registry.example:5000");
    }
});
