//! The embedded control plane as kube-rs clients use it: the event `Recorder` (events.k8s.io),
//! ServiceAccount tokens from the TokenRequest API authorized by RBAC, streaming-list watches and
//! dry-run writes.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Event as CoreEvent, ObjectReference, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::common::{TempDir, eventually, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_recorder_records_events_that_core_readers_see() {
    let dir = TempDir::new("rec");
    let core = start(&dir).await;
    let client = core.client().clone();
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let reference: ObjectReference = svc.object_ref(&());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kubeedge-test".into(),
            instance: Some("test-1".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Checked".into(),
        note: Some("the service was checked".into()),
        action: "Check".into(),
        secondary: None,
    };
    // The second publish of the same event patches its series.
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let core_events: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let listed = core_events
        .list(
            &ListParams::default()
                .fields("involvedObject.name=kubernetes,involvedObject.kind=Service"),
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    let e = &listed.items[0];
    assert_eq!(e.message.as_deref(), Some("the service was checked"));
    assert_eq!(e.reason.as_deref(), Some("Checked"));
    assert_eq!(e.reporting_component.as_deref(), Some("kubeedge-test"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(Some(2)));
    core.stop().await;
}

fn token_client(
    core: &kubeedge_cloud::CloudCore,
    token: &str,
) -> impl std::future::Future<Output = Client> {
    let cp = core.control_plane().unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n",
        cp.addr(),
        base64_std(&core.ca().cert_pem())
    );
    async move {
        let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    }
}

fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_list_pods_if_and_only_if_rbac_allows() {
    let dir = TempDir::new("sa");
    let core = start(&dir).await;
    let admin = core.client().clone();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("bot".into());
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token_for = async |audiences: Option<Vec<String>>| {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences,
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = sas
            .create_token_request("bot", &PostParams::default(), &request)
            .await
            .unwrap();
        issued.status.unwrap().token.unwrap()
    };
    // The API's own audience (none asked for), and another service's.
    let token = token_for(None).await;
    let vault_token = token_for(Some(vec!["vault".into()])).await;

    // TokenReview knows whom the token stands for.
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: vault_token.clone(),
            audiences: Some(vec!["vault".into()]),
        },
        ..Default::default()
    };
    let reviewed = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let status = reviewed.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:bot")
    );

    // A token for another audience is not a credential for the API.
    let vault = token_client(&core, &vault_token).await;
    let not_ours = Api::<Pod>::namespaced(vault, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&not_ours), Some(401), "{not_ours}");

    // Without a binding: forbidden.
    let bot = token_client(&core, &token).await;
    let pods: Api<Pod> = Api::namespaced(bot.clone(), "default");
    let denied = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&denied), Some(403), "{denied}");

    // Bound to `view` in default: lists pods there, nowhere else, and writes nothing.
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("bot-view".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "view".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "bot".into(),
            namespace: Some("default".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    pods.list(&ListParams::default()).await.unwrap();
    let elsewhere: Api<Pod> = Api::namespaced(bot.clone(), "kube-system");
    assert_eq!(
        status_code(&elsewhere.list(&ListParams::default()).await.unwrap_err()),
        Some(403)
    );
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("nope".into());
    let write = Api::<ConfigMap>::namespaced(bot.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    assert_eq!(status_code(&write), Some(403));

    // A deleted account's token no longer authenticates.
    sas.delete("bot", &Default::default()).await.unwrap();
    let gone = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&gone), Some(401), "{gone}");
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watchers_and_dry_run_entries_work() {
    let dir = TempDir::new("stream");
    let core = start(&dir).await;
    let client = core.client().clone();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    // A streaming list ends its initial events with the initial-events-end bookmark, after which
    // the watcher reports InitDone.
    let mut stream = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                watcher::Event::InitApply(cm) => names.push(cm.metadata.name.unwrap_or_default()),
                watcher::Event::InitDone => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(done, Ok(true));
    names.sort();
    assert_eq!(names, ["a", "b", "kube-root-ca.crt"]);

    // A dry-run commit through Api::entry stores nothing.
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut entry = cms.entry("dry").await.unwrap().or_insert(|| ConfigMap {
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    });
    entry.commit(&pp).await.unwrap();
    assert!(cms.get_opt("dry").await.unwrap().is_none());
    let mut existing = cms.entry("a").await.unwrap().or_insert(ConfigMap::default);
    existing.get_mut().data = Some([("k".to_owned(), "changed".to_owned())].into());
    existing.commit(&pp).await.unwrap();
    assert!(cms.get("a").await.unwrap().data.is_none());
    eventually(5, "nothing changed", async || {
        cms.get_opt("dry").await.unwrap().is_none()
    })
    .await;
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_eviction_and_metadata_views() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, EvictParams, Patch, PatchParams};
    use kube::discovery::ApiResource;
    use serde_json::json;

    let dir = TempDir::new("scale");
    let core = start(&dir).await;
    // A client that gives up on a 429 at once (kube-rs retries them for minutes by default),
    // so that a refused eviction is seen as refused.
    let kubeconfig = Kubeconfig::read_from(core.control_plane().unwrap().kubeconfig()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
    config.default_retry = false;
    let client = Client::try_from(config).unwrap();

    // scale on a built-in workload.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    let patch = json!({"spec": {"replicas": 4}});
    deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(deployments.get("web").await.unwrap().spec.replicas, Some(4));

    // scale on a custom resource whose CRD declares it.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "pools.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "pools", "singular": "pool", "kind": "Pool"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                         "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                         "status": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}))
    .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Pool".into(),
        plural: "pools".into(),
    };
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let pool: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Pool",
        "metadata": {"name": "p"}, "spec": {"size": 2}}))
        .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    assert_eq!(
        pools.get_scale("p").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    pools
        .patch_scale(
            "p",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(pools.get("p").await.unwrap().data["spec"]["size"], 7);

    // Eviction respects a PodDisruptionBudget.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "guarded", "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}),
    )
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("guarded", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}}))
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let refused = pods
        .evict("guarded", &EvictParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&refused), Some(429), "{refused}");
    assert!(pods.get_opt("guarded").await.unwrap().is_some());
    pdbs.delete("db", &Default::default()).await.unwrap();
    pods.evict("guarded", &EvictParams::default())
        .await
        .unwrap();
    assert!(pods.get_opt("guarded").await.unwrap().is_none());

    // Metadata-only reads.
    let meta = deployments.get_metadata("web").await.unwrap();
    assert_eq!(meta.metadata.name.as_deref(), Some("web"));
    let listed = deployments
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("web"));
    core.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_guards_approval_escalation_and_creating_applies() {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
    use kube::api::{Patch, PatchParams};
    use serde_json::json;

    let dir = TempDir::new("guard");
    let core = start(&dir).await;
    let admin = core.client().clone();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "dev"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token = sas
        .create_token_request("dev", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let dev = token_client(&core, &token).await;
    // dev: requests and approvals of CSRs (not the signers' approve verb), `admin` in default,
    // and only patch on ConfigMaps in kube-public.
    let grants = json!({"metadata": {"name": "csr-user"}, "rules": [
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]},
        {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update", "patch"]}]});
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(grants).unwrap(),
        )
        .await
        .unwrap();
    let bind = |name: &str, kind: &str, role: &str| {
        serde_json::from_value::<RoleBinding>(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": "default"}]}))
        .unwrap()
    };
    let crb: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
        serde_json::from_value(json!({"metadata": {"name": "dev-csr"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-user"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": "default"}]}))
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &bind("dev-admin", "ClusterRole", "admin"),
        )
        .await
        .unwrap();
    let patcher = json!({"metadata": {"name": "cm-patcher"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch", "get"]}]});
    Api::<Role>::namespaced(admin.clone(), "kube-public")
        .create(
            &PostParams::default(),
            &serde_json::from_value(patcher).unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "kube-public")
        .create(
            &PostParams::default(),
            &bind("dev-patch", "Role", "cm-patcher"),
        )
        .await
        .unwrap();

    // A CSR cannot arrive approved, and dev may not approve for the signer.
    let (csr_der, _key) = kubeedge_core::pki::node_csr("sneaky").unwrap();
    let pem = kubeedge_core::pki::pem("CERTIFICATE REQUEST", &csr_der);
    let csr: CertificateSigningRequest = serde_json::from_value(json!({"metadata": {"name": "sneaky"},
        "spec": {"request": base64_std(&pem), "signerName": "kubernetes.io/kube-apiserver-client",
                 "usages": ["client auth"]},
        "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "Self", "message": "x"}]}}))
    .unwrap();
    let dev_csrs: Api<CertificateSigningRequest> = Api::all(dev.clone());
    let created = dev_csrs.create(&PostParams::default(), &csr).await.unwrap();
    assert!(created.status.and_then(|s| s.conditions).is_none());
    assert_eq!(
        created.spec.username.as_deref(),
        Some("system:serviceaccount:default:dev")
    );
    let approve = json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "Self", "message": "x"}]}});
    let refused = dev_csrs
        .patch_subresource(
            "approval",
            "sneaky",
            &PatchParams::default(),
            &Patch::Merge(&approve),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&refused), Some(403), "{refused}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    assert!(
        csrs.get("sneaky")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
            .is_none()
    );
    // The administrator approves; the control plane signs.
    csrs.patch_subresource(
        "approval",
        "sneaky",
        &PatchParams::default(),
        &Patch::Merge(&approve),
    )
    .await
    .unwrap();
    eventually(10, "the approved request signed", async || {
        csrs.get("sneaky")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
            .is_some()
    })
    .await;

    // A namespace admin cannot bind cluster-admin, but can bind view.
    let dev_bindings: Api<RoleBinding> = Api::namespaced(dev.clone(), "default");
    let escalation = dev_bindings
        .create(
            &PostParams::default(),
            &bind("dev-root", "ClusterRole", "cluster-admin"),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&escalation), Some(403), "{escalation}");
    dev_bindings
        .create(
            &PostParams::default(),
            &bind("dev-view", "ClusterRole", "view"),
        )
        .await
        .unwrap();

    // Patch without create: an apply may change what exists, not create.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "there"}})).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "kube-public")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let dev_cms: Api<ConfigMap> = Api::namespaced(dev.clone(), "kube-public");
    let apply = PatchParams::apply("dev");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "there"}, "data": {"a": "b"}});
    dev_cms
        .patch("there", &apply, &Patch::Apply(&body))
        .await
        .unwrap();
    let new = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}, "data": {"a": "b"}});
    let created = dev_cms
        .patch("new", &apply, &Patch::Apply(&new))
        .await
        .unwrap_err();
    assert_eq!(status_code(&created), Some(403), "{created}");
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), "kube-public")
            .get_opt("new")
            .await
            .unwrap()
            .is_none()
    );
    core.stop().await;
}

/// The devices group as upstream defines it: v1beta1 and v1alpha2 served, DeviceStatus there,
/// a Device breaking the schema refused with the field named, a good one stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_crds_have_upstreams_schemas_and_versions() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let dir = TempDir::new("devcrd");
    let core = start(&dir).await;
    let client = core.client().clone();
    let gvk = |version: &str, kind: &str| {
        ApiResource::from_gvk(&GroupVersionKind::gvk("devices.kubeedge.io", version, kind))
    };
    let devices: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &gvk("v1beta1", "Device"));
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "bad"}, "spec": {"nodeName": 12}}))
    .unwrap();
    let err = devices
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(422), "{err}");
    assert!(err.to_string().contains("spec.nodeName"), "{err}");
    let good: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "thermo"},
        "spec": {"deviceModelRef": {"name": "m"}, "nodeName": "e1",
                 "protocol": {"protocolName": "modbus", "configData": {"ip": "10.0.0.2"}}}}))
    .unwrap();
    devices.create(&PostParams::default(), &good).await.unwrap();
    for (version, kind) in [
        ("v1alpha2", "Device"),
        ("v1alpha2", "DeviceModel"),
        ("v1beta1", "DeviceStatus"),
    ] {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &gvk(version, kind));
        api.list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("{version} {kind}: {e}"));
    }
    // Stored once, shown in the version asked for (CRDs' `None` conversion).
    let old: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &gvk("v1alpha2", "Device"));
    let seen = old.get("thermo").await.unwrap();
    assert_eq!(
        seen.types.map(|t| t.api_version).as_deref(),
        Some("devices.kubeedge.io/v1alpha2")
    );
}
