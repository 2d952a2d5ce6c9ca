//! A hostile member on the wire: a registered device's key running a bare libp2p node that
//! answers every `/kervan/sync/1` pull with the envelopes it was given — forged, unauthorised
//! or equivocating — instead of what it holds.

use std::time::Duration;

use futures_util::StreamExt as _;
use kervan_protocol::sync::{self, Request, Response};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};
use tokio::sync::watch;

#[derive(NetworkBehaviour)]
struct Behaviour {
    sync: request_response::cbor::Behaviour<Request, Response>,
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
    /// pull it receives.
    pub async fn start(secret: [u8; 32], targets: Vec<Multiaddr>, envelopes: Vec<Vec<u8>>) -> Self {
        let keypair = identity::Keypair::ed25519_from_bytes(secret).expect("an ed25519 secret");
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(|_| Behaviour {
                sync: request_response::cbor::Behaviour::new(
                    [(StreamProtocol::new(sync::PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
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
                        if let SwarmEvent::Behaviour(BehaviourEvent::Sync(
                            request_response::Event::Message {
                                message: request_response::Message::Request { channel, .. },
                                ..
                            },
                        )) = ev
                        {
                            let answer = Response::Changes {
                                changes: envelopes.clone(),
                                more: false,
                                peers: Vec::new(),
                            };
                            if swarm.behaviour_mut().sync.send_response(channel, answer).is_ok() {
                                served += 1;
                            }
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
