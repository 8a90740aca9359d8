//! The JSON lines `netprobe` prints, shared by the binary (which writes them)
//! and the harness (which parses them), so the two cannot drift apart.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// What a `netprobe serve` replies to each request line or datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The server's `--name` (the pod name).
    pub name: String,
    /// The client address the server saw, `ip:port`.
    pub peer: String,
}

/// One request of `netprobe tcp` or `netprobe udp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub ok: bool,
    /// "refused", "timeout", "eperm", "unreachable", "getpeername_mismatch",
    /// "reply_from_mismatch", or the OS error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backend that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_seen_by_server: Option<String>,
    /// What getpeername() returned on the client socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub getpeername: Option<String>,
    /// UDP only: the source address of the reply as recvfrom() reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_from: Option<String>,
}

impl Attempt {
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// One datagram of `netprobe udp-hold`: when it was sent, whether the
/// socket had to connect() again first (its connection was destroyed), and
/// how the exchange went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// Milliseconds since the Unix epoch, so a test can line the datagrams
    /// up with when it changed the Service.
    pub sent_unix_ms: u64,
    #[serde(default)]
    pub reconnected: bool,
    #[serde(flatten)]
    pub attempt: Attempt,
}

/// The one line `netprobe hold` and `netprobe burst` print.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub ok: bool,
    pub requests: u64,
    pub failures: u64,
    /// Distinct backend names in the order first seen.
    #[serde(default)]
    pub names: Vec<String>,
    /// Answers per backend name.
    #[serde(default)]
    pub per_backend: BTreeMap<String, u64>,
    /// Failures per error kind.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// Counts one attempt in.
    pub fn record(&mut self, attempt: &Attempt) {
        self.requests += 1;
        if attempt.ok {
            if let Some(name) = &attempt.name {
                if !self.names.contains(name) {
                    self.names.push(name.clone());
                }
                *self.per_backend.entry(name.clone()).or_default() += 1;
            }
        } else {
            self.failures += 1;
            let kind = attempt.error.clone().unwrap_or_else(|| "unknown".into());
            *self.errors.entry(kind).or_default() += 1;
        }
        self.ok = self.failures == 0;
    }

    /// Adds another summary's counts to this one.
    pub fn merge(&mut self, other: Summary) {
        self.requests += other.requests;
        self.failures += other.failures;
        for name in other.names {
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
        for (name, count) in other.per_backend {
            *self.per_backend.entry(name).or_default() += count;
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.ok = self.failures == 0;
    }
}

/// The one line `netprobe http-get` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResult {
    pub ok: bool,
    /// Same kinds as [`Attempt::error`], or "bad_response".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Parses every non-empty line of `stdout` as one JSON value.
pub fn parse_lines<T: DeserializeOwned>(stdout: &[u8]) -> Result<Vec<T>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad netprobe line: {l}")))
        .collect()
}

/// Where the `netprobe` binary is: `$NETPROBE_BIN`, else next to the running
/// executable (`target/debug/demo`) or one level up (integration tests run
/// from `target/debug/deps/`). Cargo builds it for integration tests; for the
/// demo, `cargo xtask demo` builds it first.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NETPROBE_BIN") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("netprobe");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "netprobe not found near {} (build it: cargo build -p switchyard-tests --bins, or set NETPROBE_BIN)",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_names_and_errors() {
        let mut s = Summary::default();
        let hit = |n: &str| Attempt {
            ok: true,
            name: Some(n.into()),
            ..Attempt::default()
        };
        s.record(&hit("pod-1"));
        s.record(&hit("pod-0"));
        s.record(&hit("pod-1"));
        s.record(&Attempt::failed("refused"));
        assert_eq!(s.requests, 4);
        assert_eq!(s.failures, 1);
        assert!(!s.ok);
        assert_eq!(s.names, ["pod-1", "pod-0"]);
        assert_eq!(s.per_backend["pod-1"], 2);
        assert_eq!(s.errors["refused"], 1);
    }

    #[test]
    fn attempts_round_trip_without_empty_fields() {
        let line = serde_json::to_string(&Attempt::failed("timeout")).unwrap();
        assert_eq!(line, r#"{"ok":false,"error":"timeout"}"#);
        let back: Vec<Attempt> = parse_lines(format!("{line}\n\n").as_bytes()).unwrap();
        assert_eq!(back, [Attempt::failed("timeout")]);
    }
}
