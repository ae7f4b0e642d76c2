//! A scheduler instance: hosts nodes up to its capacity, and owns the
//! network's registry when started as its owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::{Context, Error, ErrorCode, ServerStream};

use super::registry::Registry;
use super::{check_node_id, instance_of};
use crate::Narrator;
use crate::proto::scheduler::{
    AddOutgoingWebhookRequest, AddOutgoingWebhookResponse, CapacityRequest, CapacityResponse,
    ChallengeRequest, ChallengeResponse, ClaimPlacementRequest, DeleteOutgoingWebhooksRequest,
    Empty, ExportNodeRequest, ExportNodeResponse, ListInviteCodesRequest, ListInviteCodesResponse,
    ListOutgoingWebhooksRequest, ListOutgoingWebhooksResponse, NodeInfoRequest, NodeInfoResponse,
    PairDeviceRequest, PairDeviceResponse, PairingServer, PairingServerImpl, RecoveryRequest,
    RecoveryResponse, RegistrationRequest, RegistrationResponse,
    RotateOutgoingWebhookSecretRequest, ScheduleRequest, SchedulerClusterClient,
    SchedulerClusterServer, SchedulerClusterServerImpl, SchedulerServer, SchedulerServerImpl,
    SignerRequest, SignerResponse, UpgradeRequest, UpgradeResponse, WebhookSecretResponse,
};

/// How a scheduler instance is set up.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Its name (it appears in the `grpc_uri` of the nodes it runs).
    pub name: String,
    /// The network it serves (the topic of its methods).
    pub network: String,
    /// How many nodes it can run.
    pub capacity: u32,
    /// Whether it owns the network's registry (exactly one instance must).
    pub registry: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            name: "sched-a".into(),
            network: "regtest".into(),
            capacity: 2,
            registry: true,
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    hosted: BTreeMap<Vec<u8>, NodeInfoResponse>,
    reserved: u32,
}

/// A scheduler instance.
#[derive(Debug)]
pub struct Instance {
    config: InstanceConfig,
    slots: Mutex<Slots>,
    registry: Option<Registry>,
    cluster: SchedulerClusterClient,
    narrator: Narrator,
}

/// The affinity of an instance that runs the node already: it always wins.
const HOSTS_IT: f32 = 1.0e6;
/// The affinity of a full instance: it still claims (so that the caller
/// gets `resource_exhausted` rather than no answer), but any instance with
/// a free slot wins over it.
const FULL: f32 = 0.001;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Instance {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How many more nodes it can run.
    pub fn free(&self) -> u32 {
        let s = lock(&self.slots);
        self.config
            .capacity
            .saturating_sub(s.hosted.len() as u32 + s.reserved)
    }

    /// The nodes it runs.
    pub fn hosted(&self) -> Vec<Vec<u8>> {
        lock(&self.slots).hosted.keys().cloned().collect()
    }

    /// Whether it owns the registry.
    pub fn is_registry_owner(&self) -> bool {
        self.registry.is_some()
    }

    /// How many nodes its registry holds (0 when it owns none).
    pub fn registered_nodes(&self) -> usize {
        self.registry.as_ref().map_or(0, Registry::nodes)
    }

    fn registry(&self) -> psrpc::Result<&Registry> {
        self.registry.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::Unavailable,
                format!("{} does not own the registry", self.config.name),
            )
        })
    }

    fn grpc_uri(&self, node: &[u8]) -> String {
        format!(
            "https://{}.{}.gl.example:9736/{}",
            self.config.name,
            self.config.network,
            hex::encode(node)
        )
    }
}

#[psrpc::async_trait]
impl SchedulerServerImpl for Instance {
    async fn register(
        &self,
        _ctx: Context,
        req: RegistrationRequest,
    ) -> psrpc::Result<RegistrationResponse> {
        let node = crate::short_hex(&req.node_id);
        let res = self.registry()?.register(req);
        if res.is_ok() {
            self.narrator
                .say(format!("{}: registered node {node}", self.config.name));
        }
        res
    }

    async fn recover(
        &self,
        _ctx: Context,
        req: RecoveryRequest,
    ) -> psrpc::Result<RecoveryResponse> {
        self.registry()?.recover(req)
    }

    async fn get_challenge(
        &self,
        _ctx: Context,
        req: ChallengeRequest,
    ) -> psrpc::Result<ChallengeResponse> {
        self.registry()?.get_challenge(req)
    }

    async fn schedule(
        &self,
        ctx: Context,
        req: ScheduleRequest,
    ) -> psrpc::Result<NodeInfoResponse> {
        check_node_id(&req.node_id)?;
        let node = req.node_id;
        let reserved = {
            let mut s = lock(&self.slots);
            if let Some(p) = s.hosted.get(&node) {
                return Ok(p.clone());
            }
            let used = s.hosted.len() as u32 + s.reserved;
            let free = used < self.config.capacity;
            if free {
                s.reserved += 1;
            }
            free
        };
        let uri = self.grpc_uri(&node);
        // The registry owner authenticates the caller (its credentials are
        // passed on) and records the placement, or says where the node
        // runs already.
        let res = self
            .cluster
            .claim_placement(
                self.config.network.as_str(),
                ClaimPlacementRequest {
                    node_id: node.clone(),
                    instance: self.config.name.clone(),
                    grpc_uri: uri.clone(),
                    has_capacity: reserved,
                },
            )
            .context(&ctx)
            .metadata(ctx.metadata().clone())
            .await;
        let mut s = lock(&self.slots);
        if reserved {
            s.reserved -= 1;
        }
        if let Ok(p) = &res {
            if p.grpc_uri == uri {
                s.hosted.insert(node.clone(), p.clone());
                let free = self
                    .config
                    .capacity
                    .saturating_sub(s.hosted.len() as u32 + s.reserved);
                self.narrator.say(format!(
                    "{}: runs node {} now ({free} of {} slots free)",
                    self.config.name,
                    crate::short_hex(&node),
                    self.config.capacity
                ));
            } else {
                self.narrator.say(format!(
                    "{}: node {} runs on {} already",
                    self.config.name,
                    crate::short_hex(&node),
                    instance_of(&p.grpc_uri)
                ));
            }
        }
        res
    }

    fn schedule_affinity(&self, req: &ScheduleRequest) -> f32 {
        let s = lock(&self.slots);
        if s.hosted.contains_key(&req.node_id) {
            return HOSTS_IT;
        }
        match self
            .config
            .capacity
            .saturating_sub(s.hosted.len() as u32 + s.reserved)
        {
            0 => FULL,
            free => free as f32,
        }
    }

    async fn get_node_info(
        &self,
        ctx: Context,
        req: NodeInfoRequest,
    ) -> psrpc::Result<NodeInfoResponse> {
        self.registry()?.get_node_info(&ctx, req).await
    }

    async fn maybe_upgrade(
        &self,
        ctx: Context,
        req: UpgradeRequest,
    ) -> psrpc::Result<UpgradeResponse> {
        self.registry()?.maybe_upgrade(ctx.metadata(), req)
    }

    async fn list_invite_codes(
        &self,
        ctx: Context,
        _req: ListInviteCodesRequest,
    ) -> psrpc::Result<ListInviteCodesResponse> {
        self.registry()?.list_invite_codes(ctx.metadata())
    }

    async fn export_node(
        &self,
        ctx: Context,
        _req: ExportNodeRequest,
    ) -> psrpc::Result<ExportNodeResponse> {
        self.registry()?.export_node(ctx.metadata())
    }

    async fn add_outgoing_webhook(
        &self,
        ctx: Context,
        req: AddOutgoingWebhookRequest,
    ) -> psrpc::Result<AddOutgoingWebhookResponse> {
        self.registry()?.add_webhook(ctx.metadata(), req)
    }

    async fn list_outgoing_webhooks(
        &self,
        ctx: Context,
        req: ListOutgoingWebhooksRequest,
    ) -> psrpc::Result<ListOutgoingWebhooksResponse> {
        self.registry()?.list_webhooks(ctx.metadata(), req)
    }

    async fn delete_webhooks(
        &self,
        ctx: Context,
        req: DeleteOutgoingWebhooksRequest,
    ) -> psrpc::Result<Empty> {
        self.registry()?.delete_webhooks(ctx.metadata(), req)?;
        Ok(Empty {})
    }

    async fn rotate_outgoing_webhook_secret(
        &self,
        ctx: Context,
        req: RotateOutgoingWebhookSecretRequest,
    ) -> psrpc::Result<WebhookSecretResponse> {
        self.registry()?.rotate_webhook_secret(ctx.metadata(), req)
    }

    async fn signer_requests_stream(
        &self,
        stream: ServerStream<SignerRequest, SignerResponse>,
    ) -> psrpc::Result<()> {
        self.registry()?.serve_signer(stream).await
    }
}

#[psrpc::async_trait]
impl PairingServerImpl for Instance {
    async fn pair_device(
        &self,
        ctx: Context,
        req: PairDeviceRequest,
    ) -> psrpc::Result<PairDeviceResponse> {
        self.registry()?.pair_device(&ctx, req).await
    }
}

#[psrpc::async_trait]
impl SchedulerClusterServerImpl for Instance {
    async fn claim_placement(
        &self,
        ctx: Context,
        req: ClaimPlacementRequest,
    ) -> psrpc::Result<NodeInfoResponse> {
        self.registry()?.claim_placement(ctx.metadata(), req)
    }

    async fn get_capacity(
        &self,
        _ctx: Context,
        _req: CapacityRequest,
    ) -> psrpc::Result<CapacityResponse> {
        Ok(CapacityResponse {
            instance: self.config.name.clone(),
            capacity: self.config.capacity,
            free: self.free(),
            registry_owner: self.registry.is_some(),
        })
    }
}

/// A running scheduler instance and its three psrpc servers.
#[derive(Debug)]
pub struct RunningInstance {
    /// The instance.
    pub instance: Arc<Instance>,
    scheduler: SchedulerServer,
    pairing: PairingServer,
    cluster: SchedulerClusterServer,
}

impl RunningInstance {
    /// Stops serving, draining in-flight calls; attached signers see their
    /// stream end with `unavailable`.
    pub async fn shutdown(&self) {
        self.scheduler.shutdown().await;
        self.pairing.shutdown().await;
        self.cluster.shutdown().await;
    }
}

/// Starts an instance on `bus`. Every instance serves `Schedule` and
/// `GetCapacity` on the network's topic; the registry owner also serves the
/// registry group, `PairDevice` and `ClaimPlacement`. Starting a second
/// owner for a network fails with `already_exists`.
pub async fn start_instance(
    bus: DynBus,
    config: InstanceConfig,
    narrator: Narrator,
) -> psrpc::Result<RunningInstance> {
    let cluster_client = SchedulerClusterClient::new(bus.clone()).await?;
    let network = config.network.clone();
    if config.registry {
        let mut answers = cluster_client
            .get_capacity(network.as_str(), CapacityRequest {})
            .timeout(Duration::from_millis(300))
            .await?;
        while let Some(a) = answers.next().await {
            if let Ok(a) = a
                && a.registry_owner
            {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("{} owns the registry of {network} already", a.instance),
                ));
            }
        }
    }
    let instance = Arc::new(Instance {
        registry: config.registry.then(|| Registry::new(&network)),
        config,
        slots: Mutex::new(Slots::default()),
        cluster: cluster_client,
        narrator,
    });
    let scheduler =
        SchedulerServer::from_arc(instance.clone(), bus.clone(), Default::default()).await?;
    let pairing =
        PairingServer::from_arc(instance.clone(), bus.clone(), Default::default()).await?;
    let cluster =
        SchedulerClusterServer::from_arc(instance.clone(), bus, Default::default()).await?;
    scheduler.register_schedule_topic(network.as_str()).await?;
    cluster
        .register_get_capacity_topic(network.as_str())
        .await?;
    if instance.registry.is_some() {
        scheduler
            .register_all_registry_topics(network.as_str())
            .await?;
        pairing.register_pair_device_topic(network.as_str()).await?;
        cluster
            .register_claim_placement_topic(network.as_str())
            .await?;
    }
    Ok(RunningInstance {
        instance,
        scheduler,
        pairing,
        cluster,
    })
}
