//! The wall clock, read in one place: whole seconds since the Unix epoch, the unit of every
//! timestamp in identities, attestations and credentials. The formats themselves take the
//! time as an argument; only the callers at the edge read it here.

/// Seconds since the Unix epoch, the unit of every timestamp in identities, attestations and
/// credentials (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
