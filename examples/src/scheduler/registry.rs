//! The registry of one network, held by its owner instance: nodes,
//! credentials, challenges, invite codes, webhooks, placements and attached
//! signers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use psrpc::{Context, Error, ErrorCode, Metadata, ServerStream, StreamSender};
use tokio::sync::{Notify, oneshot};

use super::{CERT_KEY, NODE_ID_KEY, check_node_id, signature};
use crate::proto::scheduler::{
    AddOutgoingWebhookRequest, AddOutgoingWebhookResponse, ApprovePairingRequest, ChallengeRequest,
    ChallengeResponse, ChallengeScope, ClaimPlacementRequest, DeleteOutgoingWebhooksRequest,
    ExportNodeResponse, InviteCode, ListInviteCodesResponse, ListOutgoingWebhooksRequest,
    ListOutgoingWebhooksResponse, NodeInfoRequest, NodeInfoResponse, PairDeviceRequest,
    PairDeviceResponse, RecoveryRequest, RecoveryResponse, RegistrationRequest,
    RegistrationResponse, RotateOutgoingWebhookSecretRequest, SignerRequest, SignerResponse,
    UpgradeRequest, UpgradeResponse, Webhook, WebhookSecretResponse, signer_request,
    signer_response,
};

/// How long a challenge stays valid.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// The node version a new node starts with.
const INITIAL_VERSION: &str = "v23.08";
/// How long a pairing waits for the signer when the call has no deadline.
const PAIRING_WAIT: Duration = Duration::from_secs(10);

fn err(code: ErrorCode, msg: impl Into<String>) -> Error {
    Error::new(code, msg)
}

fn random_hex(n: usize) -> String {
    hex::encode(&crate::random_32()[..n])
}

struct Challenge {
    scope: i32,
    node: Vec<u8>,
    expires: Instant,
}

struct Invite {
    redeemed: bool,
}

#[derive(Default)]
struct NodeRecord {
    certs: HashSet<String>,
    version: String,
    placement: Option<NodeInfoResponse>,
    export_url: Option<String>,
    webhooks: BTreeMap<i64, (String, String)>,
    invites: Vec<String>,
}

#[derive(Default)]
struct State {
    challenges: HashMap<Vec<u8>, Challenge>,
    nodes: HashMap<Vec<u8>, NodeRecord>,
    invites: HashMap<String, Invite>,
    next_webhook: i64,
    next_session: u64,
}

#[derive(Clone)]
struct SignerLink {
    id: u64,
    sender: StreamSender<SignerRequest, SignerResponse>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<SignerResponse>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A network's registry.
pub(crate) struct Registry {
    network: String,
    state: Mutex<State>,
    placed: Notify,
    signers: Mutex<HashMap<Vec<u8>, SignerLink>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("network", &self.network)
            .field("nodes", &lock(&self.state).nodes.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(network: &str) -> Self {
        Registry {
            network: network.to_owned(),
            state: Mutex::new(State::default()),
            placed: Notify::new(),
            signers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn nodes(&self) -> usize {
        lock(&self.state).nodes.len()
    }

    /// The node the call's credentials are for.
    fn authenticate(&self, st: &State, md: &Metadata) -> psrpc::Result<Vec<u8>> {
        let (Some(node), Some(cert)) = (md.get(NODE_ID_KEY), md.get(CERT_KEY)) else {
            return Err(err(
                ErrorCode::Unauthenticated,
                format!("missing credentials: send the {NODE_ID_KEY} and {CERT_KEY} metadata"),
            ));
        };
        let node = hex::decode(node).map_err(|_| {
            err(
                ErrorCode::Unauthenticated,
                format!("{NODE_ID_KEY} is not hex"),
            )
        })?;
        match st.nodes.get(&node) {
            Some(rec) if rec.certs.contains(cert) => Ok(node),
            _ => Err(err(ErrorCode::Unauthenticated, "invalid credentials")),
        }
    }

    /// The credentials' node, which must be `node`.
    fn authorize(&self, st: &State, md: &Metadata, node: &[u8]) -> psrpc::Result<Vec<u8>> {
        check_node_id(node)?;
        let me = self.authenticate(st, md)?;
        if me != node {
            return Err(err(
                ErrorCode::PermissionDenied,
                "the credentials are for another node",
            ));
        }
        Ok(me)
    }

    fn new_credentials(&self, st: &mut State, node: &[u8]) -> (String, String, String) {
        let cert = format!(
            "-----BEGIN CERTIFICATE-----\ngl:{}:{}:{}\n-----END CERTIFICATE-----",
            self.network,
            hex::encode(node),
            random_hex(16)
        );
        let key = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----",
            random_hex(32)
        );
        let rune = format!("rune:{}:{}", &hex::encode(node)[..16], random_hex(8));
        if let Some(rec) = st.nodes.get_mut(node) {
            rec.certs.insert(cert.clone());
        }
        (cert, key, rune)
    }

    /// Consumes `challenge` (one-time, whatever the outcome) and checks its
    /// scope, node and signature.
    fn take_challenge(
        &self,
        st: &mut State,
        challenge: &[u8],
        scope: ChallengeScope,
        node: &[u8],
        sig: &[u8],
    ) -> psrpc::Result<()> {
        let Some(c) = st.challenges.remove(challenge) else {
            return Err(err(
                ErrorCode::Unauthenticated,
                "unknown challenge, or already used: challenges are one-time",
            ));
        };
        if c.expires < Instant::now() {
            return Err(err(ErrorCode::Unauthenticated, "the challenge expired"));
        }
        if c.scope != scope as i32 {
            let issued = ChallengeScope::try_from(c.scope).map_or("?", |s| s.as_str_name());
            return Err(err(
                ErrorCode::PermissionDenied,
                format!(
                    "the challenge was issued for {issued}, not {}",
                    scope.as_str_name()
                ),
            ));
        }
        if c.node != node {
            return Err(err(
                ErrorCode::PermissionDenied,
                "the challenge was issued for another node",
            ));
        }
        if sig != signature(node, challenge) {
            return Err(err(ErrorCode::Unauthenticated, "bad signature"));
        }
        Ok(())
    }

    pub(crate) fn get_challenge(&self, req: ChallengeRequest) -> psrpc::Result<ChallengeResponse> {
        check_node_id(&req.node_id)?;
        let scope = ChallengeScope::try_from(req.scope).map_err(|_| {
            err(
                ErrorCode::InvalidArgument,
                format!("unknown challenge scope {}", req.scope),
            )
        })?;
        let mut st = lock(&self.state);
        if scope == ChallengeScope::Recover && !st.nodes.contains_key(&req.node_id) {
            return Err(err(
                ErrorCode::NotFound,
                format!("node {} is not registered", hex::encode(&req.node_id)),
            ));
        }
        let now = Instant::now();
        st.challenges.retain(|_, c| c.expires > now);
        let challenge = crate::random_32().to_vec();
        st.challenges.insert(
            challenge.clone(),
            Challenge {
                scope: scope as i32,
                node: req.node_id,
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok(ChallengeResponse { challenge })
    }

    pub(crate) fn register(&self, req: RegistrationRequest) -> psrpc::Result<RegistrationResponse> {
        check_node_id(&req.node_id)?;
        if req.network != self.network {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "network `{}` does not match this registry's `{}`",
                    req.network, self.network
                ),
            ));
        }
        let mut st = lock(&self.state);
        self.take_challenge(
            &mut st,
            &req.challenge,
            ChallengeScope::Register,
            &req.node_id,
            &req.signature,
        )?;
        if st.nodes.contains_key(&req.node_id) {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!(
                    "node {} is registered already: use Recover to get new credentials",
                    hex::encode(&req.node_id)
                ),
            ));
        }
        if !req.invite_code.is_empty() {
            match st.invites.get_mut(&req.invite_code) {
                None => {
                    return Err(err(
                        ErrorCode::NotFound,
                        format!("unknown invite code `{}`", req.invite_code),
                    ));
                }
                Some(i) if i.redeemed => {
                    return Err(err(
                        ErrorCode::FailedPrecondition,
                        format!("invite code `{}` was redeemed already", req.invite_code),
                    ));
                }
                Some(i) => i.redeemed = true,
            }
        }
        let invites: Vec<String> = (0..2)
            .map(|_| format!("INV-{}", random_hex(4).to_uppercase()))
            .collect();
        for code in &invites {
            st.invites.insert(code.clone(), Invite { redeemed: false });
        }
        st.nodes.insert(
            req.node_id.clone(),
            NodeRecord {
                version: INITIAL_VERSION.into(),
                invites,
                ..Default::default()
            },
        );
        let (device_cert, device_key, rune) = self.new_credentials(&mut st, &req.node_id);
        Ok(RegistrationResponse {
            device_cert,
            device_key,
            rune,
        })
    }

    pub(crate) fn recover(&self, req: RecoveryRequest) -> psrpc::Result<RecoveryResponse> {
        check_node_id(&req.node_id)?;
        let mut st = lock(&self.state);
        self.take_challenge(
            &mut st,
            &req.challenge,
            ChallengeScope::Recover,
            &req.node_id,
            &req.signature,
        )?;
        if !st.nodes.contains_key(&req.node_id) {
            return Err(err(ErrorCode::NotFound, "node is not registered"));
        }
        let (device_cert, device_key, rune) = self.new_credentials(&mut st, &req.node_id);
        Ok(RecoveryResponse {
            device_cert,
            device_key,
            rune,
        })
    }

    pub(crate) fn claim_placement(
        &self,
        md: &Metadata,
        req: ClaimPlacementRequest,
    ) -> psrpc::Result<NodeInfoResponse> {
        let mut st = lock(&self.state);
        let node = self.authorize(&st, md, &req.node_id)?;
        let session = st.next_session + 1;
        let rec = st.nodes.get_mut(&node).expect("authorized nodes exist");
        if rec.export_url.is_some() {
            return Err(err(
                ErrorCode::FailedPrecondition,
                "the node was exported: it cannot be scheduled any more",
            ));
        }
        if let Some(p) = &rec.placement {
            return Ok(p.clone());
        }
        if !req.has_capacity {
            return Err(err(
                ErrorCode::ResourceExhausted,
                "no scheduler instance has a free slot",
            ));
        }
        let placement = NodeInfoResponse {
            node_id: node,
            grpc_uri: req.grpc_uri,
            session_id: session,
        };
        rec.placement = Some(placement.clone());
        st.next_session = session;
        drop(st);
        self.placed.notify_waiters();
        Ok(placement)
    }

    pub(crate) async fn get_node_info(
        &self,
        ctx: &Context,
        req: NodeInfoRequest,
    ) -> psrpc::Result<NodeInfoResponse> {
        loop {
            let notified = self.placed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = lock(&self.state);
                let node = self.authorize(&st, ctx.metadata(), &req.node_id)?;
                match &st.nodes[&node].placement {
                    Some(p) => return Ok(p.clone()),
                    None if !req.wait => {
                        return Ok(NodeInfoResponse {
                            node_id: node,
                            ..Default::default()
                        });
                    }
                    None => {}
                }
            }
            match ctx.remaining() {
                Some(left) => {
                    if tokio::time::timeout(left, notified).await.is_err() {
                        return Err(err(
                            ErrorCode::DeadlineExceeded,
                            "the node was not scheduled in time",
                        ));
                    }
                }
                None => notified.await,
            }
        }
    }

    pub(crate) fn maybe_upgrade(
        &self,
        md: &Metadata,
        req: UpgradeRequest,
    ) -> psrpc::Result<UpgradeResponse> {
        let v = &req.signer_version;
        let well_formed = v.len() > 1
            && v.starts_with('v')
            && v[1..]
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("signer version `{v}` is not of the form v24.02"),
            ));
        }
        let mut st = lock(&self.state);
        let node = self.authenticate(&st, md)?;
        let rec = st.nodes.get_mut(&node).expect("authenticated nodes exist");
        if rec.export_url.is_some() {
            return Err(err(ErrorCode::FailedPrecondition, "the node was exported"));
        }
        let old_version = std::mem::replace(&mut rec.version, req.signer_version);
        Ok(UpgradeResponse { old_version })
    }

    pub(crate) fn list_invite_codes(
        &self,
        md: &Metadata,
    ) -> psrpc::Result<ListInviteCodesResponse> {
        let st = lock(&self.state);
        let node = self.authenticate(&st, md)?;
        let invite_code_list = st.nodes[&node]
            .invites
            .iter()
            .map(|code| InviteCode {
                code: code.clone(),
                is_redeemed: st.invites.get(code).is_some_and(|i| i.redeemed),
            })
            .collect();
        Ok(ListInviteCodesResponse { invite_code_list })
    }

    pub(crate) fn export_node(&self, md: &Metadata) -> psrpc::Result<ExportNodeResponse> {
        let mut st = lock(&self.state);
        let node = self.authenticate(&st, md)?;
        let network = self.network.clone();
        let rec = st.nodes.get_mut(&node).expect("authenticated nodes exist");
        let url = rec
            .export_url
            .get_or_insert_with(|| {
                format!(
                    "https://export.{network}.gl.example/{}/{}.tar.enc",
                    hex::encode(&node),
                    random_hex(8)
                )
            })
            .clone();
        Ok(ExportNodeResponse { url })
    }

    pub(crate) fn add_webhook(
        &self,
        md: &Metadata,
        req: AddOutgoingWebhookRequest,
    ) -> psrpc::Result<AddOutgoingWebhookResponse> {
        let host = req
            .uri
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if host.is_empty() {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("webhook uri `{}` is not an https:// URL", req.uri),
            ));
        }
        let mut st = lock(&self.state);
        let node = self.authorize(&st, md, &req.node_id)?;
        st.next_webhook += 1;
        let id = st.next_webhook;
        let secret = format!("whsec_{}", random_hex(24));
        st.nodes
            .get_mut(&node)
            .expect("authorized nodes exist")
            .webhooks
            .insert(id, (req.uri, secret.clone()));
        Ok(AddOutgoingWebhookResponse { id, secret })
    }

    pub(crate) fn list_webhooks(
        &self,
        md: &Metadata,
        req: ListOutgoingWebhooksRequest,
    ) -> psrpc::Result<ListOutgoingWebhooksResponse> {
        let st = lock(&self.state);
        let node = self.authorize(&st, md, &req.node_id)?;
        let outgoing_webhooks = st.nodes[&node]
            .webhooks
            .iter()
            .map(|(id, (uri, _))| Webhook {
                id: *id,
                uri: uri.clone(),
            })
            .collect();
        Ok(ListOutgoingWebhooksResponse { outgoing_webhooks })
    }

    pub(crate) fn delete_webhooks(
        &self,
        md: &Metadata,
        req: DeleteOutgoingWebhooksRequest,
    ) -> psrpc::Result<()> {
        if req.ids.is_empty() {
            return Err(err(ErrorCode::InvalidArgument, "no webhook ids given"));
        }
        let mut st = lock(&self.state);
        let node = self.authorize(&st, md, &req.node_id)?;
        let hooks = &mut st
            .nodes
            .get_mut(&node)
            .expect("authorized nodes exist")
            .webhooks;
        if let Some(id) = req.ids.iter().find(|id| !hooks.contains_key(id)) {
            return Err(err(
                ErrorCode::NotFound,
                format!("webhook {id} does not exist: nothing deleted"),
            ));
        }
        for id in &req.ids {
            hooks.remove(id);
        }
        Ok(())
    }

    pub(crate) fn rotate_webhook_secret(
        &self,
        md: &Metadata,
        req: RotateOutgoingWebhookSecretRequest,
    ) -> psrpc::Result<WebhookSecretResponse> {
        let mut st = lock(&self.state);
        let node = self.authorize(&st, md, &req.node_id)?;
        let hooks = &mut st
            .nodes
            .get_mut(&node)
            .expect("authorized nodes exist")
            .webhooks;
        let Some((_, secret)) = hooks.get_mut(&req.webhook_id) else {
            return Err(err(
                ErrorCode::NotFound,
                format!("webhook {} does not exist", req.webhook_id),
            ));
        };
        *secret = format!("whsec_{}", random_hex(24));
        Ok(WebhookSecretResponse {
            secret: secret.clone(),
        })
    }

    /// Serves an attached signer until its stream ends: greets it with an
    /// empty request (id 0), then routes its responses to the pairings
    /// waiting for them. The latest signer of a node gets the requests.
    pub(crate) async fn serve_signer(
        &self,
        mut stream: ServerStream<SignerRequest, SignerResponse>,
    ) -> psrpc::Result<()> {
        let node = {
            let st = lock(&self.state);
            self.authenticate(&st, stream.context().metadata())?
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = Arc::new(Mutex::new(HashMap::new()));
        lock(&self.signers).insert(
            node.clone(),
            SignerLink {
                id,
                sender: stream.sender(),
                pending: pending.clone(),
            },
        );
        let greeted = stream
            .send(SignerRequest {
                request_id: 0,
                request: None,
            })
            .await;
        if greeted.is_ok() {
            while let Ok(Some(resp)) = stream.recv().await {
                let waiter = lock(&pending).remove(&resp.request_id);
                if let Some(tx) = waiter {
                    let _ = tx.send(resp);
                }
            }
        }
        let mut signers = lock(&self.signers);
        if signers.get(&node).is_some_and(|l| l.id == id) {
            signers.remove(&node);
        }
        Ok(())
    }

    pub(crate) async fn pair_device(
        &self,
        ctx: &Context,
        req: PairDeviceRequest,
    ) -> psrpc::Result<PairDeviceResponse> {
        check_node_id(&req.node_id)?;
        if req.device_name.is_empty() {
            return Err(err(ErrorCode::InvalidArgument, "the device needs a name"));
        }
        if !lock(&self.state).nodes.contains_key(&req.node_id) {
            return Err(err(ErrorCode::NotFound, "node is not registered"));
        }
        let Some(link) = lock(&self.signers).get(&req.node_id).cloned() else {
            return Err(err(
                ErrorCode::FailedPrecondition,
                "no signer is attached to the node: it cannot approve the pairing",
            ));
        };
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session_id = format!("pair-{}", random_hex(6));
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(request_id, tx);
        let ask = SignerRequest {
            request_id,
            request: Some(signer_request::Request::ApprovePairing(
                ApprovePairingRequest {
                    session_id: session_id.clone(),
                    node_id: req.node_id.clone(),
                    device_name: req.device_name.clone(),
                    restrictions: req.restrictions.clone(),
                },
            )),
        };
        if let Err(e) = link.sender.send(ask).await {
            lock(&link.pending).remove(&request_id);
            return Err(err(
                ErrorCode::Unavailable,
                format!("the signer is gone: {}", e.message()),
            ));
        }
        let wait = ctx.remaining().unwrap_or(PAIRING_WAIT);
        let resp = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => return Err(err(ErrorCode::Unavailable, "the signer detached")),
            Err(_) => {
                lock(&link.pending).remove(&request_id);
                return Err(err(
                    ErrorCode::DeadlineExceeded,
                    "the signer did not answer",
                ));
            }
        };
        match resp.response {
            Some(signer_response::Response::ApprovePairing(ok)) => {
                let mut st = lock(&self.state);
                let (device_cert, device_key, _) = self.new_credentials(&mut st, &req.node_id);
                Ok(PairDeviceResponse {
                    session_id,
                    device_cert,
                    device_key,
                    rune: ok.rune,
                })
            }
            Some(signer_response::Response::Rejection(r)) => Err(err(
                ErrorCode::PermissionDenied,
                format!("the signer refused the pairing: {}", r.msg),
            )),
            None => Err(err(ErrorCode::Internal, "the signer sent an empty answer")),
        }
    }
}
