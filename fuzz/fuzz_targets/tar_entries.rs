//! The tar reader of image layers and `nsbox cp -`: any bytes give entries or an error, never
//! a panic, a hang or an allocation beyond the input (ustar, GNU long names, PAX records).
//! Each entry's data is read in full; a regular file's data never exceeds its header's size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsbox::image::tar::TarReader;

fuzz_target!(|data: &[u8]| {
    let mut reader = TarReader::new(data);
    let mut buf = [0u8; 4096];
    // The archive is at most `data.len()` bytes: more entries than 512-byte blocks is a loop.
    for _ in 0..=data.len() / 512 + 1 {
        match reader.next_entry() {
            Ok(Some(header)) => {
                let mut read = 0u64;
                loop {
                    match reader.read_data(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => read += n as u64,
                        Err(_) => return,
                    }
                }
                assert!(read <= header.size, "{read} > {}", header.size);
                assert!(reader.position() <= data.len() as u64);
            }
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more entries than blocks");
});
