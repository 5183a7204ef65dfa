//! edgecore.yaml (upstream's configuration file shape): parsed, turned into a configuration, and
//! written back.
#![no_main]

use kubeedge_edge::config_file::EdgeCoreFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = EdgeCoreFile::parse(text) else {
        return;
    };
    let _ = file.to_config();
    let _ = file.event_bus();
    if let Ok(yaml) = file.to_yaml() {
        let _ = EdgeCoreFile::parse(&yaml).expect("what we write parses");
    }
});
