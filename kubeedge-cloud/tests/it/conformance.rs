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
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["api".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = sas
        .create_token_request("bot", &PostParams::default(), &request)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.unwrap();

    // TokenReview knows whom the token stands for.
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.clone(),
            audiences: Some(vec!["api".into()]),
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
