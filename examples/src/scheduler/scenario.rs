//! The client side of the scheduler example, as a user of the service, one
//! function per step of the scenario: each runs its calls, checks what came
//! back (bad input must fail with the right code) and narrates.

use std::collections::BTreeMap;
use std::time::Duration;

use psrpc::bus::DynBus;
use psrpc::{Error, ErrorCode, SelectionOptions};

use super::{ClientConfig, ClientReport, Credentials, GlClient, NodeKey, Placement, instance_of};
use crate::proto::scheduler::{
    AddOutgoingWebhookRequest, AddOutgoingWebhookResponse, CapacityResponse, ChallengeScope,
    DeleteOutgoingWebhooksRequest, ExportNodeRequest, ListInviteCodesRequest,
    ListOutgoingWebhooksRequest, NodeInfoResponse, PairDeviceResponse, RegistrationRequest,
    RotateOutgoingWebhookSecretRequest, ScheduleRequest, UpgradeRequest,
};
use crate::{BoxError, Narrator, ensure, expect_code, short_hex};

/// The client side, as a user of the service: registration with challenges
/// and invite codes, recovery, upgrades, webhooks, pairing through an
/// attached signer, export, and placement until the cluster is full, with
/// every kind of bad input along the way. Needs at least three free slots
/// in the cluster; fails when anything is not as expected.
pub async fn run_client(
    bus: DynBus,
    config: &ClientConfig,
    narrator: &Narrator,
) -> Result<ClientReport, BoxError> {
    let mut s = Scenario {
        c: GlClient::new(bus, &config.network).await?,
        net: &config.network,
        narrator,
        errors: Vec::new(),
    };
    let instances = s
        .cluster_has_one_registry_owner_and_room(config.instances)
        .await?;
    let n = instances.len();
    let (a, b, cc, d) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let creds_a = s.challenges_are_one_time_and_bound(&a, &b, &cc).await?;
    s.registration_checks_signature_and_input(&b, &cc).await?;
    let (creds_b, creds_c) = s.invite_codes_work_once(&creds_a, &b, &cc).await?;
    let forged = s
        .invite_codes_need_the_nodes_credentials(&creds_a, &creds_b)
        .await?;
    s.recovery_adds_credentials(&a, &creds_a, &d).await?;
    s.upgrade_checks_the_version(&creds_a).await?;
    let hook = s.webhooks_are_https_and_per_node(&a, &b, &creds_a).await?;
    s.webhook_deletes_are_all_or_nothing(&a, &creds_a, &hook)
        .await?;
    let paired = s
        .pairing_goes_through_the_signer(&a, &b, &d, &creds_a, &forged)
        .await?;
    s.exported_node_is_not_schedulable(&d).await?;
    let mut placements = s
        .placement_follows_free_slots(n, [&creds_a, &creds_b, &creds_c])
        .await?;
    s.full_cluster_is_exhausted(n, &mut placements).await?;
    Ok(ClientReport {
        instances,
        placements,
        errors: s.errors,
        paired,
    })
}

/// What the steps share: the client, the network, the narrator, and the
/// bad calls rejected so far.
struct Scenario<'a> {
    c: GlClient,
    net: &'a str,
    narrator: &'a Narrator,
    errors: Vec<(String, ErrorCode)>,
}

/// A registration of `key` on `network` answering `challenge` with `sig`.
fn registration(
    key: &NodeKey,
    challenge: Vec<u8>,
    sig: Vec<u8>,
    network: &str,
) -> RegistrationRequest {
    RegistrationRequest {
        node_id: key.node_id.clone(),
        network: network.to_owned(),
        challenge,
        signature: sig,
        ..Default::default()
    }
}

fn free_map(caps: &[CapacityResponse]) -> BTreeMap<String, u32> {
    caps.iter().map(|c| (c.instance.clone(), c.free)).collect()
}

impl Scenario<'_> {
    /// Checks that `r` failed with `code`, narrates and records it.
    fn expect<T: std::fmt::Debug>(
        &mut self,
        case: &str,
        r: psrpc::Result<T>,
        code: ErrorCode,
    ) -> Result<Error, BoxError> {
        let e = expect_code(case, r, code)?;
        self.narrator.say(format!(
            "  rejected as expected: {case} -> {}: {}",
            code.as_str(),
            e.message()
        ));
        self.errors.push((case.to_owned(), code));
        Ok(e)
    }

    /// The instances answering (`expect` of them, or those answering in
    /// 500 ms): exactly one owns the registry, and three slots are free.
    async fn cluster_has_one_registry_owner_and_room(
        &self,
        expect: usize,
    ) -> Result<Vec<CapacityResponse>, BoxError> {
        let instances = self.c.capacities(expect).await?;
        ensure!(
            instances.iter().filter(|i| i.registry_owner).count() == 1,
            "expected one registry owner among {instances:?}"
        );
        let total_free: u32 = instances.iter().map(|i| i.free).sum();
        ensure!(
            total_free >= 3,
            "the cluster has {total_free} free slots, the scenario needs 3 (restart the instances)"
        );
        self.narrator.say(format!(
            "{} scheduler instances serve {}: {}",
            instances.len(),
            self.net,
            instances
                .iter()
                .map(|i| format!(
                    "{} ({}/{} free{})",
                    i.instance,
                    i.free,
                    i.capacity,
                    if i.registry_owner {
                        ", registry owner"
                    } else {
                        ""
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(instances)
    }

    /// Registers node A; a node registers once, and a challenge is
    /// one-time and bound to its scope and its node. Returns A's
    /// credentials.
    async fn challenges_are_one_time_and_bound(
        &mut self,
        a: &NodeKey,
        b: &NodeKey,
        cc: &NodeKey,
    ) -> Result<Credentials, BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let creds_a = c.register(a, "").await?;
        self.narrator.say(format!(
            "registered node A {} (no invite code)",
            short_hex(&a.node_id)
        ));
        let ch = c
            .challenge(ChallengeScope::Register as i32, &a.node_id)
            .await?;
        let req = registration(a, ch.clone(), a.sign(&ch), net);
        self.expect(
            "register a node twice",
            c.scheduler.register(net, req.clone()).await,
            ErrorCode::AlreadyExists,
        )?;
        self.expect(
            "reuse a challenge",
            c.scheduler.register(net, req).await,
            ErrorCode::Unauthenticated,
        )?;
        let ch = c
            .challenge(ChallengeScope::Recover as i32, &a.node_id)
            .await?;
        self.expect(
            "register with a RECOVER challenge",
            c.scheduler
                .register(net, registration(a, ch.clone(), a.sign(&ch), net))
                .await,
            ErrorCode::PermissionDenied,
        )?;
        let ch = c
            .challenge(ChallengeScope::Register as i32, &b.node_id)
            .await?;
        self.expect(
            "register with another node's challenge",
            c.scheduler
                .register(net, registration(cc, ch.clone(), cc.sign(&ch), net))
                .await,
            ErrorCode::PermissionDenied,
        )?;
        Ok(creds_a)
    }

    /// A registration needs the node's own signature and the registry's
    /// network; a challenge needs a real node id and a known scope.
    async fn registration_checks_signature_and_input(
        &mut self,
        b: &NodeKey,
        cc: &NodeKey,
    ) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let ch = c
            .challenge(ChallengeScope::Register as i32, &b.node_id)
            .await?;
        self.expect(
            "register with a bad signature",
            c.scheduler
                .register(net, registration(b, ch.clone(), cc.sign(&ch), net))
                .await,
            ErrorCode::Unauthenticated,
        )?;
        let ch = c
            .challenge(ChallengeScope::Register as i32, &b.node_id)
            .await?;
        self.expect(
            "register for another network",
            c.scheduler
                .register(net, registration(b, ch.clone(), b.sign(&ch), "bitcoin"))
                .await,
            ErrorCode::InvalidArgument,
        )?;
        self.expect(
            "challenge for a 3-byte node id",
            c.challenge(ChallengeScope::Register as i32, &[2, 0, 1])
                .await,
            ErrorCode::InvalidArgument,
        )?;
        self.expect(
            "challenge of unknown scope 9",
            c.challenge(9, &b.node_id).await,
            ErrorCode::InvalidArgument,
        )?;
        Ok(())
    }

    /// Node A's two invite codes register nodes B and C, each code once.
    /// Returns B's and C's credentials.
    async fn invite_codes_work_once(
        &mut self,
        creds_a: &Credentials,
        b: &NodeKey,
        cc: &NodeKey,
    ) -> Result<(Credentials, Credentials), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let codes = c
            .scheduler
            .list_invite_codes(net, ListInviteCodesRequest {})
            .metadata(creds_a.metadata())
            .await?
            .invite_code_list;
        ensure!(
            codes.len() == 2 && codes.iter().all(|c| !c.is_redeemed),
            "node A's invite codes: {codes:?}"
        );
        let creds_b = c.register(b, &codes[0].code).await?;
        self.narrator.say(format!(
            "registered node B {} with A's invite code {}",
            short_hex(&b.node_id),
            codes[0].code
        ));
        self.expect(
            "register with a redeemed invite code",
            c.register(cc, &codes[0].code).await,
            ErrorCode::FailedPrecondition,
        )?;
        self.expect(
            "register with an unknown invite code",
            c.register(cc, "INV-NOPE").await,
            ErrorCode::NotFound,
        )?;
        let creds_c = c.register(cc, &codes[1].code).await?;
        self.narrator.say(format!(
            "registered node C {} with A's invite code {}",
            short_hex(&cc.node_id),
            codes[1].code
        ));
        let codes = c
            .scheduler
            .list_invite_codes(net, ListInviteCodesRequest {})
            .metadata(creds_a.metadata())
            .await?
            .invite_code_list;
        ensure!(
            codes.iter().all(|c| c.is_redeemed),
            "A's codes after two registrations: {codes:?}"
        );
        Ok((creds_b, creds_c))
    }

    /// Listing invite codes needs credentials, and a certificate of the
    /// node it claims. Returns the forged credentials (A's node id with B's
    /// certificate) for later steps.
    async fn invite_codes_need_the_nodes_credentials(
        &mut self,
        creds_a: &Credentials,
        creds_b: &Credentials,
    ) -> Result<Credentials, BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        self.expect(
            "list invite codes without credentials",
            c.scheduler
                .list_invite_codes(net, ListInviteCodesRequest {})
                .await,
            ErrorCode::Unauthenticated,
        )?;
        let mut forged = creds_a.clone();
        forged.device_cert = creds_b.device_cert.clone();
        self.expect(
            "list invite codes with another node's certificate",
            c.scheduler
                .list_invite_codes(net, ListInviteCodesRequest {})
                .metadata(forged.metadata())
                .await,
            ErrorCode::Unauthenticated,
        )?;
        Ok(forged)
    }

    /// Recovery gives node A new credentials and the old ones still work;
    /// an unregistered node cannot recover.
    async fn recovery_adds_credentials(
        &mut self,
        a: &NodeKey,
        creds_a: &Credentials,
        d: &NodeKey,
    ) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let creds_a2 = c.recover(a).await?;
        ensure!(
            creds_a2.device_cert != creds_a.device_cert,
            "recovery reused a certificate"
        );
        for creds in [creds_a, &creds_a2] {
            c.scheduler
                .list_invite_codes(net, ListInviteCodesRequest {})
                .metadata(creds.metadata())
                .await?;
        }
        self.narrator
            .say("recovered node A: new credentials, the old ones still work");
        self.expect(
            "recover an unregistered node",
            c.recover(d).await,
            ErrorCode::NotFound,
        )?;
        Ok(())
    }

    /// An upgrade reports the version the node was at and refuses a
    /// malformed one.
    async fn upgrade_checks_the_version(&mut self, creds_a: &Credentials) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let up = c
            .scheduler
            .maybe_upgrade(
                net,
                UpgradeRequest {
                    signer_version: "v24.02".into(),
                    initmsg: vec![],
                },
            )
            .metadata(creds_a.metadata())
            .await?;
        self.narrator.say(format!(
            "maybe_upgrade(v24.02): the node was at {}",
            up.old_version
        ));
        self.expect(
            "upgrade to version `latest`",
            c.scheduler
                .maybe_upgrade(
                    net,
                    UpgradeRequest {
                        signer_version: "latest".into(),
                        initmsg: vec![],
                    },
                )
                .metadata(creds_a.metadata())
                .await,
            ErrorCode::InvalidArgument,
        )?;
        Ok(())
    }

    /// Node A adds an https webhook (http:// and another node's are
    /// refused) and rotates its secret (an unknown id's is `not_found`).
    /// Returns the webhook.
    async fn webhooks_are_https_and_per_node(
        &mut self,
        a: &NodeKey,
        b: &NodeKey,
        creds_a: &Credentials,
    ) -> Result<AddOutgoingWebhookResponse, BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let add = |uri: &str, node: &NodeKey| AddOutgoingWebhookRequest {
            node_id: node.node_id.clone(),
            uri: uri.to_owned(),
        };
        let hook = c
            .scheduler
            .add_outgoing_webhook(net, add("https://hooks.example/a", a))
            .metadata(creds_a.metadata())
            .await?;
        self.expect(
            "add an http:// webhook",
            c.scheduler
                .add_outgoing_webhook(net, add("http://hooks.example/a", a))
                .metadata(creds_a.metadata())
                .await,
            ErrorCode::InvalidArgument,
        )?;
        self.expect(
            "add a webhook to another node",
            c.scheduler
                .add_outgoing_webhook(net, add("https://hooks.example/b", b))
                .metadata(creds_a.metadata())
                .await,
            ErrorCode::PermissionDenied,
        )?;
        let rotate = |webhook_id: i64| RotateOutgoingWebhookSecretRequest {
            node_id: a.node_id.clone(),
            webhook_id,
        };
        let rotated = c
            .scheduler
            .rotate_outgoing_webhook_secret(net, rotate(hook.id))
            .metadata(creds_a.metadata())
            .await?;
        ensure!(rotated.secret != hook.secret, "rotation kept the secret");
        self.expect(
            "rotate the secret of an unknown webhook",
            c.scheduler
                .rotate_outgoing_webhook_secret(net, rotate(9999))
                .metadata(creds_a.metadata())
                .await,
            ErrorCode::NotFound,
        )?;
        Ok(hook)
    }

    /// A delete naming an unknown webhook deletes nothing; deleting `hook`
    /// alone removes it.
    async fn webhook_deletes_are_all_or_nothing(
        &mut self,
        a: &NodeKey,
        creds_a: &Credentials,
        hook: &AddOutgoingWebhookResponse,
    ) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let delete = |ids: Vec<i64>| DeleteOutgoingWebhooksRequest {
            node_id: a.node_id.clone(),
            ids,
        };
        self.expect(
            "delete an unknown webhook",
            c.scheduler
                .delete_webhooks(net, delete(vec![hook.id, 9999]))
                .metadata(creds_a.metadata())
                .await,
            ErrorCode::NotFound,
        )?;
        let list = |creds: &Credentials| {
            c.scheduler
                .list_outgoing_webhooks(
                    net,
                    ListOutgoingWebhooksRequest {
                        node_id: creds.node_id.clone(),
                    },
                )
                .metadata(creds.metadata())
        };
        let hooks = list(creds_a).await?.outgoing_webhooks;
        ensure!(hooks.len() == 1, "after a failed delete: {hooks:?}");
        c.scheduler
            .delete_webhooks(net, delete(vec![hook.id]))
            .metadata(creds_a.metadata())
            .await?;
        ensure!(
            list(creds_a).await?.outgoing_webhooks.is_empty(),
            "the webhook survived"
        );
        self.narrator.say(format!(
            "webhook {} added, its secret rotated, then deleted",
            hook.id
        ));
        Ok(())
    }

    /// Node A's signer attaches and approves a device (whose credentials
    /// then work) and refuses another; pairing needs an attached signer and
    /// a registered node, attaching needs valid credentials. Returns the
    /// paired device.
    async fn pairing_goes_through_the_signer(
        &mut self,
        a: &NodeKey,
        b: &NodeKey,
        d: &NodeKey,
        creds_a: &Credentials,
        forged: &Credentials,
    ) -> Result<PairDeviceResponse, BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let signer = c.attach_signer(creds_a, &["untrusted-laptop"]).await?;
        self.narrator
            .say("node A's signer attached (SignerRequestsStream)");
        let paired = c
            .pair_device(&a.node_id, "alice-phone", "method^list")
            .await?;
        let paired_creds = Credentials {
            node_id: a.node_id.clone(),
            device_cert: paired.device_cert.clone(),
            device_key: paired.device_key.clone(),
            rune: paired.rune.clone(),
        };
        c.scheduler
            .list_invite_codes(net, ListInviteCodesRequest {})
            .metadata(paired_creds.metadata())
            .await?;
        self.narrator.say(format!(
            "device alice-phone paired (session {}), approved by the signer with {}",
            paired.session_id, paired.rune
        ));
        self.expect(
            "pair a device the signer refuses",
            c.pair_device(&a.node_id, "untrusted-laptop", "").await,
            ErrorCode::PermissionDenied,
        )?;
        self.expect(
            "pair with a node without a signer",
            c.pair_device(&b.node_id, "bob-phone", "").await,
            ErrorCode::FailedPrecondition,
        )?;
        self.expect(
            "pair with an unregistered node",
            c.pair_device(&d.node_id, "dave-phone", "").await,
            ErrorCode::NotFound,
        )?;
        self.expect(
            "attach a signer with bad credentials",
            c.attach_signer(forged, &[]).await,
            ErrorCode::Unauthenticated,
        )?;
        ensure!(
            signer.approved() == 1 && signer.refused() == 1,
            "the signer approved {} and refused {}",
            signer.approved(),
            signer.refused()
        );
        signer.detach().await?;
        Ok(paired)
    }

    /// An exported node (export is idempotent: the same URL twice) cannot
    /// be scheduled.
    async fn exported_node_is_not_schedulable(&mut self, d: &NodeKey) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let creds_d = c.register(d, "").await?;
        let export = || {
            c.scheduler
                .export_node(net, ExportNodeRequest {})
                .metadata(creds_d.metadata())
        };
        let url = export().await?.url;
        let again = export().await?.url;
        ensure!(url == again, "export is not idempotent: {url} then {again}");
        self.narrator
            .say(format!("node D exported to {url} (twice: the same URL)"));
        self.expect(
            "schedule an exported node",
            c.schedule(&creds_d).await,
            ErrorCode::FailedPrecondition,
        )?;
        Ok(())
    }

    /// `get_node_info` is passive until a node is scheduled (or waits for
    /// its placement); `nodes` go to the instances with the most free slots
    /// (of `n`), and scheduling again returns where a node runs. Returns
    /// the placements.
    async fn placement_follows_free_slots(
        &mut self,
        n: usize,
        nodes: [&Credentials; 3],
    ) -> Result<Vec<Placement>, BoxError> {
        let [creds_a, creds_b, _] = nodes;
        let c = self.c.clone();
        let info = c.node_info(creds_a, false, Duration::from_secs(2)).await?;
        ensure!(
            info.grpc_uri.is_empty(),
            "A runs before being scheduled: {info:?}"
        );
        self.narrator
            .say("get_node_info(A) is passive: A is not running");
        let waiter = {
            let (c, creds_b) = (c.clone(), creds_b.clone());
            tokio::spawn(async move { c.node_info(&creds_b, true, Duration::from_secs(10)).await })
        };
        let mut placements = Vec::new();
        let mut infos = Vec::new();
        for creds in nodes {
            let (info, p) = place(&c, creds, n, self.narrator).await?;
            infos.push(info);
            placements.push(p);
        }
        let waited = waiter.await??;
        ensure!(
            waited == infos[1],
            "the waiting get_node_info(B) saw {waited:?}"
        );
        self.narrator.say(format!(
            "a get_node_info(B, wait) issued before scheduling returned B's placement on {}",
            instance_of(&waited.grpc_uri)
        ));
        let again = c.schedule(creds_a).await?;
        ensure!(again == infos[0], "scheduling A again moved it: {again:?}");
        self.narrator
            .say("scheduling A again returns where it runs");
        Ok(placements)
    }

    /// New nodes fill the cluster's free slots (of `n` instances), each
    /// placed by free slots and added to `placements`; then one more is
    /// `resource_exhausted`, and scheduling needs credentials.
    async fn full_cluster_is_exhausted(
        &mut self,
        n: usize,
        placements: &mut Vec<Placement>,
    ) -> Result<(), BoxError> {
        let (c, net) = (self.c.clone(), self.net);
        let free: u32 = c.capacities(n).await?.iter().map(|i| i.free).sum();
        for _ in 0..free {
            let creds = c.register(&NodeKey::generate(), "").await?;
            placements.push(place(&c, &creds, n, self.narrator).await?.1);
        }
        let creds = c.register(&NodeKey::generate(), "").await?;
        self.expect(
            "schedule on a full cluster",
            c.schedule(&creds).await,
            ErrorCode::ResourceExhausted,
        )?;
        self.expect(
            "schedule without credentials",
            c.scheduler
                .schedule(
                    net,
                    ScheduleRequest {
                        node_id: creds.node_id.clone(),
                    },
                )
                .await,
            ErrorCode::Unauthenticated,
        )?;
        Ok(())
    }
}

/// Schedules `creds`' node and checks that it went to an instance with the
/// most free slots.
async fn place(
    c: &GlClient,
    creds: &Credentials,
    instances: usize,
    narrator: &Narrator,
) -> Result<(NodeInfoResponse, Placement), BoxError> {
    let free_before = free_map(&c.capacities(instances).await?);
    let best = free_before.values().copied().max().unwrap_or_default();
    // Every instance claims with its free slots; knowing the best count,
    // the first claim that reaches it wins at once (no waiting for the
    // slower claims, so the outcome does not depend on timing).
    let selection = SelectionOptions {
        maximum_affinity: best as f32,
        affinity_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let info = c.schedule_with(creds, Some(selection)).await?;
    let instance = instance_of(&info.grpc_uri).to_owned();
    ensure!(
        free_before.get(&instance) == Some(&best),
        "node placed on {instance}, but the free slots were {free_before:?}"
    );
    narrator.say(format!(
        "schedule node {} -> {instance} (free slots before: {})",
        short_hex(&creds.node_id),
        free_before
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok((
        info,
        Placement {
            node: short_hex(&creds.node_id),
            instance,
            free_before,
        },
    ))
}
