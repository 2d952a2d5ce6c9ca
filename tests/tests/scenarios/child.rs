//! A park node in a child process (`kervan-testnode`), reached over its HTTP API and killed
//! with SIGKILL: the part of a scenario that must really crash.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde_json::Value;

const TESTNODE: &str = env!("CARGO_BIN_EXE_kervan-testnode");

/// Where the child's API answers, while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) token: String,
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// The park node in a child process.
pub(crate) struct ChildNode {
    pub(crate) dir: PathBuf,
    pub(crate) peer: PeerId,
    pub(crate) process: Option<Child>,
    pub(crate) api: Arc<Mutex<Option<Api>>>,
    pub(crate) agent: ureq::Agent,
}

impl ChildNode {
    /// Starts the node, dialling `bootstrap`; blocks until its API answers.
    #[allow(clippy::disallowed_methods)] // a blocking poll on a blocking thread
    pub(crate) fn start(&mut self, bootstrap: &[Multiaddr]) {
        assert!(self.process.is_none(), "the child already runs");
        let _ = std::fs::remove_file(self.dir.join("api.addr"));
        let log = self.dir.join("node.log");
        let process = Command::new(TESTNODE)
            .arg(&self.dir)
            .args(bootstrap.iter().map(ToString::to_string))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::inherit()),
            )
            .spawn()
            .expect("kervan-testnode starts");
        self.process = Some(process);
        let started = Instant::now();
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(self.dir.join("api.addr"))
                && !a.trim().is_empty()
            {
                break a.trim().to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the child wrote no api.addr in 60 s; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let api = Api {
            base: format!("http://{addr}"),
            token: std::fs::read_to_string(self.dir.join("api.token")).expect("api.token"),
        };
        wait_blocking("the child's API", Duration::from_secs(60), || {
            self.agent
                .get(format!("{}/v1/health", api.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        *self.api.lock().expect("lock") = Some(api);
    }

    /// SIGKILL: no shutdown, no final snapshot, whatever the writer was doing.
    pub(crate) fn kill9(&mut self) {
        *self.api.lock().expect("lock") = None;
        if let Some(mut c) = self.process.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.process.is_some()
    }

    pub(crate) fn p2p_addrs(&self) -> Vec<Multiaddr> {
        std::fs::read_to_string(self.dir.join("p2p.addr"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    pub(crate) fn get(&self, path: &str) -> Value {
        let api = self
            .api
            .lock()
            .expect("lock")
            .clone()
            .expect("the child runs");
        let mut r = self
            .agent
            .get(format!("{}{path}", api.base))
            .header("Authorization", format!("Bearer {}", api.token))
            .call()
            .expect("the child answers");
        assert_eq!(r.status(), 200, "GET {path}");
        r.body_mut().read_json().expect("JSON")
    }

    pub(crate) fn digest(&self) -> String {
        self.get("/v1/status")["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Delivers envelopes as a bundle, in the order given.
    pub(crate) fn deliver(&self, bundle: &[u8]) {
        let api = self
            .api
            .lock()
            .expect("lock")
            .clone()
            .expect("the child runs");
        let r = self
            .agent
            .post(format!("{}/v1/bundle", api.base))
            .header("Authorization", format!("Bearer {}", api.token))
            .header("Content-Type", "application/octet-stream")
            .send(bundle)
            .expect("the child answers");
        assert_eq!(r.status(), 200, "bundle import");
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `ready` every 25 ms on a blocking thread.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wait_blocking(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A change received over gossip is flushed by the replica actor once it is idle, without a
/// local write or a clean shutdown: it survives SIGKILL of the receiving park even when the
/// writer is gone and cannot send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_change_survives_sigkill_without_its_writer() {
    let mut net = kervan_tests::testnet::TestNet::new(2);
    net.start_node(0).await;
    let park = &mut net.fed.parks[1];
    park.close();
    let peer = kervan_node::net::peer_id_of(&kervan_protocol::DeviceKey(
        park.key().verifying_key().to_bytes(),
    ))
    .expect("peer");
    let mut child = ChildNode {
        dir: park.dir.root().to_path_buf(),
        peer,
        process: None,
        api: Arc::default(),
        agent: agent(),
    };
    let boot = net.node(0).p2p_addrs.clone();
    tokio::task::block_in_place(|| child.start(&boot));
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        wait_blocking("the parks to converge", Duration::from_secs(60), || {
            child.digest() == handle.block_on(net.digest(0)).to_string()
        })
    });
    let id = net
        .write(0, kervan_node::sample::Sample::new(9).startup("KZ"))
        .await;
    let path = format!("/v1/startups/{id}");
    let digest0 = net.digest(0).await.to_string();
    tokio::task::block_in_place(|| {
        wait_blocking(
            "the write to reach the child",
            Duration::from_secs(60),
            || child.digest() == digest0,
        )
    });
    // The writer goes away for good; the child is killed without any write of its own.
    net.stop(0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| {
        child.kill9();
        child.start(&[]);
        assert_eq!(child.digest(), digest0, "the received change was lost");
        let startup = child.get(&path);
        assert_eq!(startup["id"].as_str(), Some(id.to_string().as_str()));
    });
    net.shutdown().await;
}
