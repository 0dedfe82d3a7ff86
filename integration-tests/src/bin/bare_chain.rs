//! `kith-bare-chain inlet|hop|outlet --to HOST:PORT [--link N] [--chunk BYTES]`: one process
//! of the bare crypto chain the deployed portal bench measures kith against
//! (`kith_integration_tests::bare_chain`). Prints the loopback port it listens on, then
//! carries connections until its stdin closes.

fn main() {
    if let Err(e) = kith_integration_tests::bare_chain::chain_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
