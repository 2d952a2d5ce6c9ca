//! A blocking client of a running node's API, for the CLI: it finds the node through the data
//! directory (`api.addr`, written by `kervan run`, else the configured address) and reads the
//! token from there.

use std::time::Duration;

use serde_json::Value;

use crate::data_dir::{DataDir, DataDirError};

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node is running at {addr} (start one with `kervan run --data-dir {dir}`)")]
    NotRunning { addr: String, dir: String },
    #[error("{message}{details}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: String,
    },
    #[error("the node answered {status} with a body that is not an API error")]
    Unexpected { status: u16 },
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("request failed: {0}")]
    Http(String),
}

/// A client of one node.
#[derive(Debug)]
pub struct Client {
    base: String,
    addr: String,
    dir: String,
    token: String,
    agent: ureq::Agent,
}

/// What a request sends.
#[derive(Debug)]
pub enum Body<'a> {
    None,
    Json(&'a Value),
    Bytes(&'a [u8]),
}

impl Client {
    pub fn new(dir: &DataDir) -> Result<Self, ClientError> {
        // `kervan run` writes api.addr once it listens and removes it when it stops: without
        // it, whatever answers at the configured address is not this directory's node.
        let addr = match std::fs::read_to_string(dir.path("api.addr")) {
            Ok(a) => a.trim().to_owned(),
            Err(_) => {
                return Err(ClientError::NotRunning {
                    addr: dir.config()?.api.listen.to_string(),
                    dir: dir.root().display().to_string(),
                });
            }
        };
        let token = dir.api_token()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self {
            base: format!("http://{addr}"),
            addr,
            dir: dir.root().display().to_string(),
            token,
            agent,
        })
    }

    /// Whether this directory's node answers: it must take this directory's token.
    pub fn is_running(&self) -> bool {
        self.agent
            .get(format!("{}/v1/status", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .is_ok_and(|r| r.status().is_success())
    }

    /// Sends a request and returns the raw answer body.
    pub fn raw(&self, method: &str, path: &str, body: Body<'_>) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (m, Body::Json(v)) => {
                let req = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                req.header("Authorization", &auth).send_json(v)
            }
            (_, Body::Bytes(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/octet-stream")
                .send(b),
            (_, Body::None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut response = result.map_err(|e| match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                ClientError::NotRunning {
                    addr: self.addr.clone(),
                    dir: self.dir.clone(),
                }
            }
            other => ClientError::Http(other.to_string()),
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        if status >= 400 {
            let v: Value =
                serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected { status })?;
            let e = &v["error"];
            // One line: the message, then each bad field with what was wrong with it.
            let details = match &e["details"] {
                Value::Array(items) if !items.is_empty() => {
                    let fields: Vec<String> = items
                        .iter()
                        .map(|i| {
                            format!(
                                "{}: {}",
                                i["field"].as_str().unwrap_or("?"),
                                i["message"].as_str().unwrap_or("?")
                            )
                        })
                        .collect();
                    format!(" ({})", fields.join("; "))
                }
                _ => String::new(),
            };
            return Err(ClientError::Api {
                status,
                code: e["code"].as_str().unwrap_or("error").to_owned(),
                message: e["message"].as_str().unwrap_or("").to_owned(),
                details,
            });
        }
        Ok(bytes)
    }

    /// Sends a request and parses the JSON answer (`null` for an empty one).
    pub fn json(&self, method: &str, path: &str, body: Body<'_>) -> Result<Value, ClientError> {
        let bytes = self.raw(method, path, body)?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(e.to_string()))
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
