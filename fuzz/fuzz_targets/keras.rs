//! `keras`: bytes through the entry point of the same name in fuzz/entries.rs.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = entries::keras(data);
});
