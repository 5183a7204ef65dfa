//! Encode and decode cost of the beehive messages that dominate the link: a pod insert (≈ 1.3 KB)
//! and its ack.
//!
//! Run: `cargo bench -p kubeedge-core --bench codec`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kubeedge_core::message::{Message, Operation, Route};

fn pod_insert() -> Message {
    Message::new(
        "6f1c2b2e-6a43-4e43-9d4c-0a6d1f6f3b10",
        1_718_000_000_123,
        Route::new("edgecontroller", "resource", Operation::Insert, "default/pod/nginx-7c5ddbdf54-x2x8k"),
    )
    .with_resource_version("48211")
    .with_content(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "nginx-7c5ddbdf54-x2x8k", "namespace": "default", "uid": "1f0e3dad-9990-4ad4-8a1b-7c3e5b1d2c4f",
            "resourceVersion": "48211", "creationTimestamp": "2024-06-10T06:13:20Z",
            "labels": {"app": "nginx", "pod-template-hash": "7c5ddbdf54"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "nginx-7c5ddbdf54",
                "uid": "0b5f6d7e-1111-4a4a-9b9b-2c2c2c2c2c2c", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": "edge-1", "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
            "containers": [{
                "name": "nginx", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "200m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}},
                "env": [{"name": "MODE", "value": "edge"}],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 80}, "periodSeconds": 10}
            }],
            "volumes": [{"name": "conf", "configMap": {"name": "nginx-conf"}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    }))
}

fn codec(c: &mut Criterion) {
    let insert = pod_insert();
    let insert_bytes = insert.to_json();
    let ack = insert.response(
        "a0b2c3d4-0000-4000-8000-000000000001",
        1_718_000_000_190,
        serde_json::json!("OK"),
    );
    let ack_bytes = ack.to_json();

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(insert_bytes.len() as u64));
    g.bench_function("encode pod insert", |b| {
        b.iter(|| black_box(&insert).to_json())
    });
    g.bench_function("decode pod insert", |b| {
        b.iter(|| Message::from_json(black_box(&insert_bytes), 1 << 20))
    });
    g.throughput(Throughput::Bytes(ack_bytes.len() as u64));
    g.bench_function("encode ack", |b| b.iter(|| black_box(&ack).to_json()));
    g.bench_function("decode ack", |b| {
        b.iter(|| Message::from_json(black_box(&ack_bytes), 1 << 20))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
