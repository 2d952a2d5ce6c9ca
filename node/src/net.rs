//! The net actor: the sole owner of the libp2p Swarm (TCP, noise, yamux; identify; ping;
//! gossipsub for pushing changes; `/kervan/sync/4` for anti-entropy; an allow list that
//! refuses every connection from a device the federation document does not register).
//!
//! It turns the replica's verdicts into gossipsub validation results: an accepted change is
//! forwarded, a rejected one penalises its sender (who is disconnected and banned for a while
//! after repeated offences), a pending one makes the node pull from the sender.
//!
//! Anti-entropy remembers, per member, the summary of its last pull that the member answered
//! `UpToDate` (`agreed`); a node answering `UpToDate` keeps that summary by digest
//! (`summaries`, bounded). A pull to a member with an agreed summary sends only the heads that
//! differ from it ([`Request::PullDelta`]); a member that no longer holds that base (it
//! restarted, or evicted it) answers [`Response::UnknownBase`], and the node forgets it and
//! pulls again with its whole summary.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use kervan_protocol::sync::{self, PeerAddrs, Request, Response, Summary, SummaryCache};
use kervan_protocol::{DeviceKey, FederationId};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, identify, identity, ping,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::ReplicaHandle;
use crate::replica::{Outcome, Report};

/// Commands that may wait for the net actor.
pub const COMMAND_CAPACITY: usize = 256;
/// Locally written changes that may wait to be published.
pub const OUTBOX_CAPACITY: usize = 1024;
/// Changes kept for publishing while no peer is subscribed yet.
const PUBLISH_QUEUE: usize = 4096;
/// Penalising rejections after which a peer is disconnected and banned.
const BAN_AFTER: u64 = 20;
/// Offences one sync answer that breaks the protocol (oversized or not the protocol's CBOR)
/// counts for: no honest node sends one.
const BAD_ANSWER_OFFENCES: u64 = 5;
/// How long a ban lasts.
const BAN_FOR: Duration = Duration::from_secs(300);
/// Addresses kept per peer (the newest) and passed on per peer.
const ADDRS_PER_PEER: usize = 8;

/// The network settings of a node.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub sync_interval: Duration,
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: Multiaddr, why: String },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// The codec of `/kervan/sync/4`: libp2p's cbor codec with the protocol's size limits, except
/// that a message whose bytes arrived but do not decode is always `InvalidData`, an offence.
/// The cbor codec reports what `Request`'s and `Response`'s own checks refuse (a packed run
/// that does not unpack or inflates past its limit, a run without its prefix, a delta out of
/// order) as `Other`, the kind a broken stream has too, which is no offence.
#[derive(Clone)]
pub(crate) struct SyncCodec(request_response::cbor::codec::Codec<Request, Response>);

impl std::fmt::Debug for SyncCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncCodec")
    }
}

impl Default for SyncCodec {
    fn default() -> Self {
        Self(
            request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(sync::MAX_REQUEST_BYTES as u64)
                .set_response_size_maximum(sync::MAX_RESPONSE_BYTES as u64),
        )
    }
}

/// A decoding error as the net actor judges it: bytes a peer sent that are no message.
fn malformed(e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof | ErrorKind::Unsupported => e,
        _ => std::io::Error::new(ErrorKind::InvalidData, e.to_string()),
    }
}

/// What a peer sent, read as the cbor codec reads it: up to `max` bytes, the rest cut off (and
/// then refused by decoding). An error here is the stream's; one from decoding is the peer's.
async fn read_stream<T>(io: &mut T, max: usize) -> std::io::Result<Vec<u8>>
where
    T: libp2p::futures::AsyncRead + Unpin + Send,
{
    use libp2p::futures::AsyncReadExt as _;
    let mut bytes = Vec::new();
    io.take(max as u64).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> std::io::Result<Request>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        let bytes = read_stream(io, sync::MAX_REQUEST_BYTES).await?;
        self.0
            .read_request(p, &mut bytes.as_slice())
            .await
            .map_err(malformed)
    }

    async fn read_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Response>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        let bytes = read_stream(io, sync::MAX_RESPONSE_BYTES).await?;
        self.0
            .read_response(p, &mut bytes.as_slice())
            .await
            .map_err(malformed)
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        self.0.write_request(p, io, req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        resp: Response,
    ) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        self.0.write_response(p, io, resp).await
    }
}

/// What the node knows of one peer, as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PeerStatus {
    pub peer_id: String,
    pub connected: bool,
    /// Unix seconds of the last completed sync round with this peer.
    pub last_sync: Option<u64>,
    pub accepted: u64,
    pub rejected: u64,
    /// Accepted minus ten times rejected changes from this peer.
    pub score: i64,
    pub banned: bool,
}

#[derive(Debug, Default)]
struct Peer {
    connected: bool,
    last_sync: Option<SystemTime>,
    accepted: u64,
    rejected: u64,
    addrs: Vec<Multiaddr>,
    banned_until: Option<Instant>,
}

/// What anti-entropy did since the node started: how pulls were sent and answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    /// Pulls sent with the whole summary.
    pub full_pulls: u64,
    /// Pulls sent as a delta against the summary agreed with that peer.
    pub delta_pulls: u64,
    /// Delta pulls answered with changes: catch-up over the delta path.
    pub delta_pulls_with_changes: u64,
    /// Delta pulls answered `UnknownBase` (each followed by a pull with the whole summary).
    pub unknown_base_answers: u64,
    /// Delta pulls from peers this node rebuilt and answered.
    pub deltas_served: u64,
    /// Delta pulls from peers this node answered `UnknownBase`: base not held, or refused.
    pub deltas_refused: u64,
    /// Peers with an agreed summary now.
    pub agreed_peers: usize,
    /// Summaries cached by digest now.
    pub cached_summaries: usize,
}

enum Command {
    Publish(Vec<u8>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    SyncStats(oneshot::Sender<SyncStats>),
    Listening(oneshot::Sender<Vec<Multiaddr>>),
    SyncNow,
    Block(Vec<PeerId>),
    Unblock,
}

/// A cheap, cloneable way to reach the net actor.
#[derive(Debug, Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    pub peer_id: PeerId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NetHandle {
    pub async fn peers(&self) -> Vec<PeerStatus> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Peers(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// What anti-entropy did so far.
    pub async fn sync_stats(&self) -> SyncStats {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::SyncStats(tx)).await.is_err() {
            return SyncStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listening(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Listening(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Publishes a signed envelope as it is, unjudged: for changes that arrived by other
    /// means (an imported bundle) and for tests that play a hostile member.
    pub async fn publish(&self, envelope: Vec<u8>) {
        let _ = self.tx.send(Command::Publish(envelope)).await;
    }

    /// Starts a sync round with every connected member.
    pub async fn sync_now(&self) {
        let _ = self.tx.send(Command::SyncNow).await;
    }

    /// Cuts the node off from these peers until [`NetHandle::unblock`] (tests' partitions).
    pub async fn block(&self, peers: Vec<PeerId>) {
        let _ = self.tx.send(Command::Block(peers)).await;
    }

    pub async fn unblock(&self) {
        let _ = self.tx.send(Command::Unblock).await;
    }
}

/// The libp2p peer id of a device key.
pub fn peer_id_of(key: &DeviceKey) -> Option<PeerId> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(PeerId::from_public_key(&identity::PublicKey::from(pk)))
}

/// The gossip topic of a federation.
pub fn topic(federation: &FederationId) -> IdentTopic {
    IdentTopic::new(format!("kervan/{federation}/changes/1"))
}

fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    // The hash of the whole envelope, not the change hash alone: a relay that corrupts a
    // genuine change's signature makes another message, so its copy cannot make the honest
    // one look like a duplicate. Ed25519 signatures are deterministic, so the same change
    // signed by its author is always the same message.
    use sha2::Digest as _;
    gossipsub::MessageId::from(sha2::Sha256::digest(&m.data).to_vec())
}

/// One page of a sync answer: envelopes, and whether more remain.
type Page = (Vec<Vec<u8>>, bool);

/// A pull waiting for its answer.
#[derive(Debug)]
struct Pending {
    id: OutboundRequestId,
    /// The summary it told, whole or as a delta: the agreed one if the answer is `UpToDate`.
    summary: Arc<Summary>,
    delta: bool,
}

/// The net actor.
pub struct Net {
    swarm: Swarm<Behaviour>,
    replica: ReplicaHandle,
    commands: mpsc::Receiver<Command>,
    outbox: mpsc::Receiver<Vec<u8>>,
    shutdown: watch::Receiver<bool>,
    topic: IdentTopic,
    queue: VecDeque<Vec<u8>>,
    peers: HashMap<PeerId, Peer>,
    members: HashSet<PeerId>,
    blocked: HashSet<PeerId>,
    in_flight: HashMap<PeerId, Pending>,
    /// Per member, the summary of this node's last pull it answered `UpToDate`: the base of
    /// the next pull to it.
    agreed: HashMap<PeerId, Arc<Summary>>,
    /// Summaries this node answered `UpToDate` to (or was answered so), by digest: the bases
    /// a peer's delta pull may name.
    summaries: SummaryCache,
    stats: SyncStats,
    bootstrap: Vec<Multiaddr>,
    listening: Vec<Multiaddr>,
    tick: tokio::time::Interval,
    /// Raised when the replica fails or stops: the node must stop.
    fatal: watch::Sender<bool>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Builds the swarm, starts listening and returns the actor with its handle. `outbox`
    /// carries the replica's own changes, already flushed, to be published.
    pub async fn start(
        secret: [u8; 32],
        federation: FederationId,
        config: NetConfig,
        replica: ReplicaHandle,
        outbox: mpsc::Receiver<Vec<u8>>,
        shutdown: watch::Receiver<bool>,
        fatal: watch::Sender<bool>,
    ) -> Result<(Self, NetHandle), NetError> {
        let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
        let keypair = identity::Keypair::ed25519_from_bytes(secret).map_err(|e| setup(&e))?;
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            .message_id_fn(message_id)
            .max_transmit_size(
                kervan_protocol::Limits::default().max_change_bytes
                    + kervan_protocol::envelope::ENVELOPE_OVERHEAD
                    + 1024,
            )
            .mesh_n(4)
            .mesh_n_low(2)
            .mesh_n_high(8)
            .mesh_outbound_min(1)
            .heartbeat_interval(Duration::from_millis(500))
            .build()
            .map_err(|e| setup(&e))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| setup(&e))?
            .with_behaviour(|key| {
                let gossipsub =
                    gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config)?;
                let sync = request_response::Behaviour::with_codec(
                    SyncCodec::default(),
                    [(StreamProtocol::new(sync::PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60)),
                );
                Ok(Behaviour {
                    allow: allow_block_list::Behaviour::default(),
                    gossipsub,
                    sync,
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/kervan/1".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                })
            })
            .map_err(|e| setup(&e))?
            // Members stay connected: a federation is a handful of long-lived peers.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let topic = topic(&federation);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| setup(&e))?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    why: e.to_string(),
                })?;
        }
        let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let peer_id = *swarm.local_peer_id();
        let mut tick = tokio::time::interval(config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut net = Self {
            swarm,
            replica,
            commands,
            outbox,
            shutdown,
            topic,
            queue: VecDeque::new(),
            peers: HashMap::new(),
            members: HashSet::new(),
            blocked: HashSet::new(),
            in_flight: HashMap::new(),
            agreed: HashMap::new(),
            summaries: SummaryCache::default(),
            stats: SyncStats::default(),
            bootstrap: config.bootstrap,
            listening: Vec::new(),
            tick,
            fatal,
        };
        net.refresh_members().await;
        // Wait for the listeners so callers can print and hand out real addresses.
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.listening.len() < config.listen.len() && Instant::now() < deadline {
            let timeout = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                ev = net.swarm.select_next_some() => net.on_swarm(ev).await,
                _ = timeout => {}
            }
        }
        net.dial_bootstrap();
        Ok((net, NetHandle { tx, peer_id }))
    }

    /// Runs until shutdown or until every handle is gone.
    pub async fn run(mut self) {
        while self.step().await {}
        tracing::info!("network stopped");
    }

    /// Handles one event. Returns false when the actor should stop.
    pub async fn step(&mut self) -> bool {
        tokio::select! {
            ev = self.swarm.select_next_some() => self.on_swarm(ev).await,
            cmd = self.commands.recv() => match cmd {
                Some(c) => self.on_command(c).await,
                None => return false,
            },
            env = self.outbox.recv() => match env {
                Some(e) => self.publish(e),
                None => return false,
            },
            _ = self.tick.tick() => self.on_tick().await,
            _ = self.shutdown.changed() => return false,
        }
        true
    }

    /// Makes the allow list the registered, non-frozen devices: new ones are let in, frozen
    /// ones are cut off.
    async fn refresh_members(&mut self) {
        let Ok(keys) = self.replica.call(|r| r.member_keys()).await else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        let now: HashSet<PeerId> = keys
            .iter()
            .filter_map(peer_id_of)
            .filter(|p| *p != me)
            .collect();
        let gone: Vec<PeerId> = self.members.difference(&now).copied().collect();
        for peer in gone {
            tracing::warn!(%peer, "device no longer a member: disconnected");
            self.members.remove(&peer);
            self.agreed.remove(&peer);
            self.disallow(peer);
        }
        let new: Vec<PeerId> = now.difference(&self.members).copied().collect();
        for peer in new {
            self.members.insert(peer);
            if !self.blocked.contains(&peer) {
                self.allow(peer);
            }
        }
    }

    fn allow(&mut self, peer: PeerId) {
        let b = self.swarm.behaviour_mut();
        b.allow.allow_peer(peer);
        b.gossipsub.add_explicit_peer(&peer);
    }

    fn disallow(&mut self, peer: PeerId) {
        let b = self.swarm.behaviour_mut();
        b.allow.disallow_peer(peer);
        b.gossipsub.remove_explicit_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
    }

    fn publish(&mut self, envelope: Vec<u8>) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), envelope.clone())
        {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                // No peer yet: keep it for the next round; anti-entropy delivers it anyway.
                if self.queue.len() == PUBLISH_QUEUE {
                    self.queue.pop_front();
                }
                self.queue.push_back(envelope);
            }
            Err(e) => {
                // Seen already, too large or queues full: gossipsub will not take it again;
                // anti-entropy delivers it.
                tracing::debug!(error = %e, "not published");
            }
        }
    }

    fn flush_queue(&mut self) {
        let queued: Vec<Vec<u8>> = self.queue.drain(..).collect();
        for e in queued {
            self.publish(e);
        }
    }

    async fn on_tick(&mut self) {
        self.refresh_members().await;
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.banned_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for peer in expired {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.banned_until = None;
                p.rejected = 0;
            }
            if self.members.contains(&peer) && !self.blocked.contains(&peer) {
                self.allow(peer);
            }
        }
        self.flush_queue();
        if !self.peers.values().any(|p| p.connected) {
            self.dial_bootstrap();
        }
        // Dial members whose addresses we learned but are not connected to.
        let to_dial: Vec<(PeerId, Vec<Multiaddr>)> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                !p.connected
                    && !p.addrs.is_empty()
                    && p.banned_until.is_none()
                    && self.members.contains(id)
                    && !self.blocked.contains(id)
            })
            .map(|(id, p)| (*id, p.addrs.clone()))
            .collect();
        for (peer, addrs) in to_dial {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            let _ = self.swarm.dial(opts);
        }
        // Anti-entropy with one connected member, chosen at random.
        let connected = self.connected();
        if !connected.is_empty() {
            let i = rand::random_range(0..connected.len());
            self.pull(connected[i]).await;
        }
    }

    fn connected(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pulls from `peer`: the summary as a delta against the one agreed with it, or whole.
    async fn pull(&mut self, peer: PeerId) {
        if self.in_flight.contains_key(&peer) || self.blocked.contains(&peer) {
            return;
        }
        let Ok(summary) = self.replica.call(|r| r.sync_summary()).await else {
            return;
        };
        let delta = self
            .agreed
            .get(&peer)
            .and_then(|agreed| sync::delta(agreed, &summary));
        let (request, delta) = match delta {
            Some(d) => {
                self.stats.delta_pulls += 1;
                (Request::PullDelta(d), true)
            }
            None => {
                self.stats.full_pulls += 1;
                (Request::Pull(summary.clone()), false)
            }
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.in_flight.insert(
            peer,
            Pending {
                id,
                summary: Arc::new(summary),
                delta,
            },
        );
    }

    /// Remembers `summary` as agreed with `peer`, which answered `UpToDate` to it and so keeps
    /// it: the base of the next pull to `peer`.
    fn agree(&mut self, peer: PeerId, summary: Arc<Summary>) {
        self.summaries.insert(summary.clone());
        if self.members.contains(&peer) {
            self.agreed.insert(peer, summary);
        }
    }

    /// Answers a pull from `peer`, told whole or rebuilt from a delta.
    async fn answer(
        &mut self,
        peer: PeerId,
        channel: request_response::ResponseChannel<Response>,
        summary: Summary,
    ) {
        let answer = self
            .replica
            .call(
                move |r| -> Result<(Summary, Option<Page>), crate::ReplicaError> {
                    if r.digest() == summary.digest {
                        return Ok((summary, None));
                    }
                    let page = r.sync_page(&summary, sync::MAX_PAGE_BYTES)?;
                    Ok((summary, Some(page)))
                },
            )
            .await;
        let peers = self.known_addrs(peer);
        let response = match answer {
            Ok(Ok((summary, None))) => {
                // Equal digests: the requester's summary is this node's too. The requester
                // will name it as the base of its next pull; this node keeps it before
                // answering, so a requester that has the answer knows it is kept.
                self.summaries.insert(Arc::new(summary));
                Response::UpToDate { peers }
            }
            Ok(Ok((_, Some((changes, more))))) => Response::Changes {
                changes,
                more,
                peers,
            },
            _ => return,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(envelope) => self.publish(envelope),
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_statuses());
            }
            Command::SyncStats(reply) => {
                let _ = reply.send(SyncStats {
                    agreed_peers: self.agreed.len(),
                    cached_summaries: self.summaries.len(),
                    ..self.stats
                });
            }
            Command::Listening(reply) => {
                let _ = reply.send(self.listening.clone());
            }
            Command::SyncNow => {
                for peer in self.connected() {
                    self.pull(peer).await;
                }
            }
            Command::Block(peers) => {
                for peer in peers {
                    self.blocked.insert(peer);
                    self.disallow(peer);
                }
            }
            Command::Unblock => {
                let blocked: Vec<PeerId> = self.blocked.drain().collect();
                for peer in blocked {
                    if self.members.contains(&peer) {
                        self.allow(peer);
                    }
                }
                self.dial_bootstrap();
            }
        }
    }

    fn peer_statuses(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(id, p)| PeerStatus {
                peer_id: id.to_string(),
                connected: p.connected,
                last_sync: p.last_sync.and_then(|t| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs())
                }),
                accepted: p.accepted,
                rejected: p.rejected,
                score: p.accepted as i64 - 10 * p.rejected as i64,
                banned: p.banned_until.is_some(),
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }

    /// Counts outcomes of a peer's changes; bans it after repeated offences.
    fn score(&mut self, peer: PeerId, reports: &[Report]) -> bool {
        let p = self.peers.entry(peer).or_default();
        for r in reports {
            match &r.outcome {
                Outcome::Accepted => p.accepted += 1,
                Outcome::Rejected { code, .. } if penalises(code) => p.rejected += 1,
                _ => {}
            }
        }
        self.ban_if_due(peer)
    }

    /// Counts `n` offences against a peer that broke the protocol itself.
    fn offend(&mut self, peer: PeerId, n: u64) -> bool {
        self.peers.entry(peer).or_default().rejected += n;
        self.ban_if_due(peer)
    }

    fn ban_if_due(&mut self, peer: PeerId) -> bool {
        let p = self.peers.entry(peer).or_default();
        if p.rejected >= BAN_AFTER && p.banned_until.is_none() {
            tracing::warn!(%peer, rejected = p.rejected, "peer banned for sending invalid changes");
            p.banned_until = Some(Instant::now() + BAN_FOR);
            self.disallow(peer);
            return true;
        }
        false
    }

    async fn ingest(&mut self, peer: PeerId, changes: Vec<Vec<u8>>) -> Vec<Report> {
        let source = peer.to_string();
        let result = self
            .replica
            .call(move |r| r.ingest_received(changes, &source))
            .await;
        match result {
            Ok(Ok(reports)) => {
                self.score(peer, &reports);
                reports
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "replica failed while ingesting: stopping");
                let _ = self.fatal.send(true);
                Vec::new()
            }
            Err(_) => {
                let _ = self.fatal.send(true);
                Vec::new()
            }
        }
    }

    async fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                tracing::info!(addr = %full, "listening");
                self.listening.push(full);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(peer = %peer_id, "peer connected");
                let p = self.peers.entry(peer_id).or_default();
                p.connected = true;
                if endpoint.is_dialer() {
                    remember(p, endpoint.get_remote_address().clone());
                }
                self.flush_queue();
                self.pull(peer_id).await;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::info!(peer = %peer_id, "peer disconnected");
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connected = false;
                }
                self.in_flight.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e).await,
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e).await,
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if self.members.contains(&peer_id) => {
                let p = self.peers.entry(peer_id).or_default();
                for addr in info.listen_addrs.into_iter().take(ADDRS_PER_PEER) {
                    remember(p, addr);
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection refused");
            }
            _ => {}
        }
    }

    async fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let reports = self.ingest(propagation_source, vec![message.data]).await;
                let acceptance = match reports.first().map(|r| &r.outcome) {
                    Some(Outcome::Accepted | Outcome::Duplicate) => MessageAcceptance::Accept,
                    Some(Outcome::Rejected { code, .. }) if penalises(code) => {
                        MessageAcceptance::Reject
                    }
                    Some(Outcome::Pending { .. }) => {
                        self.pull(propagation_source).await;
                        MessageAcceptance::Ignore
                    }
                    _ => MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { .. } => self.flush_queue(),
            _ => {}
        }
    }

    async fn on_sync(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Request::Pull(summary),
                    channel,
                    ..
                } => self.answer(peer, channel, summary).await,
                request_response::Message::Request {
                    request: Request::PullDelta(delta),
                    channel,
                    ..
                } => {
                    let rebuilt = match self.summaries.get(&delta.base) {
                        Some(base) => sync::resolve(&base, &delta),
                        None => Err(sync::DeltaError::OtherBase),
                    };
                    match rebuilt {
                        Ok(summary) => {
                            self.stats.deltas_served += 1;
                            self.answer(peer, channel, summary).await;
                        }
                        Err(why) => {
                            // Not an offence: a restarted node or an evicted base looks the
                            // same. The requester pulls again with its whole summary.
                            tracing::debug!(%peer, %why, "delta pull answered UnknownBase");
                            self.stats.deltas_refused += 1;
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .sync
                                .send_response(channel, Response::UnknownBase);
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let pending = match self.in_flight.get(&peer) {
                        Some(p) if p.id == request_id => self.in_flight.remove(&peer),
                        _ => None,
                    };
                    self.on_answer(peer, pending, response).await;
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self
                    .in_flight
                    .get(&peer)
                    .is_some_and(|p| p.id == request_id)
                {
                    self.in_flight.remove(&peer);
                }
                match error {
                    // The answer was larger than the protocol allows (cut at the limit, it
                    // ends early) or not its CBOR. A peer that dies mid-answer resets the
                    // stream instead, which is no offence.
                    request_response::OutboundFailure::Io(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::InvalidData
                                | std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::Unsupported
                        ) =>
                    {
                        tracing::warn!(%peer, error = %e, "peer sent a malformed or oversized sync answer");
                        self.offend(peer, BAD_ANSWER_OFFENCES);
                    }
                    error => tracing::debug!(%peer, %error, "sync request failed"),
                }
            }
            _ => {}
        }
    }

    /// Takes a peer's answer to a pull; `pending` is the pull, unless it was given up.
    async fn on_answer(&mut self, peer: PeerId, pending: Option<Pending>, response: Response) {
        let (changes, more, peers) = match response {
            Response::UnknownBase => {
                // The peer does not hold the summary the delta was against (it restarted, or
                // evicted it): forget it and pull again with the whole summary. An honest peer
                // never answers a whole summary so; that answer is dropped, not retried.
                self.agreed.remove(&peer);
                self.stats.unknown_base_answers += 1;
                if pending.is_some_and(|p| p.delta) {
                    self.pull(peer).await;
                } else {
                    tracing::debug!(%peer, "UnknownBase to a whole summary: ignored");
                }
                return;
            }
            Response::UpToDate { peers } => {
                if let Some(p) = &pending {
                    self.agree(peer, p.summary.clone());
                }
                (Vec::new(), false, peers)
            }
            Response::Changes {
                changes,
                more,
                peers,
            } => (changes, more, peers),
        };
        if changes.len() > sync::MAX_PAGE_CHANGES {
            tracing::warn!(%peer, n = changes.len(), "oversized sync page: peer banned");
            let p = self.peers.entry(peer).or_default();
            p.rejected += BAN_AFTER;
            self.score(peer, &[]);
            return;
        }
        if !changes.is_empty() && pending.as_ref().is_some_and(|p| p.delta) {
            self.stats.delta_pulls_with_changes += 1;
        }
        self.learn(peers);
        let reports = if changes.is_empty() {
            Vec::new()
        } else {
            self.ingest(peer, changes).await
        };
        let p = self.peers.entry(peer).or_default();
        p.last_sync = Some(SystemTime::now());
        let progressed = reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Accepted));
        if more && progressed {
            self.pull(peer).await;
        }
    }

    /// Addresses of the other members this node is connected to, for `peer`.
    fn known_addrs(&self, asking: PeerId) -> Vec<PeerAddrs> {
        self.peers
            .iter()
            .filter(|(id, p)| **id != asking && p.connected && !p.addrs.is_empty())
            .map(|(id, p)| PeerAddrs {
                peer: id.to_string(),
                addrs: p
                    .addrs
                    .iter()
                    .take(ADDRS_PER_PEER)
                    .map(ToString::to_string)
                    .collect(),
            })
            .take(64)
            .collect()
    }

    fn learn(&mut self, peers: Vec<PeerAddrs>) {
        let me = *self.swarm.local_peer_id();
        for pa in peers {
            let Ok(id) = pa.peer.parse::<PeerId>() else {
                continue;
            };
            if id == me || !self.members.contains(&id) {
                continue;
            }
            let p = self.peers.entry(id).or_default();
            for a in pa
                .addrs
                .iter()
                .take(ADDRS_PER_PEER)
                .filter_map(|a| a.parse::<Multiaddr>().ok())
            {
                remember(p, a);
            }
        }
    }
}

/// Keeps an address of a peer, the newest [`ADDRS_PER_PEER`] only.
fn remember(p: &mut Peer, addr: Multiaddr) {
    if p.addrs.contains(&addr) {
        return;
    }
    if p.addrs.len() == ADDRS_PER_PEER {
        p.addrs.remove(0);
    }
    p.addrs.push(addr);
}

/// Whether a rejection code is the sender's fault (see `RejectReason::penalises_sender`).
fn penalises(code: &str) -> bool {
    !matches!(
        code,
        "equivocation" | "frozen" | "built_on_equivocation" | "device_frozen"
    )
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use kervan_protocol::sync::{Changed, Delta, Head};
    use kervan_protocol::{Actor, DocId, Hash};
    use libp2p::request_response::Codec as _;

    use super::*;

    fn codec() -> SyncCodec {
        SyncCodec::default()
    }

    fn protocol() -> StreamProtocol {
        StreamProtocol::new(sync::PROTOCOL)
    }

    /// A request as the node's codec writes it.
    fn write_request(req: Request) -> Vec<u8> {
        let mut out = Vec::new();
        codec()
            .write_request(&protocol(), &mut out, req)
            .now_or_never()
            .expect("memory does not wait")
            .expect("encodes");
        out
    }

    fn read_request(mut bytes: &[u8]) -> std::io::Result<Request> {
        codec()
            .read_request(&protocol(), &mut bytes)
            .now_or_never()
            .expect("memory does not wait")
    }

    fn write_response(resp: Response) -> Vec<u8> {
        let mut out = Vec::new();
        codec()
            .write_response(&protocol(), &mut out, resp)
            .now_or_never()
            .expect("memory does not wait")
            .expect("encodes");
        out
    }

    fn read_response(mut bytes: &[u8]) -> std::io::Result<Response> {
        codec()
            .read_response(&protocol(), &mut bytes)
            .now_or_never()
            .expect("memory does not wait")
    }

    fn actor(n: u8) -> Actor {
        Actor {
            key: DeviceKey([n; 32]),
            epoch: [n ^ 0x5a; 8],
        }
    }

    fn head(doc: &str, a: u8, seq: u64, h: u8) -> Head {
        Head {
            doc: doc.parse().expect("doc"),
            actor: actor(a),
            seq,
            hash: Hash([h; 32]),
        }
    }

    /// Three founding parks, each writing the federation document and its own ledger with
    /// its one actor: six heads.
    fn six_heads() -> Summary {
        Summary::new(vec![
            head("federation", 1, 4, 1),
            head("federation", 2, 2, 2),
            head("federation", 3, 2, 3),
            head("park/kz-astana-hub", 1, 70_000, 4),
            head("park/uz-it-park", 2, 1_500, 5),
            head("park/kg-high-tech-park", 3, 90, 6),
        ])
    }

    #[test]
    fn a_pull_with_six_heads_is_under_500_bytes_and_a_delta_of_one_under_128() {
        let full = six_heads();
        let bytes = write_request(Request::Pull(full.clone()));
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
        let mut current = full.heads.clone();
        current[3].seq += 1;
        current[3].hash = Hash([9; 32]);
        let current = Summary::new(current);
        let d = sync::delta(&full, &current).expect("a delta");
        let small = write_request(Request::PullDelta(d));
        assert!(small.len() < 128, "{} bytes", small.len());
        let nothing = sync::delta(&current, &current).expect("a delta");
        assert!(write_request(Request::PullDelta(nothing)).len() < 80);
        eprintln!(
            "pull with six heads: {} B; delta of one head: {} B",
            bytes.len(),
            small.len()
        );
    }

    #[test]
    fn a_pull_with_six_heads_of_six_actors_is_mostly_identifiers() {
        // The benchmark's registry: the federation document's genesis and five ledgers, each
        // head by another actor. Its 40-byte actors and 32-byte hashes alone are 432 bytes.
        let parks = [
            "az-sabah-lab",
            "kg-htp",
            "kz-astana-hub",
            "tr-bilisim-vadisi",
        ];
        let mut heads = vec![
            head("federation", 1, 1, 1),
            head("park/uz-it-park", 2, 3009, 2),
        ];
        for (i, p) in parks.iter().enumerate() {
            heads.push(head(&format!("park/{p}"), 3 + i as u8, 3003, 3 + i as u8));
        }
        let bytes = write_request(Request::Pull(Summary::new(heads))).len();
        assert!(bytes < 432 + 128, "{bytes} bytes");
        eprintln!("pull with six heads of six actors: {bytes} B");
    }

    #[test]
    fn messages_survive_the_codec() {
        let full = six_heads();
        let back = read_request(&write_request(Request::Pull(full.clone()))).expect("decodes");
        assert_eq!(back, Request::Pull(full.clone()));
        let empty = Summary::new(Vec::new());
        let back = read_request(&write_request(Request::Pull(empty.clone()))).expect("decodes");
        assert_eq!(back, Request::Pull(empty));
        let delta = Request::PullDelta(Delta {
            base: Hash([1; 32]),
            digest: Hash([2; 32]),
            changed: vec![
                Changed {
                    index: 0,
                    seq: 1,
                    hash: Hash([3; 32]),
                },
                Changed {
                    index: 70_000,
                    seq: u64::MAX,
                    hash: Hash([4; 32]),
                },
            ],
            added: vec![
                head("federation", 7, 1, 7),
                head("park/kz-astana-hub", 7, 2, 8),
                head("park/kz-astana-hub", 8, 3, 9),
            ],
        });
        assert_eq!(
            read_request(&write_request(delta.clone())).expect("decodes"),
            delta
        );
        let peers = vec![PeerAddrs {
            peer: "12D3KooWpeer".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/7701".into()],
        }];
        for r in [
            Response::UpToDate {
                peers: peers.clone(),
            },
            Response::Changes {
                changes: vec![vec![1, 2, 3], Vec::new()],
                more: true,
                peers,
            },
            Response::UnknownBase,
        ] {
            assert_eq!(
                read_response(&write_response(r.clone())).expect("decodes"),
                r
            );
        }
        assert_eq!(write_response(Response::UnknownBase), [0x81, 0x02]);
    }

    /// `[0, [[actor], [[doc, index, 1, hash]]]]` with the given parts.
    fn pull_bytes(
        doc: &str,
        actor_len: usize,
        index: u8,
        hash_len: usize,
        trailing: bool,
    ) -> Vec<u8> {
        let mut b = vec![if trailing { 0x83 } else { 0x82 }, 0x00, 0x82, 0x81];
        b.extend([0x58, actor_len as u8]);
        b.extend(vec![0x11; actor_len]);
        b.extend([0x81, 0x84, 0x60 + doc.len() as u8]);
        b.extend(doc.as_bytes());
        b.extend([index, 0x01, 0x58, hash_len as u8]);
        b.extend(vec![0x22; hash_len]);
        if trailing {
            b.push(0x00);
        }
        b
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = read_request(&pull_bytes("", 40, 0, 32, false)).expect("decodes");
        let Request::Pull(s) = good else {
            panic!("a pull")
        };
        assert_eq!(s.heads.len(), 1);
        assert_eq!(s.heads[0].doc, DocId::Federation);
        let Ok(Request::Pull(ledger)) = read_request(&pull_bytes("kg-htp", 40, 0, 32, false))
        else {
            panic!("a pull")
        };
        assert_eq!(ledger.heads[0].doc.to_string(), "park/kg-htp");
        assert_eq!(s.digest, sync::digest(&s.heads), "the digest is the heads'");
        for (what, bytes) in [
            ("a 39-byte actor", pull_bytes("", 39, 0, 32, false)),
            (
                "an actor index past the table",
                pull_bytes("", 40, 1, 32, false),
            ),
            (
                "a document that is no park id",
                pull_bytes("park/kg-htp", 40, 0, 32, false),
            ),
            ("a 31-byte hash", pull_bytes("", 40, 0, 31, false)),
            ("a trailing element", pull_bytes("", 40, 0, 32, true)),
            ("an unknown kind", vec![0x82, 0x07, 0x80]),
            ("a head cut short", {
                let mut b = pull_bytes("", 40, 0, 32, false);
                b[4 + 2 + 40 + 1] = 0x83;
                b.truncate(4 + 2 + 40 + 3 + 2);
                b
            }),
            ("a map", vec![0xa1, 0x64, b'P', b'u', b'l', b'l', 0x80]),
        ] {
            // Whether it is not the protocol's CBOR or not its messages (which libp2p's cbor
            // codec reports as `Other`), it is malformed: an offence (see `OutboundFailure`).
            let e = read_request(&bytes).expect_err(what);
            assert!(offence(&e), "{what}: {e}");
        }
        // Answers: an unknown kind, a kind without its fields, a run without its document, a
        // packed run that is no deflate stream, and one whose signatures do not match.
        let prefix = b"park/kg-htp".to_vec();
        // Two empty streams (head and lens), each an empty deflate stream.
        let empty = [2, 0, 2, 0, 0, 2, 0, 0x03, 0x00, 0x03, 0x00];
        // `[1, [[doc, packed, sigs]], false, []]`, written out byte by byte.
        let packed = |packed: &[u8], sigs: &[u8]| {
            let mut out = vec![0x84, 0x01, 0x81, 0x83];
            for b in [&prefix[..], packed, sigs] {
                match b.len() {
                    n @ 0..24 => out.push(0x40 | n as u8),
                    n @ 24..256 => out.extend([0x58, n as u8]),
                    n => out.extend([0x59, (n >> 8) as u8, n as u8]),
                }
                out.extend_from_slice(b);
            }
            out.extend([0xf4, 0x80]);
            out
        };
        for bytes in [
            vec![0x81, 0x03],
            vec![0x82, 0x02, 0x00],
            vec![0x81, 0x01],
            vec![0x84, 0x01, 0x81, 0x80, 0xf4, 0x80],
            packed(b"no deflate", &[0; 64]),
            packed(
                &[
                    2, 0, 10, 0, 0, 2, 0, b'n', b'o', b' ', b'd', b'e', b'f', b'l', b'a', b't',
                    b'e', 3, 0,
                ],
                &[],
            ),
            packed(&empty, &[0; 64]),
        ] {
            let e = read_response(&bytes).expect_err("malformed");
            assert!(offence(&e), "{bytes:?}: {e}");
        }
        // The last one holds no change, yet a signature.
        assert!(
            read_response(&packed(&empty, &[])).is_ok_and(
                |r| matches!(r, Response::Changes { changes, .. } if changes.is_empty())
            )
        );
    }

    /// The error kinds the net actor counts as a peer's offence.
    fn offence(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::Unsupported
        )
    }
}
