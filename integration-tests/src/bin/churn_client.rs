//! `kith-churn-client --to HOST:PORT --channels N [--source IP]`: a client of the churn test and bench
//! (`kith_integration_tests::churn`) that opens N secure channels to a node, prints
//! `ready N`, and holds them until it is killed or its stdin closes. With `--source` its
//! connections come from that local address.

fn main() {
    if let Err(e) = kith_integration_tests::churn::client_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
