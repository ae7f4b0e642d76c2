//! Greenlight's scheduler (seed 002): unary calls with real semantics on
//! in-memory state, affinity placement over several scheduler instances,
//! and the signer's bidirectional stream.
//!
//! # Routing: one registry owner per network
//!
//! A user expects one consistent registry whichever scheduler instance
//! answers: a node registered through one instance can be recovered or
//! scheduled through any other. psrpc offers two ways to get there: route
//! each node's calls by a topic to the instance that holds the node, or give
//! the registry one owner. This example gives **each network's registry one
//! owner**: the registry methods are a topic group (`registry`) on the topic
//! `network`, which only the owner registers, so every registry call from
//! any client reaches the one instance that holds the state, and there is
//! nothing to keep in sync. Per-node topics would spread the registry, but
//! the first contact with a new node has no topic owner yet, and psrpc has
//! no cluster-wide lock to make "register once" hold when two instances take
//! the first calls for the same node at once; with one owner it holds
//! trivially. The price is that the registry is as available as its owner
//! (a production scheduler keeps it in a database).
//!
//! Placement is where the instances differ, and there affinity routing
//! decides: every instance serves `Schedule` on the network's topic and
//! claims each call with its number of free slots (an instance running the
//! node already claims highest; a full one claims 0.001, so that a full
//! cluster answers `resource_exhausted` rather than nothing). The instance
//! with the most free capacity wins, reserves a slot and records the
//! placement with the owner (`SchedulerCluster.ClaimPlacement`, forwarding
//! the caller's deadline and credentials), which answers with the existing
//! placement when the node runs elsewhere already. `SchedulerCluster.
//! GetCapacity` is a multi call: every instance reports its capacity.
//!
//! # Semantics
//!
//! * Challenges are one-time (consumed when presented, whatever the
//!   outcome), expire after a minute, and are bound to their scope and node:
//!   a reused challenge is `unauthenticated`, one of the wrong scope or node
//!   `permission_denied`. Signatures are simulated ([`signature`]): the
//!   example is about the protocol, not the cryptography.
//! * A node registers once (`already_exists` after that) and gets two invite
//!   codes; an unknown code is `not_found`, a redeemed one
//!   `failed_precondition`. `Recover` issues new credentials without
//!   revoking the old ones.
//! * Calls about a registered node carry its credentials as metadata
//!   ([`NODE_ID_KEY`], [`CERT_KEY`]): missing or wrong ones are
//!   `unauthenticated`, another node's `permission_denied`.
//! * `GetNodeInfo` is passive (an empty `grpc_uri` when the node is not
//!   scheduled) or waits for the placement with `wait`.
//! * `ExportNode` is idempotent; an exported node is not schedulable.
//! * Webhooks are https only; deleting or rotating an unknown id is
//!   `not_found` (and a delete with one unknown id deletes nothing).
//! * A signer attaches with `SignerRequestsStream`; the scheduler greets it
//!   with an empty request (id 0) and hands it `ApprovePairingRequest`s when
//!   a new device calls `Pairing.PairDevice`; its answer, matched by request
//!   id, gives the device credentials or `permission_denied`. Without an
//!   attached signer pairing is `failed_precondition`.

mod instance;
mod registry;
mod scenario;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::{Error, ErrorCode, Metadata, SelectionOptions, StreamSender};
use sha2::{Digest, Sha256};

pub use instance::{Instance, InstanceConfig, RunningInstance, start_instance};
pub use scenario::run_client;

use crate::proto::scheduler::{
    ApprovePairingResponse, CapacityRequest, CapacityResponse, ChallengeRequest, ChallengeScope,
    NodeInfoRequest, NodeInfoResponse, PairDeviceRequest, PairDeviceResponse, PairingClient,
    RecoveryRequest, RegistrationRequest, ScheduleRequest, SchedulerClient, SchedulerClusterClient,
    SignerRejection, SignerRequest, SignerResponse, signer_request, signer_response,
};
use crate::{BoxError, Narrator};

/// The metadata key of the caller's node id (hex).
pub const NODE_ID_KEY: &str = "gl-node-id";
/// The metadata key of the caller's device certificate.
pub const CERT_KEY: &str = "gl-device-cert";

/// Checks a node id: a 33-byte compressed public key.
pub fn check_node_id(node: &[u8]) -> psrpc::Result<()> {
    if node.len() == 33 && matches!(node[0], 2 | 3) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "node id must be a 33-byte compressed public key, got {} bytes",
                node.len()
            ),
        ))
    }
}

/// The simulated signature of `challenge` by `node`.
pub fn signature(node: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"simulated-signature");
    h.update(node);
    h.update(challenge);
    h.finalize().to_vec()
}

/// The scheduler instance named in a node's `grpc_uri`.
pub fn instance_of(grpc_uri: &str) -> &str {
    grpc_uri
        .trim_start_matches("https://")
        .split('.')
        .next()
        .unwrap_or_default()
}

/// A node's key (a fresh random node id).
#[derive(Debug, Clone)]
pub struct NodeKey {
    /// The 33-byte node id.
    pub node_id: Vec<u8>,
}

impl NodeKey {
    /// A new node.
    pub fn generate() -> Self {
        let mut node_id = vec![0x02];
        node_id.extend_from_slice(&crate::random_32());
        NodeKey { node_id }
    }

    /// Signs a challenge.
    pub fn sign(&self, challenge: &[u8]) -> Vec<u8> {
        signature(&self.node_id, challenge)
    }
}

/// A device's credentials for a node.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The node.
    pub node_id: Vec<u8>,
    /// The device certificate.
    pub device_cert: String,
    /// Its private key.
    pub device_key: String,
    /// The rune.
    pub rune: String,
}

impl Credentials {
    /// The call metadata that authenticates a call.
    pub fn metadata(&self) -> Metadata {
        [
            (NODE_ID_KEY.to_owned(), hex::encode(&self.node_id)),
            (CERT_KEY.to_owned(), self.device_cert.clone()),
        ]
        .into_iter()
        .collect()
    }
}

/// A client of a network's schedulers: the generated clients and the
/// network, with the flows a user runs (challenge then register, ...).
#[derive(Debug, Clone)]
pub struct GlClient {
    network: String,
    /// The Scheduler service.
    pub scheduler: SchedulerClient,
    /// The Pairing service.
    pub pairing: PairingClient,
    /// The SchedulerCluster service.
    pub cluster: SchedulerClusterClient,
}

impl GlClient {
    /// A client of `network`'s schedulers on `bus`.
    pub async fn new(bus: DynBus, network: &str) -> psrpc::Result<Self> {
        Ok(GlClient {
            network: network.to_owned(),
            scheduler: SchedulerClient::new(bus.clone()).await?,
            pairing: PairingClient::new(bus.clone()).await?,
            cluster: SchedulerClusterClient::new(bus).await?,
        })
    }

    /// The network.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Gets a challenge for `scope` and `node`.
    pub async fn challenge(&self, scope: i32, node: &[u8]) -> psrpc::Result<Vec<u8>> {
        let res = self
            .scheduler
            .get_challenge(
                self.network.as_str(),
                ChallengeRequest {
                    scope,
                    node_id: node.to_vec(),
                },
            )
            .await?;
        Ok(res.challenge)
    }

    /// Registers `key`'s node (with an invite code, or none when empty).
    pub async fn register(&self, key: &NodeKey, invite_code: &str) -> psrpc::Result<Credentials> {
        let challenge = self
            .challenge(ChallengeScope::Register as i32, &key.node_id)
            .await?;
        let res = self
            .scheduler
            .register(
                self.network.as_str(),
                RegistrationRequest {
                    node_id: key.node_id.clone(),
                    bip32_key: vec![0; 78],
                    network: self.network.clone(),
                    signature: key.sign(&challenge),
                    challenge,
                    csr: b"csr".to_vec(),
                    invite_code: invite_code.to_owned(),
                },
            )
            .await?;
        Ok(Credentials {
            node_id: key.node_id.clone(),
            device_cert: res.device_cert,
            device_key: res.device_key,
            rune: res.rune,
        })
    }

    /// Recovers credentials for `key`'s node.
    pub async fn recover(&self, key: &NodeKey) -> psrpc::Result<Credentials> {
        let challenge = self
            .challenge(ChallengeScope::Recover as i32, &key.node_id)
            .await?;
        let res = self
            .scheduler
            .recover(
                self.network.as_str(),
                RecoveryRequest {
                    signature: key.sign(&challenge),
                    challenge,
                    node_id: key.node_id.clone(),
                    csr: b"csr".to_vec(),
                },
            )
            .await?;
        Ok(Credentials {
            node_id: key.node_id.clone(),
            device_cert: res.device_cert,
            device_key: res.device_key,
            rune: res.rune,
        })
    }

    /// Schedules the node of `creds`: the instance with the best claim
    /// (the most free slots) after psrpc's default affinity selection.
    pub async fn schedule(&self, creds: &Credentials) -> psrpc::Result<NodeInfoResponse> {
        self.schedule_with(creds, None).await
    }

    /// [`schedule`](Self::schedule) with selection options, e.g. a
    /// `maximum_affinity` that takes the first instance claiming that many
    /// free slots at once instead of waiting for every claim.
    pub async fn schedule_with(
        &self,
        creds: &Credentials,
        selection: Option<SelectionOptions>,
    ) -> psrpc::Result<NodeInfoResponse> {
        let call = self
            .scheduler
            .schedule(
                self.network.as_str(),
                ScheduleRequest {
                    node_id: creds.node_id.clone(),
                },
            )
            .metadata(creds.metadata());
        match selection {
            Some(s) => call.selection(s).await,
            None => call.await,
        }
    }

    /// Where the node of `creds` runs (waiting for it with `wait`, at most
    /// `timeout`).
    pub async fn node_info(
        &self,
        creds: &Credentials,
        wait: bool,
        timeout: Duration,
    ) -> psrpc::Result<NodeInfoResponse> {
        self.scheduler
            .get_node_info(
                self.network.as_str(),
                NodeInfoRequest {
                    node_id: creds.node_id.clone(),
                    wait,
                },
            )
            .metadata(creds.metadata())
            .timeout(timeout)
            .await
    }

    /// The capacity of every instance (a multi call): stops at `expect`
    /// answers, or after 500 ms.
    pub async fn capacities(&self, expect: usize) -> psrpc::Result<Vec<CapacityResponse>> {
        let mut answers = self
            .cluster
            .get_capacity(self.network.as_str(), CapacityRequest {})
            .timeout(Duration::from_millis(500))
            .await?;
        let mut out = Vec::new();
        while let Some(a) = answers.next().await {
            out.push(a?);
            if out.len() == expect {
                break;
            }
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }

    /// Asks to pair a new device with `node`.
    pub async fn pair_device(
        &self,
        node: &[u8],
        device_name: &str,
        restrictions: &str,
    ) -> psrpc::Result<PairDeviceResponse> {
        self.pairing
            .pair_device(
                self.network.as_str(),
                PairDeviceRequest {
                    node_id: node.to_vec(),
                    device_name: device_name.to_owned(),
                    restrictions: restrictions.to_owned(),
                    csr: b"csr".to_vec(),
                },
            )
            .timeout(Duration::from_secs(5))
            .await
    }

    /// Attaches a signer for the node of `creds` that approves every
    /// pairing except those of the devices named in `refuse`. Returns once
    /// the scheduler greeted it.
    pub async fn attach_signer(
        &self,
        creds: &Credentials,
        refuse: &[&str],
    ) -> psrpc::Result<Signer> {
        let mut stream = self
            .scheduler
            .signer_requests_stream(self.network.as_str())
            .metadata(creds.metadata())
            .await?;
        match stream.recv().await? {
            Some(hello) if hello.request_id == 0 => {}
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("the scheduler greeted with request {}", other.request_id),
                ));
            }
            None => return Err(Error::stream_closed()),
        }
        let approved = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let sender = stream.sender();
        let refuse: Vec<String> = refuse.iter().map(|s| s.to_string()).collect();
        let rune_prefix = hex::encode(&creds.node_id[..8]);
        let task = {
            let (approved, refused) = (approved.clone(), refused.clone());
            tokio::spawn(async move {
                // Ends cleanly on a clean close, with the error otherwise.
                while let Some(req) = stream.recv().await? {
                    let Some(signer_request::Request::ApprovePairing(ask)) = req.request else {
                        continue;
                    };
                    let response = if refuse.contains(&ask.device_name) {
                        refused.fetch_add(1, Ordering::Relaxed);
                        signer_response::Response::Rejection(SignerRejection {
                            msg: format!("device `{}` is not trusted", ask.device_name),
                        })
                    } else {
                        approved.fetch_add(1, Ordering::Relaxed);
                        signer_response::Response::ApprovePairing(ApprovePairingResponse {
                            session_id: ask.session_id,
                            node_id: ask.node_id,
                            rune: format!("rune:{rune_prefix}:{}", ask.restrictions),
                        })
                    };
                    stream
                        .send(SignerResponse {
                            request_id: req.request_id,
                            response: Some(response),
                        })
                        .await?;
                }
                Ok(())
            })
        };
        Ok(Signer {
            sender,
            task,
            approved,
            refused,
        })
    }
}

/// An attached signer.
#[derive(Debug)]
pub struct Signer {
    sender: StreamSender<SignerResponse, SignerRequest>,
    task: tokio::task::JoinHandle<psrpc::Result<()>>,
    approved: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Signer {
    /// How many pairings it approved.
    pub fn approved(&self) -> u64 {
        self.approved.load(Ordering::Relaxed)
    }

    /// How many it refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Detaches: closes the stream and waits for the signer to stop.
    pub async fn detach(self) -> Result<(), BoxError> {
        let _ = self.sender.close().await;
        self.task.await??;
        Ok(())
    }
}

/// What the client side does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The network.
    pub network: String,
    /// How many scheduler instances to expect (0: whoever answers within
    /// 500 ms).
    pub instances: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            network: "regtest".into(),
            instances: 0,
        }
    }
}

/// Where a node was placed.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The node (short hex).
    pub node: String,
    /// The instance that runs it.
    pub instance: String,
    /// Every instance's free slots just before.
    pub free_before: BTreeMap<String, u32>,
}

/// What the client side saw.
#[derive(Debug)]
pub struct ClientReport {
    /// The instances as they were at the start.
    pub instances: Vec<CapacityResponse>,
    /// The placements, in order.
    pub placements: Vec<Placement>,
    /// The bad calls: case and error code, in order.
    pub errors: Vec<(String, ErrorCode)>,
    /// The device paired through the signer.
    pub paired: PairDeviceResponse,
}

impl ClientReport {
    /// The error code of a bad-call case.
    pub fn code(&self, case: &str) -> Option<&ErrorCode> {
        self.errors.iter().find(|(c, _)| c == case).map(|(_, e)| e)
    }
}

/// The whole scenario on one bus: instances `sched-a` (registry owner, 1
/// slot), `sched-b` (2 slots) and `sched-c` (3 slots), and the client side.
pub async fn run_both(bus: DynBus, narrator: &Narrator) -> Result<ClientReport, BoxError> {
    let mut instances = Vec::new();
    for (name, capacity) in [("sched-a", 1), ("sched-b", 2), ("sched-c", 3)] {
        let config = InstanceConfig {
            name: name.into(),
            network: "regtest".into(),
            capacity,
            registry: name == "sched-a",
        };
        instances.push(start_instance(bus.clone(), config, narrator.clone()).await?);
    }
    let config = ClientConfig {
        instances: instances.len(),
        ..Default::default()
    };
    let report = run_client(bus, &config, narrator).await;
    for i in &instances {
        let inst = &i.instance;
        narrator.say(format!(
            "{} runs {} nodes{}",
            inst.name(),
            inst.hosted().len(),
            if inst.is_registry_owner() {
                format!(
                    " and holds the registry ({} nodes)",
                    inst.registered_nodes()
                )
            } else {
                String::new()
            }
        ));
        i.shutdown().await;
    }
    report
}
