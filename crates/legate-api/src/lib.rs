//! Envoy's v3 API for Legate: the protobuf types (from `envoy-types`, re-exported as [`pb`]),
//! the descriptor pool they were generated from, and the one path by which any configuration
//! enters the proxy: bytes (YAML, JSON, binary or text proto) -> dynamic message ->
//! `TypedStruct`s expanded -> checked (`validate.rules` and what Legate supports) -> typed
//! prost message. Nothing here knows what the configuration means; the crates that implement
//! each piece compile the typed messages into their own models.

pub mod any;
pub mod bootstrap;
pub mod check;
pub mod descriptors;
pub mod error;
pub mod load;
pub mod pgv;
pub mod resources;
pub mod stream;

pub use envoy_types::pb;
pub use error::ConfigError;
pub use load::Format;
