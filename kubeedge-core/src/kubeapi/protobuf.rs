//! Kubernetes' protobuf bodies (`application/vnd.kubernetes.protobuf`), as client-go (and so
//! kubectl) sends and asks for them for built-in kinds.
//!
//! A body is the four bytes `k8s\0` and a `runtime.Unknown` message: the object's `apiVersion` and
//! `kind`, and the object itself encoded as its generated message (`api.core.v1.Pod`, ...). Objects
//! are kept as JSON here, so this module transcodes between that JSON and the wire, driven by the
//! descriptors of Kubernetes' own `generated.proto` files (`kubernetes.fds`, compiled from
//! upstream's files by `kubernetes.fds.sh`: field names, numbers and types, nothing hand-written).
//! Where the Go types have a JSON form of their own, it is honoured: `Time`/`MicroTime` as RFC 3339
//! strings, `Duration` as a Go duration, `Quantity` as a string, `IntOrString` as an integer or a
//! string, `RawExtension`/`FieldsV1`/`JSON` as embedded JSON, `[]byte` as base64, JSON-schema's
//! `$ref` and `x-kubernetes-*` names, and the `...OrBool`/`...OrArray`/`...OrStringArray` unions.
//!
//! Kinds without a generated message (custom resources, `Table`) have no protobuf form:
//! [`encode`] says so and the caller answers in JSON, as the apiserver does.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use prost::Message as _;
use prost::bytes::Buf as _;
use prost_types::field_descriptor_proto::{Label, Type};
use serde_json::{Map, Value};

/// The media type of protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The prefix of every protobuf body.
pub const MAGIC: [u8; 4] = *b"k8s\0";

/// The compiled descriptors of Kubernetes' stable API groups.
const DESCRIPTORS: &[u8] = include_bytes!("kubernetes.fds");

/// Why a body could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf body (it must start with the bytes \"k8s\\0\")")]
    NoMagic,
    /// The bytes are not a well-formed message of the expected type.
    #[error("malformed protobuf body: {0}")]
    Malformed(String),
    /// The kind has no generated message.
    #[error("{api_version}, Kind={kind} has no protobuf form")]
    UnknownKind {
        /// The object's `apiVersion`.
        api_version: String,
        /// The object's `kind`.
        kind: String,
    },
    /// A JSON value does not fit the field's protobuf type.
    #[error("cannot encode {field} as protobuf: {why}")]
    Encode {
        /// The field's path.
        field: String,
        /// What did not fit.
        why: String,
    },
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// How deeply messages may nest (JSON bodies are held to 128 levels by the JSON parser): a
/// body of nested schemas cannot run the stack out.
const MAX_DEPTH: usize = 64;

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of nesting, given back when dropped.
struct Nesting;

impl Nesting {
    fn enter() -> Result<Nesting, Error> {
        DEPTH.with(|d| {
            if d.get() >= MAX_DEPTH {
                return Err(malformed(format!(
                    "messages nested deeper than {MAX_DEPTH} levels"
                )));
            }
            d.set(d.get() + 1);
            Ok(Nesting)
        })
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

// === the schema, read once from the descriptors ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Double,
    Float,
    Int64,
    Uint64,
    Int32,
    Uint32,
    Bool,
    String,
    Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldType {
    Scalar(Scalar),
    /// A message, by full name without the leading dot.
    Message(String),
}

#[derive(Debug)]
struct Field {
    number: u32,
    /// The JSON name.
    json: String,
    ty: FieldType,
    repeated: bool,
    /// An embedded Go struct whose fields appear in the parent's JSON (`json:",inline"`).
    inline: bool,
}

#[derive(Debug, Default)]
struct MessageType {
    fields: Vec<Field>,
    /// The entry type of a `map<K, V>` field (`key` = 1, `value` = 2).
    map_entry: bool,
}

impl MessageType {
    fn by_number(&self, n: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.number == n)
    }
}

#[derive(Debug, Default)]
struct Schema {
    messages: HashMap<String, MessageType>,
}

const META: &str = "apimachinery.pkg.apis.meta.v1";
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const VERBS: &str = "apimachinery.pkg.apis.meta.v1.Verbs";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const QUANTITY_VALUE: &str = "apimachinery.pkg.api.resource.QuantityValue";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const APIEXT_JSON: &str = "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON";
const SCHEMA_PROPS: &str = "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps";
const PROPS_OR_BOOL: &str =
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool";
const PROPS_OR_ARRAY: &str =
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray";
const PROPS_OR_STRINGS: &str =
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray";

/// The proto package of each API group's directory (`api.<dir>.<version>`).
const GROUP_DIRS: &[(&str, &str)] = &[
    ("", "api.core"),
    ("admissionregistration.k8s.io", "api.admissionregistration"),
    ("apps", "api.apps"),
    ("authentication.k8s.io", "api.authentication"),
    ("authorization.k8s.io", "api.authorization"),
    ("autoscaling", "api.autoscaling"),
    ("batch", "api.batch"),
    ("certificates.k8s.io", "api.certificates"),
    ("coordination.k8s.io", "api.coordination"),
    ("discovery.k8s.io", "api.discovery"),
    ("events.k8s.io", "api.events"),
    ("flowcontrol.apiserver.k8s.io", "api.flowcontrol"),
    ("networking.k8s.io", "api.networking"),
    ("node.k8s.io", "api.node"),
    ("policy", "api.policy"),
    ("rbac.authorization.k8s.io", "api.rbac"),
    ("scheduling.k8s.io", "api.scheduling"),
    ("storage.k8s.io", "api.storage"),
    ("apidiscovery.k8s.io", "api.apidiscovery"),
    (
        "apiextensions.k8s.io",
        "apiextensions_apiserver.pkg.apis.apiextensions",
    ),
    (
        "apiregistration.k8s.io",
        "kube_aggregator.pkg.apis.apiregistration",
    ),
    ("meta.k8s.io", "apimachinery.pkg.apis.meta"),
];

/// Kinds of `meta.k8s.io/v1` that are sent under any group's version (options, `Status`).
const META_KINDS: &[&str] = &[
    "Status",
    "DeleteOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "GetOptions",
    "ListOptions",
    "WatchEvent",
    "APIResourceList",
    "APIGroupList",
    "APIGroup",
    "APIVersions",
    "PartialObjectMetadata",
    "PartialObjectMetadataList",
];

/// Embedded Go structs (`json:",inline"`): their fields are the parent's in JSON.
const INLINE: &[(&str, &str)] = &[
    ("Probe", "handler"),
    ("Volume", "volumeSource"),
    ("PersistentVolumeSpec", "persistentVolumeSource"),
    ("EphemeralContainer", "ephemeralContainerCommon"),
    ("ConfigMapEnvSource", "localObjectReference"),
    ("ConfigMapKeySelector", "localObjectReference"),
    ("ConfigMapProjection", "localObjectReference"),
    ("ConfigMapVolumeSource", "localObjectReference"),
    ("SecretEnvSource", "localObjectReference"),
    ("SecretKeySelector", "localObjectReference"),
    ("SecretProjection", "localObjectReference"),
    ("IngressRule", "ingressRuleValue"),
    ("NamedRuleWithOperations", "ruleWithOperations"),
    ("RuleWithOperations", "rule"),
];

fn is_inline(message: &str, field: &str) -> bool {
    let short = message.rsplit('.').next().unwrap_or(message);
    INLINE.iter().any(|(m, f)| *m == short && *f == field)
}

/// JSON names that are not valid proto field names (JSON-schema's).
fn json_name(message: &str, proto: &str) -> String {
    if message == SCHEMA_PROPS {
        match proto {
            "ref" => return "$ref".into(),
            "schema" => return "$schema".into(),
            p if p.starts_with("xKubernetes") => {
                let mut out = String::from("x-kubernetes");
                for c in p["xKubernetes".len()..].chars() {
                    if c.is_ascii_uppercase() {
                        out.push('-');
                        out.push(c.to_ascii_lowercase());
                    } else {
                        out.push(c);
                    }
                }
                return out;
            }
            _ => {}
        }
    }
    if message == FIELDS_V1 && proto == "Raw" {
        return "raw".into();
    }
    proto.to_owned()
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The descriptors are compiled into the binary and checked by the tests: a failure to
        // read them is a build defect, and leaves an empty schema (every kind "unknown").
        let set = prost_types::FileDescriptorSet::decode(DESCRIPTORS).unwrap_or_default();
        let mut schema = Schema::default();
        for file in &set.file {
            let package = file.package();
            for m in &file.message_type {
                add_message(&mut schema, package, m);
            }
        }
        schema
    })
}

fn add_message(schema: &mut Schema, scope: &str, m: &prost_types::DescriptorProto) {
    let full = format!("{scope}.{}", m.name());
    for nested in &m.nested_type {
        add_message(schema, &full, nested);
    }
    let fields = m
        .field
        .iter()
        .filter_map(|f| {
            let ty = match f.r#type() {
                Type::Double => FieldType::Scalar(Scalar::Double),
                Type::Float => FieldType::Scalar(Scalar::Float),
                Type::Int64 | Type::Sint64 | Type::Sfixed64 => FieldType::Scalar(Scalar::Int64),
                Type::Uint64 | Type::Fixed64 => FieldType::Scalar(Scalar::Uint64),
                Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Enum => {
                    FieldType::Scalar(Scalar::Int32)
                }
                Type::Uint32 | Type::Fixed32 => FieldType::Scalar(Scalar::Uint32),
                Type::Bool => FieldType::Scalar(Scalar::Bool),
                Type::String => FieldType::Scalar(Scalar::String),
                Type::Bytes => FieldType::Scalar(Scalar::Bytes),
                Type::Message => {
                    FieldType::Message(f.type_name().trim_start_matches('.').to_owned())
                }
                // Kubernetes' protos have no groups.
                Type::Group => return None,
            };
            Some(Field {
                number: u32::try_from(f.number()).ok()?,
                json: json_name(&full, f.name()),
                ty,
                repeated: f.label() == Label::Repeated,
                inline: is_inline(&full, f.name()),
            })
        })
        .collect();
    let map_entry = m.options.as_ref().is_some_and(|o| o.map_entry());
    schema
        .messages
        .insert(full, MessageType { fields, map_entry });
}

/// The message of `apiVersion`/`kind`, if Kubernetes has one.
fn message_of(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let schema = schema();
    let typed = GROUP_DIRS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, dir)| format!("{dir}.{version}.{kind}"));
    let meta = META_KINDS.contains(&kind).then(|| format!("{META}.{kind}"));
    typed.into_iter().chain(meta).find_map(|name| {
        schema
            .messages
            .get_key_value(&name)
            .map(|(k, _)| k.as_str())
    })
}

/// Whether objects of `apiVersion`/`kind` have a protobuf form.
pub fn has_kind(api_version: &str, kind: &str) -> bool {
    message_of(api_version, kind).is_some()
}

// === the wire ===

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// Reads the fields of one message.
struct Reader<'a>(&'a [u8]);

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Wire<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.read())
    }
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Error> {
        prost::encoding::decode_varint(&mut self.0).map_err(|e| malformed(e.to_string()))
    }

    fn read(&mut self) -> Result<(u32, Wire<'a>), Error> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed("field number too large"))?;
        if number == 0 {
            return Err(malformed("field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                if self.0.len() < 8 {
                    return Err(malformed("truncated fixed64"));
                }
                Wire::Fixed64(self.0.get_u64_le())
            }
            5 => {
                if self.0.len() < 4 {
                    return Err(malformed("truncated fixed32"));
                }
                Wire::Fixed32(self.0.get_u32_le())
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| malformed("length too large"))?;
                if self.0.len() < len {
                    return Err(malformed(format!(
                        "field {number} says {len} bytes, {} left",
                        self.0.len()
                    )));
                }
                let (head, tail) = self.0.split_at(len);
                self.0 = tail;
                Wire::Len(head)
            }
            other => return Err(malformed(format!("unsupported wire type {other}"))),
        };
        Ok((number, wire))
    }
}

fn put_key(out: &mut Vec<u8>, number: u32, wire: u8) {
    prost::encoding::encode_varint((u64::from(number) << 3) | u64::from(wire), out);
}

fn put_len(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_key(out, number, 2);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, number: u32, v: u64) {
    put_key(out, number, 0);
    prost::encoding::encode_varint(v, out);
}

// === protobuf -> JSON ===

/// Decodes a protobuf body into the object's JSON, `apiVersion` and `kind` included.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let rest = body.strip_prefix(&MAGIC).ok_or(Error::NoMagic)?;
    let (api_version, kind, raw) = unknown(rest)?;
    let message = message_of(&api_version, &kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut obj = decode_message(message, raw)?;
    if let Value::Object(o) = &mut obj {
        o.insert("apiVersion".into(), Value::String(api_version));
        o.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

/// The `runtime.Unknown` envelope: apiVersion, kind and the raw message.
fn unknown(bytes: &[u8]) -> Result<(String, String, &[u8]), Error> {
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for field in Reader(bytes) {
        match field? {
            (1, Wire::Len(type_meta)) => {
                for f in Reader(type_meta) {
                    match f? {
                        (1, Wire::Len(v)) => api_version = utf8(v)?,
                        (2, Wire::Len(k)) => kind = utf8(k)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(r)) => raw = r,
            (3 | 4, Wire::Len(encoding)) if !encoding.is_empty() => {
                // contentEncoding/contentType: only the plain encoding is sent by clients.
                let e = utf8(encoding)?;
                if e != CONTENT_TYPE && e != "application/vnd.kubernetes.protobuf" {
                    return Err(malformed(format!("unsupported content encoding {e:?}")));
                }
            }
            _ => {}
        }
    }
    if kind.is_empty() {
        return Err(malformed("the envelope names no kind"));
    }
    Ok((api_version, kind, raw))
}

fn utf8(b: &[u8]) -> Result<String, Error> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
}

fn embedded_json(raw: &[u8]) -> Result<Value, Error> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    if raw.starts_with(&MAGIC) {
        return decode(raw);
    }
    serde_json::from_slice(raw).map_err(|e| malformed(format!("embedded JSON: {e}")))
}

fn decode_message(name: &str, bytes: &[u8]) -> Result<Value, Error> {
    let _level = Nesting::enter()?;
    if let Some(v) = decode_special(name, bytes)? {
        return Ok(v);
    }
    let ty = schema()
        .messages
        .get(name)
        .ok_or_else(|| malformed(format!("no message type {name}")))?;
    let mut out = Map::new();
    for field in Reader(bytes) {
        let (number, wire) = field?;
        let Some(f) = ty.by_number(number) else {
            continue;
        };
        let map_entry = match &f.ty {
            FieldType::Message(m) => schema().messages.get(m).filter(|t| t.map_entry),
            FieldType::Scalar(_) => None,
        };
        if let (Some(entry), FieldType::Message(entry_name), Wire::Len(b)) =
            (map_entry, &f.ty, &wire)
        {
            let (k, v) = decode_entry(entry_name, entry, b)?;
            let slot = out
                .entry(f.json.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = slot {
                m.insert(k, v);
            }
            continue;
        }
        let values = decode_values(&f.ty, wire)?;
        if f.inline {
            for v in values {
                if let Value::Object(fields) = v {
                    out.extend(fields);
                }
            }
            continue;
        }
        if f.repeated {
            let slot = out
                .entry(f.json.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = slot {
                a.extend(values);
            }
        } else if let Some(v) = values.into_iter().last() {
            if v.is_null() || (is_zero_string(&v) && !keeps_empty(name, &f.json)) {
                // Go writes every non-pointer field; its JSON omits the empty ones.
                out.remove(&f.json);
            } else {
                out.insert(f.json.clone(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

fn is_zero_string(v: &Value) -> bool {
    v.as_str().is_some_and(str::is_empty)
}

/// String fields whose empty value means something (`storageClassName: ""` is "no class").
fn keeps_empty(message: &str, field: &str) -> bool {
    matches!(
        (message.rsplit('.').next(), field),
        (Some("PersistentVolumeClaimSpec"), "storageClassName")
            | (Some("ContainerStatus"), "image" | "imageID")
    )
}

fn decode_entry(name: &str, entry: &MessageType, bytes: &[u8]) -> Result<(String, Value), Error> {
    let (mut key, mut value) = (String::new(), None);
    for field in Reader(bytes) {
        let (number, wire) = field?;
        let Some(f) = entry.by_number(number) else {
            continue;
        };
        let v = decode_values(&f.ty, wire)?.into_iter().last();
        match (number, v) {
            (1, Some(Value::String(k))) => key = k,
            (1, Some(other)) => key = other.to_string(),
            (2, v) => value = v,
            _ => {}
        }
    }
    let value = match value {
        Some(v) => v,
        // An absent value is the type's zero value.
        None => match entry.by_number(2).map(|f| &f.ty) {
            Some(FieldType::Scalar(Scalar::String | Scalar::Bytes)) => Value::String(String::new()),
            Some(FieldType::Message(m)) => decode_message(m, &[])?,
            Some(FieldType::Scalar(Scalar::Bool)) => Value::Bool(false),
            Some(FieldType::Scalar(_)) => Value::from(0),
            None => return Err(malformed(format!("map entry {name} has no value field"))),
        },
    };
    Ok((key, value))
}

/// The values one wire field holds: one, or several for a packed repeated scalar.
fn decode_values(ty: &FieldType, wire: Wire<'_>) -> Result<Vec<Value>, Error> {
    let one = |v: Value| Ok(vec![v]);
    match (ty, wire) {
        (FieldType::Message(m), Wire::Len(b)) => one(decode_message(m, b)?),
        (FieldType::Scalar(Scalar::String), Wire::Len(b)) => one(Value::String(utf8(b)?)),
        (FieldType::Scalar(Scalar::Bytes), Wire::Len(b)) => one(Value::String(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        (FieldType::Scalar(s), Wire::Len(mut packed)) => {
            let mut out = Vec::new();
            while !packed.is_empty() {
                // Only doubles and floats are fixed width among the types Kubernetes uses.
                let wire = match s {
                    Scalar::Double if packed.len() >= 8 => Wire::Fixed64(packed.get_u64_le()),
                    Scalar::Float if packed.len() >= 4 => Wire::Fixed32(packed.get_u32_le()),
                    Scalar::Double | Scalar::Float => return Err(malformed("truncated packed")),
                    _ => Wire::Varint(
                        prost::encoding::decode_varint(&mut packed)
                            .map_err(|e| malformed(e.to_string()))?,
                    ),
                };
                out.extend(decode_values(ty, wire)?);
            }
            Ok(out)
        }
        (FieldType::Scalar(s), Wire::Varint(v)) => one(match s {
            Scalar::Bool => Value::Bool(v != 0),
            // Two's complement: the varint carries the 64-bit pattern of a negative number.
            Scalar::Int64 => Value::from(v as i64),
            Scalar::Int32 => Value::from(v as i64 as i32),
            Scalar::Uint32 => Value::from(v as u32),
            _ => Value::from(v),
        }),
        (FieldType::Scalar(Scalar::Double), Wire::Fixed64(v)) => {
            one(serde_json::Number::from_f64(f64::from_bits(v))
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        (FieldType::Scalar(_), Wire::Fixed64(v)) => one(Value::from(v)),
        (FieldType::Scalar(Scalar::Float), Wire::Fixed32(v)) => {
            one(serde_json::Number::from_f64(f64::from(f32::from_bits(v)))
                .map(Value::Number)
                .unwrap_or(Value::Null))
        }
        (FieldType::Scalar(_), Wire::Fixed32(v)) => one(Value::from(v)),
        (FieldType::Message(m), _) => Err(malformed(format!("{m} sent with a scalar wire type"))),
    }
}

/// Types with a JSON form of their own.
fn decode_special(name: &str, bytes: &[u8]) -> Result<Option<Value>, Error> {
    let v = match name {
        TIME | MICRO_TIME => {
            let (mut seconds, mut nanos) = (0i64, 0i64);
            for f in Reader(bytes) {
                match f? {
                    (1, Wire::Varint(s)) => seconds = s as i64,
                    (2, Wire::Varint(n)) => nanos = i64::from(n as i32),
                    _ => {}
                }
            }
            if seconds == 0 && nanos == 0 {
                // Go's zero time is written as null (and omitted here).
                Value::Null
            } else {
                Value::String(format_time(seconds, nanos, name == MICRO_TIME))
            }
        }
        DURATION => {
            let mut nanos = 0i64;
            for f in Reader(bytes) {
                if let (1, Wire::Varint(n)) = f? {
                    nanos = n as i64;
                }
            }
            Value::String(format_duration(nanos))
        }
        QUANTITY | QUANTITY_VALUE => {
            let mut s = String::new();
            for f in Reader(bytes) {
                if let (1, Wire::Len(b)) = f? {
                    s = utf8(b)?;
                }
            }
            Value::String(s)
        }
        INT_OR_STRING => {
            let (mut is_string, mut int, mut string) = (false, 0i64, String::new());
            for f in Reader(bytes) {
                match f? {
                    (1, Wire::Varint(t)) => is_string = t == 1,
                    (2, Wire::Varint(i)) => int = i64::from(i as i32),
                    (3, Wire::Len(b)) => string = utf8(b)?,
                    _ => {}
                }
            }
            if is_string {
                Value::String(string)
            } else {
                Value::from(int)
            }
        }
        RAW_EXTENSION | FIELDS_V1 | APIEXT_JSON => {
            let mut raw: &[u8] = &[];
            for f in Reader(bytes) {
                if let (1, Wire::Len(b)) = f? {
                    raw = b;
                }
            }
            embedded_json(raw)?
        }
        n if n == VERBS || n.ends_with(".ExtraValue") => {
            let mut items = Vec::new();
            for f in Reader(bytes) {
                if let (1, Wire::Len(b)) = f? {
                    items.push(Value::String(utf8(b)?));
                }
            }
            Value::Array(items)
        }
        PROPS_OR_BOOL => {
            let (mut allows, mut schema) = (false, None);
            for f in Reader(bytes) {
                match f? {
                    (1, Wire::Varint(a)) => allows = a != 0,
                    (2, Wire::Len(b)) => schema = Some(decode_message(SCHEMA_PROPS, b)?),
                    _ => {}
                }
            }
            schema.unwrap_or(Value::Bool(allows))
        }
        // A schema (field 1), or a list (field 2) of schemas or of strings.
        PROPS_OR_ARRAY | PROPS_OR_STRINGS => {
            let (mut schema, mut array) = (None, Vec::new());
            for f in Reader(bytes) {
                match f? {
                    (1, Wire::Len(b)) => schema = Some(decode_message(SCHEMA_PROPS, b)?),
                    (2, Wire::Len(b)) if name == PROPS_OR_STRINGS => {
                        array.push(Value::String(utf8(b)?))
                    }
                    (2, Wire::Len(b)) => array.push(decode_message(SCHEMA_PROPS, b)?),
                    _ => {}
                }
            }
            schema.unwrap_or(Value::Array(array))
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

// === JSON -> protobuf ===

/// Encodes an object (with its `apiVersion` and `kind`) as a protobuf body.
pub fn encode(obj: &Value) -> Result<Vec<u8>, Error> {
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let message = message_of(api_version, kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    })?;
    let mut raw = Vec::new();
    encode_message(message, obj, &mut raw, kind)?;
    let mut type_meta = Vec::new();
    put_len(&mut type_meta, 1, api_version.as_bytes());
    put_len(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_len(&mut out, 1, &type_meta);
    put_len(&mut out, 2, &raw);
    // contentEncoding and contentType: empty, as the apiserver writes them.
    put_len(&mut out, 3, b"");
    put_len(&mut out, 4, b"");
    Ok(out)
}

/// One event of a protobuf watch stream (`application/vnd.kubernetes.protobuf;stream=watch`): a
/// four-byte big-endian length and a `meta.v1.WatchEvent` whose object is a protobuf body.
pub fn encode_watch_event(event_type: &str, object: &Value) -> Result<Vec<u8>, Error> {
    let inner = encode(object)?;
    let mut raw_ext = Vec::new();
    put_len(&mut raw_ext, 1, &inner);
    let mut event = Vec::new();
    put_len(&mut event, 1, event_type.as_bytes());
    put_len(&mut event, 2, &raw_ext);
    let len = u32::try_from(event.len()).map_err(|_| Error::Encode {
        field: "watch event".into(),
        why: "larger than 4 GiB".into(),
    })?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&event);
    Ok(out)
}

fn encode_error(field: &str, why: impl Into<String>) -> Error {
    Error::Encode {
        field: field.to_owned(),
        why: why.into(),
    }
}

fn encode_message(name: &str, v: &Value, out: &mut Vec<u8>, path: &str) -> Result<(), Error> {
    let _level = Nesting::enter().map_err(|e| encode_error(path, e.to_string()))?;
    if encode_special(name, v, out, path)? {
        return Ok(());
    }
    let ty = schema()
        .messages
        .get(name)
        .ok_or_else(|| encode_error(path, format!("no message type {name}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| encode_error(path, "expected an object"))?;
    for f in &ty.fields {
        if f.inline {
            // The embedded struct takes what it knows of the parent's fields.
            let mut inner = Vec::new();
            encode_value(&f.ty, f.number, v, &mut inner, path)?;
            out.extend_from_slice(&inner);
            continue;
        }
        let Some(value) = obj.get(&f.json).filter(|v| !v.is_null()) else {
            continue;
        };
        let path = format!("{path}.{}", f.json);
        let entry = match &f.ty {
            FieldType::Message(m) => schema()
                .messages
                .get(m)
                .filter(|t| t.map_entry)
                .map(|t| (m, t)),
            FieldType::Scalar(_) => None,
        };
        if let Some((entry_name, entry)) = entry {
            let map = value
                .as_object()
                .ok_or_else(|| encode_error(&path, "expected an object (a map)"))?;
            for (k, val) in map {
                let mut e = Vec::new();
                if let Some(kf) = entry.by_number(1) {
                    encode_value(&kf.ty, 1, &Value::String(k.clone()), &mut e, &path)?;
                }
                if let Some(vf) = entry.by_number(2)
                    && !val.is_null()
                {
                    encode_value(&vf.ty, 2, val, &mut e, &format!("{path}[{k}]"))?;
                }
                let _ = entry_name;
                put_len(out, f.number, &e);
            }
        } else if f.repeated {
            let items = value
                .as_array()
                .ok_or_else(|| encode_error(&path, "expected an array"))?;
            for item in items {
                encode_value(&f.ty, f.number, item, out, &path)?;
            }
        } else {
            encode_value(&f.ty, f.number, value, out, &path)?;
        }
    }
    Ok(())
}

fn encode_value(
    ty: &FieldType,
    number: u32,
    v: &Value,
    out: &mut Vec<u8>,
    path: &str,
) -> Result<(), Error> {
    match ty {
        FieldType::Message(m) => {
            let mut inner = Vec::new();
            encode_message(m, v, &mut inner, path)?;
            put_len(out, number, &inner);
        }
        FieldType::Scalar(Scalar::String) => {
            let s = v
                .as_str()
                .ok_or_else(|| encode_error(path, "expected a string"))?;
            put_len(out, number, s.as_bytes());
        }
        FieldType::Scalar(Scalar::Bytes) => {
            let s = v
                .as_str()
                .ok_or_else(|| encode_error(path, "expected base64 data"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| encode_error(path, format!("invalid base64: {e}")))?;
            put_len(out, number, &b);
        }
        FieldType::Scalar(Scalar::Bool) => {
            let b = v
                .as_bool()
                .ok_or_else(|| encode_error(path, "expected a boolean"))?;
            put_varint(out, number, u64::from(b));
        }
        FieldType::Scalar(Scalar::Double) => {
            let f = v
                .as_f64()
                .ok_or_else(|| encode_error(path, "expected a number"))?;
            put_key(out, number, 1);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        FieldType::Scalar(Scalar::Float) => {
            let f = v
                .as_f64()
                .ok_or_else(|| encode_error(path, "expected a number"))?;
            put_key(out, number, 5);
            out.extend_from_slice(&(f as f32).to_bits().to_le_bytes());
        }
        FieldType::Scalar(Scalar::Uint64 | Scalar::Uint32) => {
            let n = v
                .as_u64()
                .ok_or_else(|| encode_error(path, "expected an unsigned integer"))?;
            put_varint(out, number, n);
        }
        FieldType::Scalar(Scalar::Int64 | Scalar::Int32) => {
            let n = v
                .as_i64()
                .ok_or_else(|| encode_error(path, "expected an integer"))?;
            // Negative numbers travel as their 64-bit two's complement.
            put_varint(out, number, n as u64);
        }
    }
    Ok(())
}

fn encode_special(name: &str, v: &Value, out: &mut Vec<u8>, path: &str) -> Result<bool, Error> {
    match name {
        TIME | MICRO_TIME => {
            let s = v
                .as_str()
                .ok_or_else(|| encode_error(path, "expected an RFC 3339 time"))?;
            let (seconds, nanos) = parse_time(s)
                .ok_or_else(|| encode_error(path, format!("{s:?} is not an RFC 3339 time")))?;
            put_varint(out, 1, seconds as u64);
            if nanos != 0 {
                put_varint(out, 2, nanos as u64);
            }
        }
        DURATION => {
            let s = v
                .as_str()
                .ok_or_else(|| encode_error(path, "expected a duration"))?;
            let nanos = parse_duration(s)
                .ok_or_else(|| encode_error(path, format!("{s:?} is not a duration")))?;
            put_varint(out, 1, nanos as u64);
        }
        QUANTITY | QUANTITY_VALUE => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(encode_error(path, "expected a quantity")),
            };
            put_len(out, 1, s.as_bytes());
        }
        INT_OR_STRING => match v {
            Value::String(s) => {
                put_varint(out, 1, 1);
                put_len(out, 3, s.as_bytes());
            }
            Value::Number(n) => {
                let i = n
                    .as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| encode_error(path, "expected a 32-bit integer"))?;
                put_varint(out, 1, 0);
                put_varint(out, 2, i64::from(i) as u64);
            }
            _ => return Err(encode_error(path, "expected an integer or a string")),
        },
        RAW_EXTENSION | FIELDS_V1 | APIEXT_JSON => put_len(out, 1, v.to_string().as_bytes()),
        n if n == VERBS || n.ends_with(".ExtraValue") => {
            for item in v
                .as_array()
                .ok_or_else(|| encode_error(path, "expected an array"))?
            {
                let s = item
                    .as_str()
                    .ok_or_else(|| encode_error(path, "expected strings"))?;
                put_len(out, 1, s.as_bytes());
            }
        }
        PROPS_OR_BOOL => match v {
            Value::Bool(b) => put_varint(out, 1, u64::from(*b)),
            _ => {
                put_varint(out, 1, 1);
                let mut inner = Vec::new();
                encode_message(SCHEMA_PROPS, v, &mut inner, path)?;
                put_len(out, 2, &inner);
            }
        },
        PROPS_OR_ARRAY | PROPS_OR_STRINGS => {
            let strings = name == PROPS_OR_STRINGS;
            match v {
                Value::Array(items) => {
                    for item in items {
                        if strings {
                            let s = item
                                .as_str()
                                .ok_or_else(|| encode_error(path, "expected strings"))?;
                            put_len(out, 2, s.as_bytes());
                        } else {
                            let mut inner = Vec::new();
                            encode_message(SCHEMA_PROPS, item, &mut inner, path)?;
                            put_len(out, 2, &inner);
                        }
                    }
                }
                _ => {
                    let mut inner = Vec::new();
                    encode_message(SCHEMA_PROPS, v, &mut inner, path)?;
                    put_len(out, 1, &inner);
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

// === unknown fields ===

/// The fields of `obj` (JSON paths such as `spec.containers[0].foo`) that its kind's type does not
/// have; `None` when the kind has no generated type (custom resources).
pub fn unknown_fields(obj: &Value) -> Option<Vec<String>> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let message = message_of(api_version, kind)?;
    let mut out = Vec::new();
    walk_unknown(message, obj, "", &mut out, true);
    Some(out)
}

/// The message of the built-in kind `apiVersion`/`kind` (`api.core.v1.Pod`, ...), if it has one:
/// custom resources have none.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    message_of(api_version, kind)
}

/// What the schema says about one JSON field of a message (see [`field_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// The message declaring the field: an embedded struct's own for the fields it brings.
    pub declared_in: &'static str,
    /// The message type of the field (of its items, for a list), unless it is a scalar, a map,
    /// or a type with a JSON form of its own (`Time`, `Quantity`, ...).
    pub message: Option<&'static str>,
    /// Whether the field is a list (repeated and not a map).
    pub list: bool,
}

/// The field with JSON name `key` of `message` (looking into embedded structs), if there is one.
pub fn field_info(message: &str, key: &str) -> Option<FieldInfo> {
    let schema = schema();
    let (declared_in, ty) = schema.messages.get_key_value(message)?;
    if let Some(f) = ty.fields.iter().find(|f| !f.inline && f.json == key) {
        let (message, map) = match &f.ty {
            FieldType::Message(m) => match schema.messages.get_key_value(m.as_str()) {
                Some((name, t)) => (
                    (!t.map_entry && !is_leaf(name)).then_some(name.as_str()),
                    t.map_entry,
                ),
                None => (None, false),
            },
            FieldType::Scalar(_) => (None, false),
        };
        return Some(FieldInfo {
            declared_in: declared_in.as_str(),
            message,
            list: f.repeated && !map,
        });
    }
    ty.fields
        .iter()
        .filter(|f| f.inline)
        .find_map(|f| match &f.ty {
            FieldType::Message(m) => field_info(m, key),
            FieldType::Scalar(_) => None,
        })
}

/// The field of `ty` with JSON name `key`, looking into inline (embedded) structs.
fn find_field<'a>(ty: &'a MessageType, key: &str) -> Option<&'a Field> {
    ty.fields
        .iter()
        .find(|f| !f.inline && f.json == key)
        .or_else(|| {
            ty.fields
                .iter()
                .filter(|f| f.inline)
                .find_map(|f| match &f.ty {
                    FieldType::Message(m) => {
                        schema().messages.get(m).and_then(|t| find_field(t, key))
                    }
                    FieldType::Scalar(_) => None,
                })
        })
}

fn is_leaf(name: &str) -> bool {
    matches!(
        name,
        TIME | MICRO_TIME
            | DURATION
            | FIELDS_V1
            | VERBS
            | QUANTITY
            | QUANTITY_VALUE
            | INT_OR_STRING
            | RAW_EXTENSION
            | APIEXT_JSON
            | PROPS_OR_BOOL
            | PROPS_OR_ARRAY
            | PROPS_OR_STRINGS
    ) || name.ends_with(".ExtraValue")
}

fn walk_unknown(name: &str, v: &Value, path: &str, out: &mut Vec<String>, root: bool) {
    if is_leaf(name) {
        return;
    }
    let (Some(ty), Value::Object(map)) = (schema().messages.get(name), v) else {
        return;
    };
    for (k, child) in map {
        if root && matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        let sub = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(f) = find_field(ty, k) else {
            out.push(sub);
            continue;
        };
        let FieldType::Message(m) = &f.ty else {
            continue;
        };
        match schema().messages.get(m.as_str()) {
            Some(entry) if entry.map_entry => {
                if let (Some(FieldType::Message(vm)), Value::Object(values)) =
                    (entry.by_number(2).map(|f| &f.ty), child)
                {
                    for (key, value) in values {
                        walk_unknown(vm, value, &format!("{sub}[{key}]"), out, false);
                    }
                }
            }
            _ if f.repeated => {
                if let Value::Array(items) = child {
                    for (i, item) in items.iter().enumerate() {
                        walk_unknown(m, item, &format!("{sub}[{i}]"), out, false);
                    }
                }
            }
            _ => walk_unknown(m, child, &sub, out, false),
        }
    }
}

// === time and duration in Kubernetes' JSON forms ===

/// `2006-01-02T15:04:05Z`, or with microseconds for `MicroTime`.
fn format_time(seconds: i64, nanos: i64, micro: bool) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    let (year, month, day) = crate::store::civil_from_days(days);
    let base = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    if micro {
        format!("{base}.{:06}Z", nanos / 1_000)
    } else {
        format!("{base}Z")
    }
}

/// Seconds since the epoch and nanoseconds of an RFC 3339 time (`Z` or an offset, optional
/// fraction); `None` if it is not one.
pub fn parse_time(s: &str) -> Option<(i64, i64)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scaled = frac[..digits.min(9)].to_owned();
        while scaled.len() < 9 {
            scaled.push('0');
        }
        nanos = scaled.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let h: i64 = o.get(1..3)?.parse().ok()?;
            let m: i64 = o.get(4..6)?.parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (h * 3_600 + m * 60)
        }
        _ => return None,
    };
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3_600 + mm * 60 + ss - offset, nanos))
}

/// A Go duration string (`1h2m3.5s`, `300ms`, `0s`).
fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim_fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim_fraction(n, 1_000_000));
    }
    let total_secs = n / 1_000_000_000;
    let frac = n % 1_000_000_000;
    let (h, m, s) = (
        total_secs / 3_600,
        (total_secs % 3_600) / 60,
        total_secs % 60,
    );
    let secs = trim_fraction(s * 1_000_000_000 + frac, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{secs}s"),
        (0, m) => format!("{sign}{m}m{secs}s"),
        (h, m) => format!("{sign}{h}h{m}m{secs}s"),
    }
}

fn trim_fraction(n: u64, unit: u64) -> String {
    let whole = n / unit;
    let frac = n % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Nanoseconds of a Go duration string.
fn parse_duration(s: &str) -> Option<i64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .count();
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * unit;
    }
    Some((sign * total).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn descriptors_cover_the_stable_groups() {
        for (api_version, kind) in [
            ("v1", "Pod"),
            ("v1", "Secret"),
            ("apps/v1", "Deployment"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole"),
            ("events.k8s.io/v1", "Event"),
            ("policy/v1", "Eviction"),
            ("authentication.k8s.io/v1", "TokenRequest"),
            ("autoscaling/v1", "Scale"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("apiregistration.k8s.io/v1", "APIService"),
            ("v1", "DeleteOptions"),
            ("meta.k8s.io/v1", "PartialObjectMetadata"),
        ] {
            assert!(has_kind(api_version, kind), "{api_version} {kind}");
        }
        assert!(!has_kind("devices.kubeedge.io/v1beta1", "Device"));
    }

    #[test]
    fn objects_round_trip() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"},
                         "creationTimestamp": "2024-03-01T10:20:30Z", "generation": 2},
            "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["sleep", "1"],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}],
                     "volumes": [{"name": "v", "configMap": {"name": "cm", "defaultMode": 420}}],
                     "terminationGracePeriodSeconds": 0, "hostNetwork": true}});
        let bytes = encode(&pod).unwrap();
        assert!(bytes.starts_with(&MAGIC));
        assert_eq!(decode(&bytes).unwrap(), pod);

        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                            "data": {"k": "aGVsbG8="}, "type": "Opaque"});
        assert_eq!(decode(&encode(&secret).unwrap()).unwrap(), secret);

        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "things", "kind": "Thing"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {"spec": {"type": "object", "default": {"a": 1},
                                "additionalProperties": false,
                                "properties": {"n": {"type": "integer", "maximum": 10.5}}}}}}}]}});
        assert_eq!(decode(&encode(&crd).unwrap()).unwrap(), crd);
    }

    #[test]
    fn watch_events_are_length_prefixed_watch_event_messages() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        let frame = encode_watch_event("ADDED", &cm).unwrap();
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let mut fields = Reader(&frame[4..]);
        let Some(Ok((1, Wire::Len(kind)))) = fields.next() else {
            panic!("no type");
        };
        assert_eq!(kind, b"ADDED");
        let Some(Ok((2, Wire::Len(raw_ext)))) = fields.next() else {
            panic!("no object");
        };
        let Some(Ok((1, Wire::Len(raw)))) = Reader(raw_ext).next() else {
            panic!("no raw");
        };
        assert_eq!(decode(raw).unwrap(), cm);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let bytes = encode(&pod).unwrap();
        assert_eq!(decode(b"{\"a\":1}"), Err(Error::NoMagic));
        for cut in 5..bytes.len() - 1 {
            // Every truncation is refused or decodes to less; none panics.
            let _ = decode(&bytes[..cut]);
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 6]),
            Err(Error::Malformed(_))
        ));
        let thing = json!({"apiVersion": "example.com/v1", "kind": "Thing"});
        assert!(matches!(encode(&thing), Err(Error::UnknownKind { .. })));
    }

    #[test]
    fn unknown_fields_are_found_by_the_descriptors() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Never", "wrong": true,
                        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 3}}],
                     "volumes": [{"name": "v", "configMap": {"name": "cm"}}]}});
        assert_eq!(
            unknown_fields(&pod),
            Some(vec![
                "metadata.bogus".to_owned(),
                "spec.containers[0].wrong".to_owned()
            ])
        );
        assert_eq!(
            unknown_fields(&json!({"apiVersion": "x/v1", "kind": "T"})),
            None
        );
    }

    #[test]
    fn deeply_nested_bodies_are_refused_not_a_stack_overflow() {
        // JSONSchemaProps { not = 28: JSONSchemaProps { not = 28: ... } }, 10,000 levels.
        let mut inner: Vec<u8> = Vec::new();
        for _ in 0..10_000 {
            let mut outer = Vec::new();
            put_len(&mut outer, 28, &inner);
            inner = outer;
        }
        let mut validation = Vec::new();
        put_len(&mut validation, 1, &inner);
        let err = decode_message(
            "apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceValidation",
            &validation,
        );
        assert!(matches!(err, Err(Error::Malformed(m)) if m.contains("nested")));
        // The counter is back at zero: the next body decodes.
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(decode(&encode(&cm).unwrap()).unwrap(), cm);
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(format_time(0, 5_000, true), "1970-01-01T00:00:00.000005Z");
        assert_eq!(parse_time("2024-03-01T10:20:30Z"), Some((1_709_288_430, 0)));
        assert_eq!(
            parse_time("2024-03-01T12:20:30.25+02:00"),
            Some((1_709_288_430, 250_000_000))
        );
        assert_eq!(parse_time("2024-13-01T10:20:30Z"), None);
        for (n, s) in [
            (0, "0s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (300_000_000, "300ms"),
        ] {
            assert_eq!(format_duration(n), s);
            assert_eq!(parse_duration(s), Some(n));
        }
    }
}
