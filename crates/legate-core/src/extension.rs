//! Extension configs (`typed_config`), as Envoy 1.40 resolves them: by type URL only. An
//! extension given by `name` alone is refused, with Envoy's message.

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::google::protobuf::Any;

use crate::Errors;

/// The `typed_config` of an extension named `name`, or Envoy's error when there is none.
pub fn typed_config<'a>(name: &str, config: Option<&'a Any>) -> Result<&'a Any, String> {
    config.ok_or_else(|| {
        format!("Didn't find a registered implementation for '{name}' with type URL: ''")
    })
}

/// Checks every access log as far as possible without opening files (formats, filters,
/// types); errors go under `access_log[i]`.
pub fn check_access_logs(logs: &[AccessLog], errors: &mut Errors) {
    for (i, log) in logs.iter().enumerate() {
        errors.take(
            &format!("access_log[{i}]"),
            crate::access_log::AccessLogger::check(log),
        );
    }
}
