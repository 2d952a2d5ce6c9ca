//! The net actor: the sole owner of the libp2p Swarm (TCP, noise, yamux; identify; ping;
//! gossipsub for pushing changes; `/kervan/sync/1` for anti-entropy; an allow list that
//! refuses every connection from a device the federation document does not register).
//!
//! It turns the replica's verdicts into gossipsub validation results: an accepted change is
//! forwarded, a rejected one penalises its sender (who is disconnected and banned for a while
//! after repeated offences), a pending one makes the node pull from the sender.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use kervan_protocol::sync::{self, PeerAddrs, Request, Response};
use kervan_protocol::{DeviceKey, FederationId};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::request_response::{self, ProtocolSupport};
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
    sync: request_response::cbor::Behaviour<Request, Response>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
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

enum Command {
    Publish(Vec<u8>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
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
    in_flight: HashSet<PeerId>,
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
                let codec = request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(sync::MAX_REQUEST_BYTES as u64)
                    .set_response_size_maximum(sync::MAX_RESPONSE_BYTES as u64);
                let sync = request_response::Behaviour::with_codec(
                    codec,
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
            in_flight: HashSet::new(),
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

    async fn pull(&mut self, peer: PeerId) {
        if self.in_flight.contains(&peer) || self.blocked.contains(&peer) {
            return;
        }
        let Ok(summary) = self.replica.call(|r| r.sync_summary()).await else {
            return;
        };
        self.in_flight.insert(peer);
        self.swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, Request::Pull(summary));
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(envelope) => self.publish(envelope),
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_statuses());
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
        let result = self.replica.call(move |r| r.ingest(changes, &source)).await;
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
                } => {
                    let answer = self
                        .replica
                        .call(move |r| -> Result<Option<Page>, crate::ReplicaError> {
                            if r.digest() == summary.digest {
                                return Ok(None);
                            }
                            r.sync_page(&summary, sync::MAX_PAGE_BYTES).map(Some)
                        })
                        .await;
                    let peers = self.known_addrs(peer);
                    let response = match answer {
                        Ok(Ok(None)) => Response::UpToDate { peers },
                        Ok(Ok(Some((changes, more)))) => Response::Changes {
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
                request_response::Message::Response { response, .. } => {
                    self.in_flight.remove(&peer);
                    let (changes, more, peers) = match response {
                        Response::UpToDate { peers } => (Vec::new(), false, peers),
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
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                self.in_flight.remove(&peer);
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
