//! The descriptor pool: every message of Envoy's v3 API, as compiled into `envoy-types`, plus the
//! two `TypedStruct` wrappers that Envoy accepts in place of a typed `Any` but that the package
//! does not ship. Reflection over this pool is what reads YAML/JSON/text into protos, checks
//! `validate.rules`, and finds fields Legate does not implement.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

static ENVOY_DESCRIPTORS: &[u8] = include_bytes!(env!("LEGATE_ENVOY_DESCRIPTORS"));

/// Full names of the wrappers that carry an extension's config as a `google.protobuf.Struct`.
pub const TYPED_STRUCT_TYPES: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// The process-wide pool, decoded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::decode(ENVOY_DESCRIPTORS)
            .expect("the descriptor set shipped in envoy-types decodes");
        for name in TYPED_STRUCT_TYPES {
            pool.add_file_descriptor_proto(typed_struct_file(name))
                .expect("TypedStruct descriptor is well formed");
        }
        pool
    })
}

/// `message TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }` in the
/// package of `full_name` (the shape both udpa and xds define).
fn typed_struct_file(full_name: &str) -> FileDescriptorProto {
    let (package, message) = full_name.rsplit_once('.').expect("qualified name");
    let field =
        |name: &str, number: i32, kind: Type, type_name: Option<&str>| FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(if name == "type_url" {
                "typeUrl".into()
            } else {
                name.into()
            }),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        };
    FileDescriptorProto {
        name: Some(format!("{}/typed_struct.proto", package.replace('.', "/"))),
        package: Some(package.into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some(message.into()),
            field: vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_has_bootstrap_validate_rules_and_typed_structs() {
        let pool = pool();
        assert!(
            pool.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
                .is_some()
        );
        assert!(pool.get_extension_by_name("validate.rules").is_some());
        for name in TYPED_STRUCT_TYPES {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
