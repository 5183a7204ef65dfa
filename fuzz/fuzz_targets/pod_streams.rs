//! What pod streams take from outside: SPDY/3 header blocks (from kubectl and CRI streaming
//! servers), the tunnel's channel frames (from edges) and terminal sizes (from clients). Nothing
//! panics; what decodes as a header block encodes and decodes back the same; frames re-encode to
//! the bytes they came from.
#![no_main]

use kubeedge_core::streaming::channel::{Decoder, terminal_sizes};
use kubeedge_core::streaming::spdy::{decode_header_block, encode_header_block};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(headers) = decode_header_block(data) {
        let again = decode_header_block(&encode_header_block(&headers)).expect("our own block");
        // Names are sent in lower case; values were split at NULs already.
        let lower: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        assert_eq!(again, lower);
    }
    // Headers made of the input survive their own encoding.
    let text = String::from_utf8_lossy(data);
    let made: Vec<(String, String)> = text
        .split('\n')
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.replace('\0', "")))
        .collect();
    if made.len() <= 1000 {
        assert_eq!(
            decode_header_block(&encode_header_block(&made)).expect("our own block"),
            made
        );
    }
    let mut decoder = Decoder::default();
    let mut consumed = Vec::new();
    for chunk in data.chunks(7) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => consumed.extend_from_slice(&frame.encode()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert_eq!(&data[..consumed.len()], &consumed[..]);
    let mut rest = Vec::new();
    let _ = terminal_sizes(&mut rest, data);
});
