//! Streaming the large repeated fields of a configuration while it is parsed.
//!
//! A bootstrap with 10,000 clusters held as one dynamic message costs ~70 MB; the same
//! clusters encoded cost ~2 MB. For the repeated fields named in a [`StreamSpec`]
//! (`static_resources.listeners` and `.clusters` for a bootstrap), each element is
//! deserialized, encoded and dropped as soon as it is read; everything else is collected as a
//! JSON document (it is small) and deserialized afterwards. Each element is expanded and
//! checked as it is read; the compiler later decodes them one at a time as well.

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

use crate::check::{Support, check_with};
use crate::error::ConfigError;
use crate::pgv::RuleCache;

/// Which repeated fields to stream: (field of the root message, its repeated message fields).
pub type StreamSpec = &'static [(&'static str, &'static [&'static str])];

/// The bootstrap's: listeners and clusters, the fields that grow with a deployment.
pub const BOOTSTRAP_STREAM: StreamSpec = &[("static_resources", &["listeners", "clusters"])];

/// One element of a streamed field, encoded.
pub struct Streamed {
    /// Where the element stands: `static_resources.clusters[3]`.
    pub path: String,
    pub desc: MessageDescriptor,
    pub bytes: Vec<u8>,
}

/// The root's fields, with streamed fields left out, and the streamed elements.
pub struct Split {
    pub rest: Map<String, Value>,
    pub streamed: Vec<Streamed>,
    /// Problems found in streamed elements, with their full paths.
    pub errors: Vec<ConfigError>,
}

/// Reads the root message's map, streaming the fields `spec` names.
pub struct RootSeed<'a> {
    pub desc: &'a MessageDescriptor,
    pub spec: StreamSpec,
    /// Each element is expanded and checked against it as soon as it is read.
    pub support: &'static Support,
}

impl<'de> DeserializeSeed<'de> for RootSeed<'_> {
    type Value = Split;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Split, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RootSeed<'_> {
    type Value = Split;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} message", self.desc.full_name())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split, A::Error> {
        let mut split = Split {
            rest: Map::new(),
            streamed: Vec::new(),
            errors: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            let target = self.spec.iter().find_map(|(parent, children)| {
                let field = self.desc.get_field_by_name(parent)?;
                (field.name() == key || field.json_name() == key).then_some((field, *children))
            });
            let Some((parent, children)) = target else {
                let value = map.next_value::<Value>()?;
                split.rest.insert(key, value);
                continue;
            };
            let prost_reflect::Kind::Message(parent_desc) = parent.kind() else {
                split.rest.insert(key, map.next_value::<Value>()?);
                continue;
            };
            let seed = ParentSeed {
                parent_desc: &parent_desc,
                parent_name: parent.name(),
                children,
                support: self.support,
            };
            let (rest, streamed, errors) = map.next_value_seed(seed)?;
            split.rest.insert(key, Value::Object(rest));
            split.streamed.extend(streamed);
            split.errors.extend(errors);
        }
        Ok(split)
    }
}

/// Reads the parent message (`static_resources`), streaming its named repeated fields.
struct ParentSeed<'a> {
    parent_desc: &'a MessageDescriptor,
    parent_name: &'a str,
    children: &'static [&'static str],
    support: &'static Support,
}

impl<'de> DeserializeSeed<'de> for ParentSeed<'_> {
    type Value = (Map<String, Value>, Vec<Streamed>, Vec<ConfigError>);
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParentSeed<'_> {
    type Value = (Map<String, Value>, Vec<Streamed>, Vec<ConfigError>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} message", self.parent_desc.full_name())
    }

    /// `null` is an unset message in proto3 JSON.
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok((Map::new(), Vec::new(), Vec::new()))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rest = Map::new();
        let mut streamed = Vec::new();
        let mut errors = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let field = self.children.iter().find_map(|name| {
                let f = self.parent_desc.get_field_by_name(name)?;
                (f.name() == key || f.json_name() == key).then_some(f)
            });
            match field.as_ref().map(|f| (f, f.kind())) {
                Some((field, prost_reflect::Kind::Message(desc))) if field.is_list() => {
                    let seed = ElementsSeed {
                        desc: &desc,
                        path: format!("{}.{}", self.parent_name, field.name()),
                        support: self.support,
                    };
                    let (elements, problems) = map.next_value_seed(seed)?;
                    streamed.extend(elements);
                    errors.extend(problems);
                }
                _ => {
                    let value = map.next_value::<Value>()?;
                    rest.insert(key, value);
                }
            }
        }
        Ok((rest, streamed, errors))
    }
}

/// Reads a list of messages, encoding each as soon as it is read.
struct ElementsSeed<'a> {
    desc: &'a MessageDescriptor,
    path: String,
    support: &'static Support,
}

impl<'de> DeserializeSeed<'de> for ElementsSeed<'_> {
    type Value = (Vec<Streamed>, Vec<ConfigError>);
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementsSeed<'_> {
    type Value = (Vec<Streamed>, Vec<ConfigError>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of {}", self.desc.full_name())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok((Vec::new(), Vec::new()))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok((Vec::new(), Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut errors = Vec::new();
        // One cache for the whole list: the elements share their message types.
        let mut rules = RuleCache::default();
        while let Some(mut msg) = seq.next_element_seed(MessageSeed(self.desc))? {
            let path = format!("{}[{}]", self.path, out.len());
            match crate::any::expand_typed_structs(&mut msg, "") {
                Ok(_) => errors.extend(
                    check_with(&msg, self.support, &mut rules)
                        .into_iter()
                        .map(|e| e.within(&path)),
                ),
                Err(e) => errors.push(e.within(&path)),
            }
            out.push(Streamed {
                path,
                desc: self.desc.clone(),
                bytes: msg.encode_to_vec(),
            });
        }
        Ok((out, errors))
    }
}

struct MessageSeed<'a>(&'a MessageDescriptor);

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = DynamicMessage;
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<DynamicMessage, D::Error> {
        DynamicMessage::deserialize(self.0.clone(), deserializer)
    }
}
