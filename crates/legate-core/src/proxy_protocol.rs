//! What a downstream connection's PROXY protocol state carries to the upstream (Envoy's
//! `ProxyProtocolFilterState`): the addresses a PROXY header sent upstream names and the TLVs
//! it passes on. The listener filter sets it from the header it read (keeping the TLVs its
//! `pass_through_tlvs` names); tcp_proxy sets it from the connection's addresses when no
//! header came in, and adds its `proxy_protocol_tlvs`; an `upstream_proxy_protocol` cluster
//! writes it, keeping the TLVs its own `pass_through_tlvs` names.

use std::net::SocketAddr;

use legate_api::pb::envoy::config::core::v3::{
    ProxyProtocolPassThroughTlVs, TlvEntry, proxy_protocol_pass_through_tl_vs::PassTlVsMatchType,
};

use crate::{Compiled, Errors};

/// A TLV: its type and value.
pub type Tlv = (u8, Vec<u8>);

/// The addresses and TLVs a PROXY header sent upstream carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxyProtocolData {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub tlvs: Vec<Tlv>,
}

/// Configured TLVs (`TlvEntry`s with a static `value`), in order; `field` names the list in
/// errors.
pub fn tlv_entries(entries: &[TlvEntry], field: &str) -> Compiled<Vec<Tlv>> {
    let mut errors = Errors::default();
    let mut tlvs = Vec::with_capacity(entries.len());
    for (i, tlv) in entries.iter().enumerate() {
        match u8::try_from(tlv.r#type) {
            Ok(kind) => tlvs.push((kind, tlv.value.clone())),
            Err(_) => errors.push(&format!("{field}[{i}].type"), "value must be less than 256"),
        }
    }
    errors.finish(|| tlvs)
}

/// `ProxyProtocolPassThroughTLVs`: which TLVs go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassThrough {
    /// `INCLUDE_ALL`.
    All,
    /// `INCLUDE` these types.
    Only(Vec<u8>),
}

impl PassThrough {
    pub fn compile(p: &ProxyProtocolPassThroughTlVs) -> Compiled<PassThrough> {
        let mut errors = Errors::default();
        let types: Vec<u8> = p
            .tlv_type
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match u8::try_from(*t) {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(&format!("tlv_type[{i}]"), "value must be less than 256");
                    None
                }
            })
            .collect();
        errors.finish(|| match PassTlVsMatchType::try_from(p.match_type) {
            Ok(PassTlVsMatchType::Include) => PassThrough::Only(types),
            _ => PassThrough::All,
        })
    }

    pub fn keeps(&self, kind: u8) -> bool {
        match self {
            PassThrough::All => true,
            PassThrough::Only(types) => types.contains(&kind),
        }
    }
}

/// tcp_proxy's `proxy_protocol_tlv_merge_policy`: how its `proxy_protocol_tlvs` meet the TLVs
/// of a PROXY header that came in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergePolicy {
    /// Only when no header came in; otherwise the received TLVs alone.
    #[default]
    AddIfAbsent,
    /// Ahead of the received TLVs, which lose those of the same types.
    OverwriteByType,
    /// After the received TLVs.
    Append,
}

impl MergePolicy {
    /// The TLVs of a connection whose PROXY header brought `received`, given `configured`.
    pub fn merge(self, received: &[Tlv], configured: &[Tlv]) -> Vec<Tlv> {
        match self {
            MergePolicy::AddIfAbsent => received.to_vec(),
            MergePolicy::OverwriteByType => configured
                .iter()
                .cloned()
                .chain(
                    received
                        .iter()
                        .filter(|(kind, _)| !configured.iter().any(|(k, _)| k == kind))
                        .cloned(),
                )
                .collect(),
            MergePolicy::Append => received.iter().chain(configured).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(kind: u8, value: &str) -> Tlv {
        (kind, value.as_bytes().to_vec())
    }

    #[test]
    fn merge_policies_as_envoy_orders_them() {
        let received = [tlv(1, "a"), tlv(2, "b")];
        let configured = [tlv(3, "c"), tlv(1, "z")];
        assert_eq!(
            MergePolicy::AddIfAbsent.merge(&received, &configured),
            received
        );
        assert_eq!(
            MergePolicy::OverwriteByType.merge(&received, &configured),
            [tlv(3, "c"), tlv(1, "z"), tlv(2, "b")]
        );
        assert_eq!(
            MergePolicy::Append.merge(&received, &configured),
            [tlv(1, "a"), tlv(2, "b"), tlv(3, "c"), tlv(1, "z")]
        );
    }

    #[test]
    fn pass_through_all_or_only_some() {
        let only = PassThrough::compile(&ProxyProtocolPassThroughTlVs {
            match_type: PassTlVsMatchType::Include as i32,
            tlv_type: vec![5, 7],
        })
        .unwrap();
        assert!(only.keeps(5) && only.keeps(7) && !only.keeps(6));
        let all = PassThrough::compile(&ProxyProtocolPassThroughTlVs::default()).unwrap();
        assert!(all.keeps(6));
        let bad = PassThrough::compile(&ProxyProtocolPassThroughTlVs {
            match_type: PassTlVsMatchType::Include as i32,
            tlv_type: vec![256],
        });
        assert_eq!(bad.unwrap_err()[0].path, "tlv_type[0]");
    }
}
