//! `/openapi/v2`: the OpenAPI v2 document, as far as kubectl needs it to know that the server
//! validates fields itself (a PATCH operation per kind with its group-version-kind and a
//! `fieldValidation` parameter). kubectl before 1.30 reads it as gnostic's protobuf `Document`
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), others as JSON.

use serde_json::{Value, json};

use super::registry::Resource;

fn path_of(r: &Resource) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// The JSON form.
pub fn v2_json(resources: &[Resource], version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in resources.iter().filter(|r| !r.create_only) {
        paths.insert(
            path_of(r),
            json!({"patch": {"x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                             "parameters": [{"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true}],
                             "responses": {"200": {"description": "OK"}}}}),
        );
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": paths, "definitions": {}})
}

fn put_len(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    prost::encoding::encode_varint((u64::from(number) << 3) | 2, out);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn message(fields: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, bytes) in fields {
        put_len(&mut out, *n, bytes);
    }
    out
}

/// The protobuf form (gnostic's `openapi.v2.Document`).
pub fn v2_protobuf(resources: &[Resource], version: &str) -> Vec<u8> {
    let mut paths = Vec::new();
    for r in resources.iter().filter(|r| !r.create_only) {
        // QueryParameterSubSchema { in = 2, name = 4, type = 6 }
        let query = message(&[
            (2, b"query".to_vec()),
            (4, b"fieldValidation".to_vec()),
            (6, b"string".to_vec()),
        ]);
        // NonBodyParameter { query_parameter_sub_schema = 3 } in Parameter { non_body = 2 } in
        // ParametersItem { parameter = 1 }
        let item = message(&[(1, message(&[(2, message(&[(3, query)]))]))]);
        // NamedAny { name = 1, value = 2: Any { yaml = 2 } }
        let yaml = format!(
            "group: {:?}\nkind: {:?}\nversion: {:?}\n",
            r.group, r.kind, r.version
        );
        let gvk = message(&[
            (1, b"x-kubernetes-group-version-kind".to_vec()),
            (2, message(&[(2, yaml.into_bytes())])),
        ]);
        // Operation { parameters = 8, vendor_extension = 13 }
        let operation = message(&[(8, item), (13, gvk)]);
        // NamedPathItem { name = 1, value = 2: PathItem { patch = 8 } }
        let named = message(&[
            (1, path_of(r).into_bytes()),
            (2, message(&[(8, operation)])),
        ]);
        put_len(&mut paths, 2, &named);
    }
    // Document { swagger = 1, info = 2: Info { title = 1, version = 2 }, paths = 8 }
    message(&[
        (1, b"2.0".to_vec()),
        (
            2,
            message(&[
                (1, b"Kubernetes".to_vec()),
                (2, version.as_bytes().to_vec()),
            ]),
        ),
        (8, paths),
    ])
}
