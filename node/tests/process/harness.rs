//! The harness of the process tests: `kervan run` child processes on random loopback ports
//! with temporary data directories, reached over HTTP, killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kervan_node::DataDir;
use kervan_node::data_dir::genesis_file;
use kervan_protocol::{DeviceKey, ParkCard};
use serde_json::{Value, json};

pub(crate) const KERVAN: &str = env!("CARGO_BIN_EXE_kervan");

/// Polls `ready` every 20 ms until it holds or `timeout` passes. A blocking test with no
/// async runtime: sleeping between polls blocks nothing else.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `kervan run` child process.
pub(crate) struct Node {
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) agent: ureq::Agent,
}

impl Node {
    pub(crate) fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts a node that dials `bootstrap` (multiaddrs) at start.
    pub(crate) fn start_with(dir: &Path, bootstrap: &[String]) -> Self {
        let _ = std::fs::remove_file(dir.join("api.addr"));
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            dir.display().to_string(),
            "run".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
        ];
        for b in bootstrap {
            args.push("--bootstrap".into());
            args.push(b.clone());
        }
        let child = Command::new(KERVAN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("node.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::inherit()),
            )
            .spawn()
            .expect("kervan run starts");
        let addr_file = dir.join("api.addr");
        let log = dir.join("node.log");
        let started = std::time::Instant::now();
        while std::fs::read_to_string(&addr_file).map_or(true, |a| a.trim().is_empty()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the node wrote no api.addr in 30 s; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = std::fs::read_to_string(&addr_file).expect("api.addr");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let node = Self {
            dir: dir.to_path_buf(),
            child: Some(child),
            base: format!("http://{}", addr.trim()),
            token: std::fs::read_to_string(dir.join("api.token")).expect("token"),
            agent,
        };
        let started = std::time::Instant::now();
        while !node
            .agent
            .get(format!("{}/v1/health", node.base))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the node at {} is not healthy after 30 s; its log: {}",
                node.base,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// Sends a request with the node's token; answers the status and the JSON body.
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(&self.token))
    }

    pub(crate) fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), &auth).call(),
            ("POST", Some(b)) => with_auth(self.agent.post(&url), &auth).send_json(b),
            ("PUT", Some(b)) => with_auth(self.agent.put(&url), &auth).send_json(b),
            ("PATCH", Some(b)) => with_auth(self.agent.patch(&url), &auth).send_json(b),
            _ => panic!("unsupported {method}"),
        };
        let mut r = result.expect("the node answers");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub(crate) fn post_bytes(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .expect("answers");
        let status = r.status().as_u16();
        let v = r.body_mut().read_json().unwrap_or(Value::Null);
        (status, v)
    }

    pub(crate) fn get_bytes(&self, path: &str) -> Vec<u8> {
        self.agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .expect("answers")
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .expect("bytes")
    }

    /// SIGKILL: no shutdown, no final snapshot.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    /// SIGTERM, and the exit status of a clean shutdown.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no clean exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's peer-to-peer addresses, from `p2p.addr`.
    pub(crate) fn p2p_addrs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("p2p.addr"))
            .expect("p2p.addr")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The node's state digest.
    pub(crate) fn digest(&self) -> Value {
        self.call("GET", "/v1/status", None).1["digest"].clone()
    }

    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(KERVAN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("kervan runs")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn with_auth<B>(r: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    }
}

/// Two parks in one federation: Astana Hub (served by `kervan run`) and IT Park Uzbekistan
/// (driven in-process as the "other park").
pub(crate) struct Setup {
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) astana: PathBuf,
    pub(crate) tashkent: DataDir,
}

pub(crate) fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cards = Vec::new();
    let mut dirs = Vec::new();
    for (id, name, country) in [
        ("kz-astana-hub", "Astana Hub", "KZ"),
        ("uz-it-park", "IT Park Uzbekistan", "UZ"),
    ] {
        let dir = DataDir::new(tmp.path().join(id));
        cards.push(
            dir.init(ParkCard {
                id: id.parse().expect("id"),
                name: name.into(),
                country: country.into(),
                city: None,
                website: None,
                device: DeviceKey([0; 32]),
                epoch: String::new(),
                proof: String::new(),
                label: None,
            })
            .expect("init"),
        );
        dirs.push(dir);
    }
    let (_, genesis) = genesis_file("Test", "For tests.", &cards).expect("genesis");
    for d in &dirs {
        d.join(&genesis).expect("join");
    }
    Setup {
        astana: dirs[0].root().to_path_buf(),
        tashkent: dirs.remove(1),
        _tmp: tmp,
    }
}

pub(crate) fn startup(name: &str) -> Value {
    json!({"name": name, "country": "KZ", "sectors": ["ai"], "stage": "seed",
           "summary": "Speech recognition for Kazakh", "tags": ["speech"]})
}

pub(crate) fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("(no error code)")
}

pub(crate) fn error_fields(v: &Value) -> Vec<String> {
    let mut f: Vec<String> = v["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["field"].as_str().map(str::to_owned))
        .collect();
    f.sort();
    f
}
