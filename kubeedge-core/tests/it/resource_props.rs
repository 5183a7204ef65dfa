//! Property tests of the resource-string grammar.

use kubeedge_core::message::ResourceType;
use kubeedge_core::resource::{self, CloudRef, ObjectRef};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9][-a-z0-9.]{0,20}"
}

fn kind() -> impl Strategy<Value = ResourceType> {
    prop_oneof![
        Just(ResourceType::Pod),
        Just(ResourceType::ConfigMap),
        Just(ResourceType::Node),
        Just(ResourceType::PodPatch),
        Just(ResourceType::Lease),
        Just(ResourceType::Device),
        "[a-z]{1,12}".prop_map(|s| ResourceType::parse(&s)),
    ]
}

fn object() -> impl Strategy<Value = ObjectRef> {
    (
        proptest::option::of(token()),
        kind(),
        proptest::option::of(token()),
    )
        .prop_map(|(namespace, kind, name)| ObjectRef {
            // `null` is the cluster-scope token, never a namespace name.
            namespace: namespace.filter(|n| n != "null"),
            kind,
            name,
        })
}

proptest! {
    #[test]
    fn object_format_then_parse_is_identity(r in object()) {
        let s = r.to_string();
        prop_assert_eq!(s.parse::<ObjectRef>().unwrap(), r);
    }

    #[test]
    fn cloud_format_then_parse_is_identity(node in token(), r in object()) {
        let c = CloudRef { node, object: r };
        let s = c.to_string();
        prop_assert_eq!(s.parse::<CloudRef>().unwrap(), c);
    }

    #[test]
    fn trim_undoes_prefix(node in token(), r in object()) {
        let edge = r.to_string();
        let cloud = resource::prefix(&node, &edge);
        prop_assert_eq!(resource::trim(&cloud), edge.as_str());
        prop_assert_eq!(resource::node_id(&cloud), Some(node.as_str()));
    }

    #[test]
    fn parsing_arbitrary_strings_never_panics(s in ".{0,60}") {
        let _ = s.parse::<ObjectRef>();
        let _ = s.parse::<CloudRef>();
        let _ = resource::trim(&s);
        let _ = resource::node_id(&s);
    }
}
