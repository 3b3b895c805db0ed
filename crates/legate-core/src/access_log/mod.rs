//! Access loggers: `envoy.config.accesslog.v3.AccessLog` compiled into an [`AccessLogger`]
//! that filters a finished stream, formats its line on the calling worker and queues it for
//! a background writer ([`file`]).
//!
//! Supported `typed_config`s, as in Envoy 1.40:
//! * `envoy.extensions.access_loggers.file.v3.FileAccessLog`: `path` and one of `log_format`,
//!   the deprecated `format` (empty means the default format) / `json_format` /
//!   `typed_json_format`, or none (Envoy's default format);
//! * `envoy.extensions.access_loggers.stream.v3.StdoutAccessLog` / `StderrAccessLog`:
//!   `log_format` or the default format.
//!
//! Anything else is refused with the path of the field that names it.

pub mod file;
pub mod filter;

use std::path::PathBuf;
use std::sync::Arc;

use legate_api::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use legate_api::pb::envoy::config::core::v3::SubstitutionFormatString;
use legate_api::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use legate_api::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use legate_api::pb::google::protobuf::Any;
use prost::Message;

pub use file::{AccessLogFiles, Destination, LogFile, reopen_all};
pub use filter::Filter;

use crate::format::{FormatString, Formatter, JsonFormatter, SubstitutionFormat};
use crate::runtime::Snapshot;
use crate::stream_info::StreamInfo;
use crate::{Compiled, ConfigError, Errors, within};

const FILE_ACCESS_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_ACCESS_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_ACCESS_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// One configured access log.
#[derive(Clone, Debug)]
pub struct AccessLogger {
    filter: Option<Filter>,
    format: SubstitutionFormat,
    sink: Arc<LogFile>,
}

impl AccessLogger {
    /// Compiles one `AccessLog` and opens its destination; errors carry the field path
    /// relative to it (`typed_config.path`, `filter.status_code_filter.comparison`, ...).
    pub fn compile(proto: &AccessLog) -> Compiled<AccessLogger> {
        let (filter, format, destination) = Self::check(proto)?;
        let is_file = matches!(&proto.config_type, Some(access_log::ConfigType::TypedConfig(any)) if any.type_url.ends_with(FILE_ACCESS_LOG));
        let sink = AccessLogFiles::open(destination).map_err(|e| {
            let path = if is_file {
                "typed_config.path"
            } else {
                "typed_config"
            };
            vec![ConfigError::new(path, e)]
        })?;
        Ok(AccessLogger {
            filter,
            format,
            sink,
        })
    }

    /// A logger writing Envoy's default format to a file, with no filter: the admin server's
    /// deprecated `access_log_path`.
    pub fn default_format_file(path: &str) -> Result<AccessLogger, String> {
        Ok(AccessLogger {
            filter: None,
            format: SubstitutionFormat::Text(crate::format::Formatter::envoy_default()),
            sink: AccessLogFiles::open(Destination::File(path.into()))?,
        })
    }

    /// Compiles one `AccessLog` without opening anything: what `--mode validate` checks.
    pub fn check(proto: &AccessLog) -> Compiled<(Option<Filter>, SubstitutionFormat, Destination)> {
        let AccessLog {
            name,
            filter,
            config_type,
        } = proto;
        let mut errors = Errors::default();
        let filter = match filter {
            Some(f) => errors.take("filter", Filter::compile(f)),
            None => None,
        };
        let any = match config_type {
            Some(access_log::ConfigType::TypedConfig(any)) => any,
            None => {
                errors.push(
                    "",
                    format!(
                        "Didn't find a registered implementation for '{name}' with type URL: ''"
                    ),
                );
                return Err(errors.0);
            }
        };
        let output = errors.take("typed_config", output(any));
        match (output, errors.0.is_empty()) {
            (Some((format, destination)), true) => Ok((filter, format, destination)),
            _ => Err(errors.0),
        }
    }

    /// Logs a finished stream: filters, formats here, queues for the writer. Never blocks.
    pub fn log(&self, info: &StreamInfo, runtime: &Snapshot) {
        if let Some(filter) = &self.filter
            && !filter.evaluate(info, runtime)
        {
            return;
        }
        self.sink.write(self.format.format(info));
    }

    /// Where the lines go, and its counters (dropped lines, write failures).
    pub fn destination(&self) -> &LogFile {
        &self.sink
    }
}

/// The format and destination of a `typed_config`.
fn output(any: &Any) -> Compiled<(SubstitutionFormat, Destination)> {
    let type_name = legate_api::any::type_name(&any.type_url);
    let decode_error = |e: prost::DecodeError| {
        vec![ConfigError::new(
            "",
            format!("unable to decode {type_name}: {e}"),
        )]
    };
    match type_name {
        FILE_ACCESS_LOG => {
            let config = FileAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            file_output(&config)
        }
        STDOUT_ACCESS_LOG => {
            let StdoutAccessLog { access_log_format } =
                StdoutAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            let format = match access_log_format {
                Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => log_format(&f)?,
                None => SubstitutionFormat::Text(Formatter::envoy_default()),
            };
            Ok((format, Destination::Stdout))
        }
        STDERR_ACCESS_LOG => {
            let StderrAccessLog { access_log_format } =
                StderrAccessLog::decode(any.value.as_slice()).map_err(decode_error)?;
            let format = match access_log_format {
                Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => log_format(&f)?,
                None => SubstitutionFormat::Text(Formatter::envoy_default()),
            };
            Ok((format, Destination::Stderr))
        }
        "" => Err(vec![ConfigError::new("", "type_url is empty")]),
        other => Err(vec![ConfigError::new(
            "",
            legate_api::any::unknown_type(other),
        )]),
    }
}

fn file_output(config: &FileAccessLog) -> Compiled<(SubstitutionFormat, Destination)> {
    let FileAccessLog {
        path,
        access_log_format,
    } = config;
    let err = |field: &str, message: String| Err(vec![ConfigError::new(field, message)]);
    if path.is_empty() {
        return err(
            "path",
            "value length must be at least 1 characters".to_owned(),
        );
    }
    #[allow(deprecated)] // `format`, `json_format`, `typed_json_format`: still read by Envoy.
    let format = match access_log_format {
        None => SubstitutionFormat::Text(Formatter::envoy_default()),
        Some(file_access_log::AccessLogFormat::Format(text)) if text.is_empty() => {
            SubstitutionFormat::Text(Formatter::envoy_default())
        }
        Some(file_access_log::AccessLogFormat::Format(text)) => match Formatter::parse(text) {
            Ok(f) => SubstitutionFormat::Text(f),
            Err(e) => return err("format", e),
        },
        Some(file_access_log::AccessLogFormat::JsonFormat(json)) => SubstitutionFormat::Json(
            JsonFormatter::compile(json, false).map_err(|e| within(e, "json_format"))?,
        ),
        Some(file_access_log::AccessLogFormat::TypedJsonFormat(json)) => SubstitutionFormat::Json(
            JsonFormatter::compile(json, false).map_err(|e| within(e, "typed_json_format"))?,
        ),
        Some(file_access_log::AccessLogFormat::LogFormat(f)) => log_format(f)?,
    };
    Ok((format, Destination::File(PathBuf::from(path))))
}

/// `log_format`; its `content_type` has no meaning for a log and is ignored, as in Envoy.
fn log_format(proto: &SubstitutionFormatString) -> Compiled<SubstitutionFormat> {
    FormatString::compile(proto)
        .map(|f| f.format)
        .map_err(|e| within(e, "log_format"))
}

#[cfg(test)]
mod tests;
