//! `nodefile::parse` (a node's YAML file, `kith node create --config`) never panics on any
//! text. Every error's line lies inside the text (`${V}` becomes the one-line `xyz!`, so
//! substitution adds no line). Every file it accepts declares only names and values that
//! pass the checks their commands make.
//!
//! Input: UTF-8 text (other inputs are skipped).

#![no_main]

use kith_cli::nodefile::{InletTarget, parse};
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    (name == "V").then(|| "xyz!".to_owned())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, env) {
        Err(e) => {
            if let Some((line, column)) = e.at {
                // YAML breaks lines at "\r\n", "\r" and "\n" alike.
                let breaks = text.replace("\r\n", "\n").matches(['\r', '\n']).count();
                let lines = breaks as u64 + 2;
                assert!(line >= 1 && line <= lines, "{text:?}: {e}");
                assert!(column >= 1, "{text:?}: {e}");
            }
            assert!(!e.message.is_empty());
        }
        Ok(f) => {
            if let Some(name) = &f.name {
                kith_cli::home::validate_node_name(name).expect("an accepted node name");
            }
            for o in &f.tcp_outlets {
                kith_cli::node::check_target(&o.to).expect("an accepted outlet target");
            }
            for i in &f.tcp_inlets {
                kith_cli::node::listen_address(&i.from).expect("an accepted inlet address");
                if let InletTarget::Route(r) = &i.to {
                    r.parse::<kith_transport::MultiAddr>().expect("an accepted route");
                }
                let _ = i.to.route("p");
            }
            for p in [&f.allow]
                .into_iter()
                .chain(f.tcp_outlets.iter().map(|o| &o.allow))
                .flatten()
            {
                kith_identity::policy::Policy::parse(p).expect("an accepted policy");
            }
        }
    }
});
