//! A hostile member on the wire: a registered device's key running a bare libp2p node that
//! answers every `/kervan/sync/4` pull with the envelopes it was given — forged, unauthorised
//! or equivocating — instead of what it holds — and a flood of invalid gossip.

use std::time::Duration;

use futures_util::StreamExt as _;
use kervan_protocol::sync::{self, Request, Response};
use kervan_protocol::{FederationId, SignedChange};
use libp2p::gossipsub;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A page of changes in the wire form of `Response::Changes` with one packed run of whatever
/// bytes the test gives (`[1, [[doc, packed, sigs]], false, []]`): a deflate bomb, bytes
/// that do not inflate, signatures that do not match.
#[derive(Debug, Clone)]
pub struct PackedPage {
    pub prefix: Vec<u8>,
    pub packed: Vec<u8>,
    pub sigs: Vec<u8>,
}

impl Serialize for PackedPage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let run = (
            serde_bytes::Bytes::new(&self.prefix),
            serde_bytes::Bytes::new(&self.packed),
            serde_bytes::Bytes::new(&self.sigs),
        );
        (1u8, [run], false, Vec::<()>::new()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for PackedPage {
    /// Only ever sent: a hostile peer sends no requests, so it reads no answers.
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("a packed page is only written"))
    }
}

/// A running hostile peer; it stops when dropped.
#[derive(Debug)]
pub struct HostilePeer {
    pub peer_id: PeerId,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<usize>,
}

impl HostilePeer {
    /// Dials `targets` with `secret` (a member's device key) and serves `envelopes` to every
    /// pull it receives. Pages carry one signature per actor and run: a forged signature
    /// reaches the receiver where it is an actor's newest change in the page.
    pub async fn start(secret: [u8; 32], targets: Vec<Multiaddr>, envelopes: Vec<Vec<u8>>) -> Self {
        let answer = Response::Changes {
            changes: envelopes,
            more: false,
            peers: Vec::new(),
        };
        Self::answering(secret, targets, answer).await
    }

    /// Dials `targets` with `secret` and gives `answer` to every pull it receives, whatever
    /// its size.
    pub async fn answering(secret: [u8; 32], targets: Vec<Multiaddr>, answer: Response) -> Self {
        Self::answering_raw(secret, targets, answer).await
    }

    /// Dials `targets` with `secret` and gives every pull `answer` as its CBOR, whatever the
    /// protocol makes of it: for answers no honest encoder writes.
    pub async fn answering_raw<R>(secret: [u8; 32], targets: Vec<Multiaddr>, answer: R) -> Self
    where
        R: Serialize + DeserializeOwned + Clone + Send + std::fmt::Debug + 'static,
    {
        let keypair = identity::Keypair::ed25519_from_bytes(secret).expect("an ed25519 secret");
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| {
                request_response::cbor::Behaviour::<Request, R>::new(
                    [(StreamProtocol::new(sync::PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default(),
                )
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for t in targets {
            swarm.dial(t).expect("dial");
        }
        let peer_id = *swarm.local_peer_id();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut served = 0;
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Request { channel, .. },
                            ..
                        }) = ev
                            && swarm.behaviour_mut().send_response(channel, answer.clone()).is_ok()
                        {
                            served += 1;
                        }
                    }
                    _ = stopped.changed() => return served,
                }
            }
        });
        Self {
            peer_id,
            stop,
            task,
        }
    }

    /// Stops the peer; answers how many pulls it served.
    pub async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

#[derive(NetworkBehaviour)]
struct FloodBehaviour {
    gossipsub: gossipsub::Behaviour,
}

/// What a flood did, seen from the attacker.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    /// Messages the attacker tried to publish.
    pub attempted: u64,
    /// Messages its gossipsub took and sent to a connected victim.
    pub published: u64,
    /// Times it dialled the victim again after losing the connection.
    pub redials: u64,
    pub seconds: f64,
}

/// A member gone rogue on the gossip topic: for `duration` it publishes `rate` invalid
/// messages a second — each one unique, so no cache absorbs them — as forged signatures over
/// a genuine change, random bytes, and now and then a message larger than the protocol
/// allows. Cut off, it dials again every 200 ms.
pub async fn flood(
    secret: [u8; 32],
    victim: Vec<Multiaddr>,
    federation: FederationId,
    genuine: Vec<u8>,
    rate: u64,
    duration: Duration,
) -> FloodReport {
    use rand::Rng as _;
    let keypair = identity::Keypair::ed25519_from_bytes(secret).expect("an ed25519 secret");
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| {
            use sha2::Digest as _;
            gossipsub::MessageId::from(sha2::Sha256::digest(&m.data).to_vec())
        })
        .max_transmit_size(256 << 10)
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .expect("gossipsub config");
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| FloodBehaviour {
            gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
                .expect("gossipsub"),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let topic = kervan_node::net::topic(&federation);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .expect("subscribe");
    for addr in &victim {
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().gossipsub.add_explicit_peer(&peer);
        }
        let _ = swarm.dial(addr.clone());
    }
    let mut template = SignedChange::decode(&genuine, usize::MAX).expect("a genuine envelope");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(rand::random());
    let mut report = FloodReport::default();
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut redial = tokio::time::interval(Duration::from_millis(200));
    let mut connected = false;
    while start.elapsed() < duration {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { .. } => connected = true,
                SwarmEvent::ConnectionClosed { num_established: 0, .. } => connected = false,
                _ => {}
            },
            _ = redial.tick() => {
                if !connected {
                    report.redials += 1;
                    for addr in &victim {
                        let _ = swarm.dial(addr.clone());
                    }
                }
            }
            _ = tick.tick() => {
                // Catch up with the rate whatever the timer's jitter, a burst at most per tick.
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                let burst = due.saturating_sub(report.attempted).min(rate / 10);
                for _ in 0..burst {
                    let n = report.attempted;
                    report.attempted += 1;
                    let message = match n % 1000 {
                        0 => {
                            let mut big = vec![0u8; 100_000];
                            rng.fill_bytes(&mut big);
                            big
                        }
                        k if k % 2 == 0 => {
                            template.signature_mut().expect("a signed template")[..8]
                                .copy_from_slice(&n.to_le_bytes());
                            template.encode()
                        }
                        _ => {
                            let mut junk = vec![0u8; 200];
                            rng.fill_bytes(&mut junk);
                            junk
                        }
                    };
                    if swarm.behaviour_mut().gossipsub.publish(topic.clone(), message).is_ok() {
                        report.published += 1;
                    }
                }
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}
