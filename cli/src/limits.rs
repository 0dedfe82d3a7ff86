//! A node's caps on what peers may hold (`kith node create --limit NAME=VALUE`): its
//! connections and unfinished handshakes, node-wide, per source and per connection, and the
//! per-frame deadline. Unset ones keep their defaults, which suit a node on the open
//! internet; `--help` and the README list them.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use kith_identity::pending::HandshakeLimits;
use kith_transport::TcpOptions;
use serde::{Deserialize, Serialize};

/// The caps a node was created with; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Incoming connections, node-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Incoming connections from one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_per_source: Option<u64>,
    /// Unfinished handshakes, node-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<u64>,
    /// Unfinished handshakes from one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes_per_source: Option<u64>,
    /// Unfinished handshakes on one connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshakes_per_connection: Option<u64>,
    /// Handshakes one source may start per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_rate_per_source: Option<u64>,
    /// Handshakes a quiet source may start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_burst_per_source: Option<u64>,
    /// Secure channels open through the listener, node-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
    /// Secure channels open through the listener from one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels_per_source: Option<u64>,
    /// Seconds a frame may take from its first byte to its last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_timeout: Option<u64>,
}

/// The names `--limit` takes, each with its default as `--limit` would take it and what it
/// caps. The README's table lists the same; a test keeps them equal.
pub const LIMITS: &[(&str, &str, &str)] = &[
    ("connections", "4096", "incoming connections, node-wide"),
    (
        "connections-per-source",
        "256",
        "incoming connections from one address or IPv6 /64",
    ),
    (
        "handshakes",
        "1024",
        "unfinished secure-channel handshakes, node-wide",
    ),
    (
        "handshakes-per-source",
        "128",
        "unfinished handshakes from one address",
    ),
    (
        "handshakes-per-connection",
        "64",
        "unfinished handshakes on one connection",
    ),
    (
        "handshake-rate-per-source",
        "500",
        "handshakes one address may start per second",
    ),
    (
        "handshake-burst-per-source",
        "1000",
        "handshakes a quiet address may start at once",
    ),
    (
        "channels",
        "16384",
        "secure channels peers hold open, node-wide",
    ),
    (
        "channels-per-source",
        "1024",
        "secure channels the peers at one address hold open",
    ),
    (
        "frame-timeout",
        "30s",
        "how long one frame may take to arrive",
    ),
];

/// The most any count may be set to: beyond it, the number is a typo.
const MAX_COUNT: u64 = 1 << 24;

impl LimitsConfig {
    /// Set one limit from `NAME=VALUE`, as `--limit` takes it.
    pub fn set(&mut self, text: &str) -> Result<()> {
        let (name, value) = text.split_once('=').ok_or_else(|| {
            anyhow!("--limit {text:?}: write NAME=VALUE, e.g. connections-per-source=512")
        })?;
        let (name, value) = (name.trim(), value.trim());
        if name == "frame-timeout" {
            let d = crate::duration::parse_duration(value)
                .map_err(|e| anyhow!("--limit frame-timeout={value:?}: {e}"))?;
            if d < Duration::from_secs(1) {
                bail!("--limit frame-timeout={value:?}: at least 1s");
            }
            self.frame_timeout = Some(d.as_secs());
            return Ok(());
        }
        let slot = match name {
            "connections" => &mut self.connections,
            "connections-per-source" => &mut self.connections_per_source,
            "handshakes" => &mut self.handshakes,
            "handshakes-per-source" => &mut self.handshakes_per_source,
            "handshakes-per-connection" => &mut self.handshakes_per_connection,
            "handshake-rate-per-source" => &mut self.handshake_rate_per_source,
            "handshake-burst-per-source" => &mut self.handshake_burst_per_source,
            "channels" => &mut self.channels,
            "channels-per-source" => &mut self.channels_per_source,
            _ => {
                let names: Vec<&str> = LIMITS.iter().map(|(n, ..)| *n).collect();
                bail!(
                    "--limit {name:?} is not a limit; the limits are: {}",
                    names.join(", ")
                )
            }
        };
        let n: u64 = value
            .parse()
            .map_err(|_| anyhow!("--limit {name}={value:?}: a whole number, e.g. {name}=512"))?;
        if n == 0 || n > MAX_COUNT {
            bail!("--limit {name}={n}: from 1 to {MAX_COUNT}");
        }
        *slot = Some(n);
        Ok(())
    }

    /// Parse every `--limit` given.
    pub fn parse_all(given: &[String]) -> Result<Self> {
        let mut limits = Self::default();
        for g in given {
            limits.set(g)?;
        }
        Ok(limits)
    }

    /// The transport's options with these limits.
    pub fn tcp_options(&self) -> TcpOptions {
        let d = TcpOptions::default();
        TcpOptions {
            max_connections: count(self.connections, d.max_connections),
            max_connections_per_source: count(
                self.connections_per_source,
                d.max_connections_per_source,
            ),
            frame_timeout: self
                .frame_timeout
                .map_or(d.frame_timeout, Duration::from_secs),
            ..d
        }
    }

    /// The secure-channel listener's caps with these limits.
    pub fn handshake_limits(&self) -> HandshakeLimits {
        let d = HandshakeLimits::default();
        let rate =
            |v: Option<u64>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
        HandshakeLimits {
            max_pending: count(self.handshakes, d.max_pending),
            max_pending_per_source: count(self.handshakes_per_source, d.max_pending_per_source),
            max_pending_per_connection: count(
                self.handshakes_per_connection,
                d.max_pending_per_connection,
            ),
            rate_per_source: rate(self.handshake_rate_per_source, d.rate_per_source),
            burst_per_source: rate(self.handshake_burst_per_source, d.burst_per_source),
            max_channels: count(self.channels, d.max_channels),
            max_channels_per_source: count(self.channels_per_source, d.max_channels_per_source),
        }
    }
}

fn count(v: Option<u64>, default: usize) -> usize {
    v.and_then(|v| usize::try_from(v).ok()).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_named_limit_sets_its_cap_and_the_rest_keep_their_defaults() {
        let l = LimitsConfig::parse_all(&[
            "connections-per-source=512".into(),
            "handshake-rate-per-source = 1000".into(),
            "frame-timeout=1m".into(),
        ])
        .unwrap();
        let tcp = l.tcp_options();
        assert_eq!(tcp.max_connections_per_source, 512);
        assert_eq!(tcp.max_connections, kith_transport::MAX_CONNECTIONS);
        assert_eq!(tcp.frame_timeout, Duration::from_secs(60));
        let hs = l.handshake_limits();
        assert_eq!(hs.rate_per_source, 1000);
        assert_eq!(hs.max_pending, HandshakeLimits::default().max_pending);
        for (name, ..) in LIMITS {
            let value = if *name == "frame-timeout" { "5s" } else { "7" };
            LimitsConfig::default()
                .set(&format!("{name}={value}"))
                .unwrap();
        }
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        let err = |t: &str| LimitsConfig::default().set(t).unwrap_err().to_string();
        assert!(err("connections").contains("NAME=VALUE"));
        assert!(err("conections=5").contains("the limits are: connections,"));
        assert!(err("connections=lots").contains("a whole number"));
        assert!(err("connections=0").contains("from 1 to"));
        assert!(err("frame-timeout=0s").contains("at least 1s"));
        assert!(err("frame-timeout=soon").contains("frame-timeout"));
    }

    #[test]
    fn the_listed_defaults_are_the_defaults_and_the_readme_lists_them() {
        let readme = include_str!("../../README.md");
        let mut all = LimitsConfig::default();
        for (name, default, _) in LIMITS {
            all.set(&format!("{name}={default}")).unwrap();
            let shown = if *name == "handshake-rate-per-source" {
                format!("{default}/s")
            } else {
                (*default).to_owned()
            };
            let row = format!("| `{name}` | {shown} |");
            assert!(readme.contains(&row), "the README has no row {row:?}");
        }
        assert_eq!(
            all.tcp_options().max_connections,
            kith_transport::MAX_CONNECTIONS
        );
        let d = TcpOptions::default();
        let t = all.tcp_options();
        assert_eq!(
            (t.max_connections_per_source, t.frame_timeout),
            (d.max_connections_per_source, d.frame_timeout)
        );
        assert_eq!(all.handshake_limits(), HandshakeLimits::default());
    }

    proptest! {
        #[test]
        fn any_text_is_a_limit_or_an_error_never_a_panic(text in ".{0,40}") {
            let _ = LimitsConfig::default().set(&text);
        }
    }
}
