//! The node's configuration: one TOML file in the data directory. What the node *is* (its
//! park, its federation, its addresses) lives here; runtime knobs are command-line flags.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kervan_protocol::{FederationId, ParkId};
use serde::{Deserialize, Serialize};

/// Why a configuration file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("config {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The park this node writes for, e.g. `kz-astana-hub`. Required; `kervan init` sets it.
    pub park: ParkId,
    /// The federation this node belongs to: the hash of its genesis. `kervan join` pins it.
    /// Default: none (the node has not joined yet).
    #[serde(default)]
    pub federation: Option<FederationId>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub network: NetworkConfig,
}

/// The peer-to-peer network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on. Default `["/ip4/127.0.0.1/tcp/7701"]`: loopback only; a park
    /// that serves other parks listens on its public address.
    pub listen: Vec<String>,
    /// Members to dial at start, each `/ip4/<addr>/tcp/<port>/p2p/<peer id>`. One reachable
    /// member is enough: the others' addresses come with the first sync. Default none.
    pub bootstrap: Vec<String>,
    /// How often to reconcile with a random connected member. Default "5s".
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/127.0.0.1/tcp/7701".into()],
            bootstrap: Vec::new(),
            sync_interval: Duration::from_secs(5),
        }
    }
}

/// The local HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the API listens on. Default `127.0.0.1:7700`: loopback only.
    pub listen: SocketAddr,
    /// Largest request body in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            max_body_bytes: 1 << 20,
        }
    }
}

/// The replica's storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A document is snapshotted after this many accepted changes. Default 1000.
    pub snapshot_every: usize,
    /// Changes kept while they wait for a dependency or a registration. Default 10000.
    pub max_pending: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 1000,
            max_pending: 10_000,
        }
    }
}

impl Config {
    pub fn new(park: ParkId) -> Self {
        Self {
            park,
            federation: None,
            api: ApiConfig::default(),
            store: StoreConfig::default(),
            network: NetworkConfig::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges that would make the node unusable.
    pub fn validate(&self) -> Result<(), String> {
        if self.store.snapshot_every == 0 {
            return Err("store.snapshot_every must be at least 1".into());
        }
        if self.store.max_pending == 0 {
            return Err("store.max_pending must be at least 1".into());
        }
        for a in self.network.listen.iter().chain(&self.network.bootstrap) {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("network address {a:?} is not a multiaddr: {e}"))?;
        }
        if self.network.sync_interval < Duration::from_millis(100) {
            return Err("network.sync_interval must be at least 100ms".into());
        }
        if self.api.max_body_bytes < 1024 {
            return Err("api.max_body_bytes must be at least 1024".into());
        }
        Ok(())
    }

    /// The file `kervan init` writes: every field, with its default, and what it means.
    pub fn to_toml(&self) -> String {
        let federation = match &self.federation {
            Some(f) => format!("federation = \"{f}\""),
            None => "# federation = \"<set by kervan join>\"".to_owned(),
        };
        format!(
            r#"# Kervan node configuration.

# The park this node writes for.
park = "{park}"
# The federation this node belongs to: the hash of its genesis, pinned by `kervan join`.
{federation}

[api]
# Address of the local HTTP API. Default "127.0.0.1:7700" (loopback only).
listen = "{listen}"
# Largest request body in bytes. Default 1048576.
max_body_bytes = {max_body}

[store]
# Snapshot a document after this many accepted changes. Default 1000.
snapshot_every = {snap}
# Changes kept while they wait for a dependency or a registration. Default 10000.
max_pending = {pending}

[network]
# Multiaddrs to listen on. Default ["/ip4/127.0.0.1/tcp/7701"] (loopback only).
listen = {p2p_listen}
# Members to dial at start, each /ip4/<addr>/tcp/<port>/p2p/<peer id>. Default [].
bootstrap = {bootstrap}
# How often to reconcile with a random connected member. Default "5s".
sync_interval = "{sync}"
"#,
            park = self.park,
            listen = self.api.listen,
            max_body = self.api.max_body_bytes,
            snap = self.store.snapshot_every,
            pending = self.store.max_pending,
            p2p_listen = toml_list(&self.network.listen),
            bootstrap = toml_list(&self.network.bootstrap),
            sync = humantime_serde::re::humantime::format_duration(self.network.sync_interval),
        )
    }
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_with_the_defaults() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config.example.toml"
        ));
        let config = Config::load(path).expect("the example config parses");
        let mut expected = Config::new("kz-astana-hub".parse().expect("park"));
        expected.federation = config.federation;
        assert_eq!(config, expected, "the example documents the defaults");
    }

    #[test]
    fn written_config_round_trips() {
        let mut config = Config::new("uz-it-park".parse().expect("park"));
        config.store.snapshot_every = 10;
        let parsed = Config::parse(&config.to_toml(), Path::new("x")).expect("parses");
        assert_eq!(parsed, config);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = Config::parse("park = \"kg-htp\"\ncolour = 1\n", Path::new("c.toml"))
            .expect_err("unknown field");
        assert!(err.to_string().contains("colour"), "{err}");
        let err = Config::parse("park = \"KG\"\n", Path::new("c.toml")).expect_err("bad park");
        assert!(err.to_string().contains("park id"), "{err}");
        let err = Config::parse(
            "park = \"kg-htp\"\n[store]\nsnapshot_every = 0\n",
            Path::new("c.toml"),
        )
        .expect_err("zero");
        assert!(err.to_string().contains("snapshot_every"), "{err}");
    }
}
