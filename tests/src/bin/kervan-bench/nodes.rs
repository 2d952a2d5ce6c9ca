//! Real nodes in this process, on loopback, started from data directories.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use kervan_node::DataDir;
use kervan_node::node::{self, Overrides, RunningNode};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Starts the node of a data directory: API and p2p on free loopback ports.
pub(crate) async fn start(
    dir: &Path,
    bootstrap: Vec<Multiaddr>,
    sync_interval: Duration,
) -> anyhow::Result<RunningNode> {
    let dir = DataDir::new(dir);
    let config = dir.config()?;
    let o = Overrides {
        api: Some("127.0.0.1:0".parse()?),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse()?]),
        bootstrap: Some(bootstrap),
        sync_interval: Some(sync_interval),
    };
    Ok(node::start(&dir, config, o).await?)
}

/// The TCP socket address of a node's first p2p listen address.
pub(crate) fn tcp_addr(n: &RunningNode) -> anyhow::Result<SocketAddr> {
    let addr = n
        .p2p_addrs
        .first()
        .ok_or_else(|| anyhow!("the node listens nowhere"))?;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Tcp(t) => port = Some(t),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => bail!("{addr} is not a tcp address"),
    }
}

/// The p2p address of `peer` behind `addr` (a proxy, say).
pub(crate) fn p2p_addr(addr: SocketAddr, peer: libp2p::PeerId) -> anyhow::Result<Multiaddr> {
    Ok(format!("/ip4/{}/tcp/{}/p2p/{peer}", addr.ip(), addr.port()).parse()?)
}

/// Waits until every node has `n - 1` connected peers.
pub(crate) async fn connected(nodes: &[RunningNode], timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let want = nodes.len().saturating_sub(1);
    loop {
        let mut ok = true;
        for n in nodes {
            let c = n.net.peers().await.iter().filter(|p| p.connected).count();
            if c < want {
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("nodes not fully connected after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops nodes one by one.
pub(crate) async fn stop_all(nodes: Vec<RunningNode>) -> anyhow::Result<()> {
    for n in nodes {
        n.stop().await?;
    }
    Ok(())
}
