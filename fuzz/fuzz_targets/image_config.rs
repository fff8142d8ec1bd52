//! An image's config JSON (from `nsbox load`, `import`, a pull): any bytes parse to a config
//! or an error, never a panic; a parsed config written out parses again to the same JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::image::oci::{ImageConfig, Index, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let out = serde_json::to_vec(&config).expect("a parsed config serialises");
        let again: ImageConfig = serde_json::from_slice(&out).expect("and parses again");
        assert_eq!(serde_json::to_vec(&again).unwrap(), out);
    }
    let _ = serde_json::from_slice::<Manifest>(data);
    if let Ok(index) = serde_json::from_slice::<Index>(data) {
        let _ = nsbox::image::oci::pick_platform(&index);
    }
});
