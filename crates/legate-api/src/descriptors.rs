//! The descriptor pool: the messages of Envoy's v3 API that a Legate configuration can contain,
//! taken from the descriptor set compiled into `envoy-types`, plus the two `TypedStruct`
//! wrappers that Envoy accepts in place of a typed `Any` but that the package does not ship.
//! Reflection over this pool is what reads YAML/JSON/text into protos, checks `validate.rules`,
//! and finds fields Legate does not implement.
//!
//! The pool holds only the files that [`POOL_ROOTS`] need (about a third of Envoy's API):
//! the whole API decodes to ~50 MB and 45 ms, the pruned pool to a third of both.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorSet;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

static ENVOY_DESCRIPTORS: &[u8] = include_bytes!(env!("LEGATE_ENVOY_DESCRIPTORS"));

/// Full names of the wrappers that carry an extension's config as a `google.protobuf.Struct`.
pub const TYPED_STRUCT_TYPES: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// The messages whose files (and their imports) the pool holds: the bootstrap, and the config
/// of every extension Legate implements. An extension added to Legate's support table must be
/// added here (a test in the `legate` crate checks it).
pub const POOL_ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.service.discovery.v3.DiscoveryResponse",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.network.echo.v3.Echo",
    "envoy.extensions.filters.network.sni_cluster.v3.SniCluster",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.network.direct_response.v3.Config",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
    "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
    "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
    "envoy.extensions.filters.udp.udp_proxy.v3.Route",
];

fn envoy_descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(ENVOY_DESCRIPTORS)
        .expect("the descriptor set shipped in envoy-types decodes")
}

/// Whether `name` is a message anywhere in Envoy's API, in the pool or not. Only asked on
/// error paths, to tell "not supported by Legate" from "no such type".
pub fn is_envoy_message(name: &str) -> bool {
    envoy_descriptors().file.iter().any(|f| {
        let Some(message) = name
            .strip_prefix(f.package())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return false;
        };
        let mut stack: Vec<(String, &prost_types::DescriptorProto)> = f
            .message_type
            .iter()
            .map(|m| (m.name().to_owned(), m))
            .collect();
        while let Some((path, m)) = stack.pop() {
            if path == message {
                return true;
            }
            if message.starts_with(&format!("{path}.")) {
                stack.extend(
                    m.nested_type
                        .iter()
                        .map(|n| (format!("{path}.{}", n.name()), n)),
                );
            }
        }
        false
    })
}

/// The process's pool while it is kept (see [`release`]).
static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The process-wide pool (a cheap handle), decoded on first use and again after [`release`].
pub fn pool() -> DescriptorPool {
    POOL.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(decode_pool)
        .clone()
}

/// Drops the process's handle on the pool: a server that reads no more configuration until
/// it is told to (a reload, an admin dump) need not keep the ~16 MB of reflection data. What
/// still holds a descriptor keeps the pool alive; the next [`pool`] decodes it again (~15 ms).
pub fn release() {
    POOL.lock().unwrap_or_else(|p| p.into_inner()).take();
}

fn decode_pool() -> DescriptorPool {
    let mut pool = DescriptorPool::decode(pruned_descriptors().as_slice())
        .expect("the pruned descriptor set is complete");
    for name in TYPED_STRUCT_TYPES {
        pool.add_file_descriptor_proto(typed_struct_file(name))
            .expect("TypedStruct descriptor is well formed");
    }
    pool
}

/// The encoded descriptor set, reduced to the files [`POOL_ROOTS`] need. Files are copied as
/// their original bytes: decoding them into `prost_types` would drop the `validate.rules`
/// extensions from their options.
fn pruned_descriptors() -> Vec<u8> {
    let mut files: Vec<(prost_types::FileDescriptorProto, &[u8])> = Vec::new();
    let mut rest = ENVOY_DESCRIPTORS;
    while !rest.is_empty() {
        // FileDescriptorSet { repeated FileDescriptorProto file = 1; }: tag 0x0a, length, bytes.
        let tag = prost::encoding::decode_varint(&mut rest).expect("descriptor set tag");
        assert_eq!(tag, 0x0a, "a FileDescriptorSet holds only `file` entries");
        let len =
            prost::encoding::decode_varint(&mut rest).expect("descriptor set length") as usize;
        let (bytes, tail) = rest.split_at(len);
        let file = prost_types::FileDescriptorProto::decode(bytes).expect("file descriptor");
        files.push((file, bytes));
        rest = tail;
    }
    let by_name: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, (f, _))| (f.name(), i))
        .collect();
    let mut keep = HashSet::new();
    let mut stack: Vec<usize> = (0..files.len())
        .filter(|&i| POOL_ROOTS.iter().any(|root| defines(&files[i].0, root)))
        .collect();
    while let Some(i) = stack.pop() {
        if keep.insert(i) {
            stack.extend(
                files[i]
                    .0
                    .dependency
                    .iter()
                    .filter_map(|d| by_name.get(d.as_str()).copied()),
            );
        }
    }
    let mut out = Vec::new();
    for (i, (_, bytes)) in files.iter().enumerate() {
        if keep.contains(&i) {
            let file = without_source_info(bytes);
            prost::encoding::encode_varint(0x0a, &mut out);
            prost::encoding::encode_varint(file.len() as u64, &mut out);
            out.extend_from_slice(&file);
        }
    }
    out
}

/// A `FileDescriptorProto` without `source_code_info` (field 9): the proto comments, which
/// are most of the descriptor bytes and which nothing here reads.
fn without_source_info(mut bytes: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::with_capacity(bytes.len());
    while !bytes.is_empty() {
        let start = bytes;
        let (field, wire_type) = decode_key(&mut bytes).expect("descriptor field key");
        let skip = match wire_type {
            WireType::Varint => {
                decode_varint(&mut bytes).expect("varint");
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => decode_varint(&mut bytes).expect("length") as usize,
            WireType::StartGroup | WireType::EndGroup => unreachable!("descriptors use no groups"),
        };
        bytes = &bytes[skip..];
        if field != 9 {
            out.extend_from_slice(&start[..start.len() - bytes.len()]);
        }
    }
    out
}

/// Whether `file` defines the top-level message `full_name`.
fn defines(file: &prost_types::FileDescriptorProto, full_name: &str) -> bool {
    full_name.rsplit_once('.').is_some_and(|(package, name)| {
        file.package() == package && file.message_type.iter().any(|m| m.name() == name)
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
        for name in TYPED_STRUCT_TYPES.iter().chain(POOL_ROOTS) {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn messages_outside_the_pool_are_still_known() {
        assert!(
            pool()
                .get_message_by_name("envoy.extensions.filters.http.lua.v3.Lua")
                .is_none()
        );
        assert!(is_envoy_message("envoy.extensions.filters.http.lua.v3.Lua"));
        assert!(is_envoy_message(
            "envoy.config.cluster.v3.Cluster.CommonLbConfig"
        ));
        assert!(!is_envoy_message("envoy.no.such.Thing"));
    }
}
