//! `TestNet`: real park nodes in one process, on loopback, each with its data directory and
//! sled store in a temporary directory, each with its own replica thread, net actor and API.
//! Partitions cut nodes off from each other at the connection level.

use std::future::Future;
use std::time::{Duration, Instant};

use kervan_node::node::{self, Overrides, RunningNode};
use kervan_node::{Collection, ReplicaError};
use kervan_protocol::{Hash, RecordId};
use libp2p::Multiaddr;
use serde_json::Value;

use crate::{FOUNDING, Federation, Park};

/// How often a test node reconciles with a random peer.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(300);

/// Polls `check` every 25 ms until it holds; fails the test naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A federation of nodes running in this process.
pub struct TestNet {
    pub fed: Federation,
    pub nodes: Vec<Option<RunningNode>>,
    /// Addresses of nodes outside this process (child processes) that nodes started here
    /// also dial.
    pub extra_bootstrap: Vec<Multiaddr>,
}

impl std::fmt::Debug for TestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNet")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl TestNet {
    /// The first `n` founding parks, all joined to one genesis, none running yet.
    pub fn new(n: usize) -> Self {
        let fed = Federation::with(&FOUNDING[..n], |c| {
            c.network.sync_interval = SYNC_INTERVAL;
        });
        let nodes = (0..n).map(|_| None).collect();
        Self {
            fed,
            nodes,
            extra_bootstrap: Vec::new(),
        }
    }

    /// `n` parks, all running.
    pub async fn start(n: usize) -> Self {
        let mut net = Self::new(n);
        for i in 0..n {
            net.start_node(i).await;
        }
        net
    }

    /// Addresses of the running nodes, to bootstrap from.
    fn bootstrap(&self) -> Vec<Multiaddr> {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|n| n.p2p_addrs.clone())
            .chain(self.extra_bootstrap.iter().cloned())
            .collect()
    }

    /// Starts park `i`'s node on loopback, bootstrapping from the nodes already running.
    pub async fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} already runs");
        let bootstrap = self.bootstrap();
        let park: &mut Park = &mut self.fed.parks[i];
        park.close();
        let config = park.dir.config().expect("config");
        let o = Overrides {
            api: Some("127.0.0.1:0".parse().expect("addr")),
            listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")]),
            bootstrap: Some(bootstrap),
            sync_interval: Some(SYNC_INTERVAL),
        };
        let node = node::start(&park.dir, config, o)
            .await
            .expect("node starts");
        self.nodes[i] = Some(node);
    }

    pub fn node(&self, i: usize) -> &RunningNode {
        self.nodes[i].as_ref().expect("node runs")
    }

    /// Stops park `i`'s node cleanly.
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.stop().await.expect("clean stop");
        }
    }

    pub async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        self.start_node(i).await;
    }

    /// Writes a startup at park `i`; answers its id once the write is durable.
    pub async fn write(&self, i: usize, startup: Value) -> RecordId {
        self.node(i)
            .replica
            .call(move |r| r.create(Collection::Startups, None, &startup))
            .await
            .expect("replica runs")
            .expect("write accepted")
    }

    /// Like [`TestNet::write`], answering the replica's error.
    pub async fn try_write(&self, i: usize, startup: Value) -> Result<RecordId, ReplicaError> {
        self.node(i)
            .replica
            .call(move |r| r.create(Collection::Startups, None, &startup))
            .await
            .expect("replica runs")
    }

    pub async fn digest(&self, i: usize) -> Hash {
        self.node(i)
            .replica
            .call(|r| r.digest())
            .await
            .expect("replica runs")
    }

    pub async fn has_startup(&self, i: usize, id: &RecordId) -> bool {
        let id = id.clone();
        self.node(i)
            .replica
            .call(move |r| r.index().startup(&id).is_some())
            .await
            .expect("replica runs")
    }

    /// Everything park `i`'s query index answers.
    pub async fn view(&self, i: usize) -> Value {
        self.node(i)
            .replica
            .call(|r| crate::view(r))
            .await
            .expect("replica runs")
    }

    /// The running nodes' digests, in order.
    pub async fn digests(&self) -> Vec<Hash> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_some() {
                out.push(self.digest(i).await);
            }
        }
        out
    }

    /// Waits until every running node has the same digest; answers how long it took.
    pub async fn converged(&self, timeout: Duration) -> Duration {
        wait_until("equal digests on every running node", timeout, || async {
            let d = self.digests().await;
            d.windows(2).all(|w| w[0] == w[1])
        })
        .await
    }

    /// Cuts the nodes of `a` off from the nodes of `b`, both ways.
    pub async fn partition(&self, a: &[usize], b: &[usize]) {
        let peers = |side: &[usize]| -> Vec<libp2p::PeerId> {
            side.iter().map(|i| self.node(*i).peer_id).collect()
        };
        for i in a {
            self.node(*i).net.block(peers(b)).await;
        }
        for i in b {
            self.node(*i).net.block(peers(a)).await;
        }
    }

    /// Ends every partition.
    pub async fn heal(&self) {
        for n in self.nodes.iter().flatten() {
            n.net.unblock().await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
