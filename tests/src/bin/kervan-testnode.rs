//! A park node in a child process, for tests that kill nodes with SIGKILL:
//! `kervan-testnode DATA_DIR [BOOTSTRAP_MULTIADDR...]`. It listens for the API and the network on
//! loopback ports the system picks, writes them to `api.addr` and `p2p.addr` in the data
//! directory (as `kervan run` does) and runs until it is killed or stopped with SIGTERM.

use kervan_node::DataDir;
use kervan_node::node::{self, Overrides};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let dir = DataDir::new(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: kervan-testnode DATA_DIR [BOOTSTRAP...]"))?,
    );
    let bootstrap = args
        .map(|a| a.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bootstrap address: {e}"))?;
    let config = dir.config()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let o = Overrides {
            api: Some("127.0.0.1:0".parse()?),
            listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse()?]),
            bootstrap: Some(bootstrap),
            sync_interval: None,
        };
        let mut running = node::start(&dir, config, o).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            () = running.failed() => {}
        }
        running.stop().await?;
        Ok(())
    })
}
