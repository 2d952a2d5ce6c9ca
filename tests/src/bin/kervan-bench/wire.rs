//! Bytes on the wire: the sync messages as the node's request-response codec writes them, and a
//! loopback proxy that counts every byte of a real connection (noise, yamux, identify, ping,
//! gossipsub and sync together).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt as _;
use kervan_protocol::sync::{self, Request, Response};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;
use libp2p::request_response::cbor::codec::Codec;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

type SyncCodec = Codec<Request, Response>;

fn protocol() -> StreamProtocol {
    StreamProtocol::new(sync::PROTOCOL)
}

/// Bytes of a request as the node's cbor codec writes it.
pub(crate) fn request_bytes(req: Request) -> usize {
    let mut out: Vec<u8> = Vec::new();
    let mut codec = SyncCodec::default();
    codec
        .write_request(&protocol(), &mut out, req)
        .now_or_never()
        .expect("writing to memory does not wait")
        .expect("a request encodes");
    out.len()
}

/// A response as the node's cbor codec writes it.
fn write_response(resp: Response) -> anyhow::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    SyncCodec::default()
        .write_response(&protocol(), &mut out, resp)
        .now_or_never()
        .expect("writing to memory does not wait")?;
    Ok(out)
}

/// A response as the node's cbor codec reads it.
fn read_response(bytes: Vec<u8>) -> anyhow::Result<Response> {
    let mut reader = libp2p::futures::io::Cursor::new(bytes);
    Ok(SyncCodec::default()
        .read_response(&protocol(), &mut reader)
        .now_or_never()
        .expect("reading from memory does not wait")?)
}

/// Bytes of a response as the node's cbor codec writes it.
pub(crate) fn response_bytes(resp: Response) -> usize {
    write_response(resp).expect("a response encodes").len()
}

/// A response as the node's cbor codec writes it and the receiver reads it back: its bytes and
/// what the receiver holds (a page's changes as the receiver rebuilds them, vouched ones
/// without their own signature).
pub(crate) fn response_round_trip(resp: Response) -> anyhow::Result<(usize, Response)> {
    let out = write_response(resp)?;
    Ok((out.len(), read_response(out)?))
}

/// Seconds the node's cbor codec takes to write a response and to read it back.
pub(crate) fn response_codec_secs(resp: Response) -> anyhow::Result<(f64, f64)> {
    let started = std::time::Instant::now();
    let out = write_response(resp)?;
    let write = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    read_response(out)?;
    Ok((write, started.elapsed().as_secs_f64()))
}

/// A TCP proxy on loopback to one target, counting bytes both ways.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish()
    }
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            // The pumps live as long as this task: aborting it (on drop) ends them too.
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                pumps.spawn(pump(ir, ow, counter.clone()));
                pumps.spawn(pump(or, iw, counter.clone()));
            }
        });
        Ok(Self { addr, bytes, task })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(from: OwnedReadHalf, to: OwnedWriteHalf, n: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(k) => {
                n.fetch_add(k as u64, Ordering::Relaxed);
                if write_all(&to, &buf[..k]).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn write_all(to: &OwnedWriteHalf, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
