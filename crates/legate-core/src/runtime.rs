//! Envoy's layered runtime: string keys whose values change behaviour without a restart.
//!
//! Layers (`static_layer`s from the bootstrap, then the `admin_layer` written by
//! `/runtime_modify`) are merged into one immutable [`Snapshot`]; later layers override earlier
//! ones. Readers take the current snapshot (an `Arc`) and never block a writer.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;

/// The merged values of all layers at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    values: BTreeMap<String, String>,
}

/// One layer as `/runtime` shows it.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub name: String,
    pub values: BTreeMap<String, String>,
    /// The admin layer is the one `/runtime_modify` writes.
    pub is_admin: bool,
}

impl Snapshot {
    pub fn from_values(values: BTreeMap<String, String>) -> Self {
        Self { values }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// An integer value, or `default` when the key is unset or not an unsigned integer
    /// (Envoy's `getInteger`).
    pub fn get_integer(&self, key: &str, default: u64) -> u64 {
        self.get(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(default)
    }

    /// A boolean value (`true`/`false`), or `default`.
    pub fn get_bool(&self, key: &str, default: bool) -> bool {
        match self.get(key).map(str::trim) {
            Some("true") => true,
            Some("false") => false,
            _ => default,
        }
    }

    /// Envoy's `featureEnabled(key, FractionalPercent)`: the key's value, read as a numerator
    /// over `denominator` (or as `numerator`, used when the key is unset), compared against
    /// `random % denominator`.
    pub fn feature_enabled(
        &self,
        key: &str,
        numerator: u64,
        denominator: u64,
        random: u64,
    ) -> bool {
        let denominator = denominator.max(1);
        let numerator = if key.is_empty() {
            numerator
        } else {
            self.get_integer(key, numerator)
        };
        random % denominator < numerator
    }
}

/// A `static_layer` as runtime keys: nested objects become dotted keys (`a: {b: 1}` is
/// `a.b`), values their text (`true`, `5`, strings as they are), as Envoy flattens them.
pub fn flatten_struct(
    values: &legate_api::pb::google::protobuf::Struct,
) -> BTreeMap<String, String> {
    use legate_api::pb::google::protobuf::value::Kind;
    fn walk(
        prefix: &str,
        s: &legate_api::pb::google::protobuf::Struct,
        out: &mut BTreeMap<String, String>,
    ) {
        for (key, value) in &s.fields {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match &value.kind {
                Some(Kind::StructValue(inner)) => walk(&name, inner, out),
                Some(Kind::StringValue(v)) => {
                    out.insert(name, v.clone());
                }
                Some(Kind::NumberValue(n)) => {
                    let text = if n.fract() == 0.0 && n.abs() < 1e15 {
                        format!("{}", *n as i64)
                    } else {
                        n.to_string()
                    };
                    out.insert(name, text);
                }
                Some(Kind::BoolValue(b)) => {
                    out.insert(name, b.to_string());
                }
                Some(Kind::NullValue(_)) | Some(Kind::ListValue(_)) | None => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", values, &mut out);
    out
}

/// The runtime shared by the whole process: the layers and the snapshot they merge into.
#[derive(Debug, Default)]
pub struct Runtime {
    layers: RwLock<Vec<Layer>>,
    /// Read on every request by every worker: an atomic pointer, not a lock, so that readers
    /// never write to a shared cache line.
    snapshot: ArcSwap<Snapshot>,
}

impl Runtime {
    pub fn new(layers: Vec<Layer>) -> Self {
        let runtime = Runtime {
            layers: RwLock::new(layers),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
        };
        runtime.rebuild();
        runtime
    }

    /// The current merged values. A guard, not an `Arc` clone: workers reading it on every
    /// request touch no shared reference count.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn layers(&self) -> Vec<Layer> {
        match self.layers.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// `/runtime_modify`: sets (or, with an empty value, removes) keys in the admin layer.
    /// Fails when the configuration has no admin layer, as in Envoy.
    pub fn modify(&self, changes: &[(String, String)]) -> Result<(), String> {
        {
            let mut layers = match self.layers.write() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            let Some(admin) = layers.iter_mut().find(|l| l.is_admin) else {
                return Err("No admin layer specified".to_owned());
            };
            for (key, value) in changes {
                if value.is_empty() {
                    admin.values.remove(key);
                } else {
                    admin.values.insert(key.clone(), value.clone());
                }
            }
        }
        self.rebuild();
        Ok(())
    }

    fn rebuild(&self) {
        let merged = {
            let layers = match self.layers.read() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut values = BTreeMap::new();
            for layer in layers.iter() {
                values.extend(layer.values.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            values
        };
        self.snapshot.store(Arc::new(Snapshot::from_values(merged)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_layer_overrides_static_layers() {
        let stat = Layer {
            name: "static".into(),
            values: [("a".to_owned(), "1".to_owned())].into(),
            is_admin: false,
        };
        let admin = Layer {
            name: "admin".into(),
            is_admin: true,
            ..Layer::default()
        };
        let rt = Runtime::new(vec![stat, admin]);
        assert_eq!(rt.snapshot().get_integer("a", 9), 1);
        rt.modify(&[("a".into(), "2".into())]).unwrap();
        assert_eq!(rt.snapshot().get_integer("a", 9), 2);
        rt.modify(&[("a".into(), String::new())]).unwrap();
        assert_eq!(rt.snapshot().get_integer("a", 9), 1);
        assert!(rt.snapshot().feature_enabled("missing", 50, 100, 49));
        assert!(!rt.snapshot().feature_enabled("missing", 50, 100, 50));
    }
}
