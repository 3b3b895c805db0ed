use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use legate_api::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, StatusCodeFilter, access_log_filter::FilterSpecifier,
    comparison_filter::Op,
};
use legate_api::pb::envoy::config::core::v3::{
    DataSource, RuntimeUInt32, data_source, substitution_format_string,
};
use legate_api::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use legate_api::pb::google::protobuf::{Struct, Value, value::Kind};

use super::*;
use crate::format::tests::sample_info;

/// A file path in a fresh directory that is removed when the value is dropped.
struct TempLog(PathBuf);

impl std::ops::Deref for TempLog {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_path(name: &str) -> TempLog {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "legate-access-log-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempLog(dir.join(name))
}

fn any<M: Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn file_log(path: &Path, format: Option<file_access_log::AccessLogFormat>) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(any(&FileAccessLog {
            path: path.display().to_string(),
            access_log_format: format,
        }))),
    }
}

fn text(format: &str) -> Option<file_access_log::AccessLogFormat> {
    Some(file_access_log::AccessLogFormat::LogFormat(
        SubstitutionFormatString {
            format: Some(substitution_format_string::Format::TextFormatSource(
                DataSource {
                    specifier: Some(data_source::Specifier::InlineString(format.into())),
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
    ))
}

/// Waits for the writer thread to flush `expected` to `path`.
fn wait_for(path: &Path, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if content == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {content:?}, expected {expected:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn file_logger_writes_the_default_format() {
    AccessLogFiles::set_flush_interval(Duration::from_millis(20));
    let path = temp_path("access.log");
    let logger = AccessLogger::compile(&file_log(&path, None)).unwrap();
    logger.log(&sample_info(), &Snapshot::default());
    wait_for(
        &path,
        "[2016-04-15T20:17:00.310Z] \"POST /api/v1/locations HTTP/2\" 204 - 154 0 226 100 \
         \"10.0.35.28\" \"nsq2http\" \"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2\" \"locations\" \
         \"10.0.2.1:80\"\n",
    );
    assert_eq!(logger.destination().dropped_lines(), 0);
    assert_eq!(logger.destination().written_lines(), 1);
}

#[test]
fn reopen_all_starts_a_new_file_after_rotation() {
    AccessLogFiles::set_flush_interval(Duration::from_millis(20));
    let path = temp_path("rotated.log");
    let logger = AccessLogger::compile(&file_log(&path, text("%RESPONSE_CODE% one\n"))).unwrap();
    logger.log(&sample_info(), &Snapshot::default());
    wait_for(&path, "204 one\n");

    let rotated = path.with_extension("log.1");
    std::fs::rename(&*path, &rotated).unwrap();
    reopen_all();
    // The reopen is asynchronous: wait until the writer has created the new file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no new file after reopen");
        std::thread::sleep(Duration::from_millis(10));
    }
    logger.log(&sample_info(), &Snapshot::default());
    wait_for(&path, "204 one\n");
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "204 one\n");
}

#[test]
fn loggers_on_one_path_share_a_writer() {
    let path = temp_path("shared.log");
    let a = AccessLogger::compile(&file_log(&path, text("a\n"))).unwrap();
    let b = AccessLogger::compile(&file_log(&path, text("b\n"))).unwrap();
    assert!(std::ptr::eq(a.destination(), b.destination()));
    assert_eq!(
        a.destination().destination(),
        &Destination::File(path.to_path_buf())
    );
}

#[test]
fn filters_decide_what_is_logged() {
    AccessLogFiles::set_flush_interval(Duration::from_millis(20));
    let path = temp_path("errors.log");
    let mut config = file_log(&path, text("%RESPONSE_CODE%\n"));
    config.filter = Some(AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: Op::Ge as i32,
                value: Some(RuntimeUInt32 {
                    default_value: 500,
                    runtime_key: String::new(),
                }),
            }),
        })),
    });
    let logger = AccessLogger::compile(&config).unwrap();
    let mut info = sample_info();
    logger.log(&info, &Snapshot::default());
    info.response_code = Some(503);
    logger.log(&info, &Snapshot::default());
    wait_for(&path, "503\n");
}

#[test]
fn json_and_deprecated_formats() {
    AccessLogFiles::set_flush_interval(Duration::from_millis(20));
    let path = temp_path("json.log");
    let fields = [("code", "%RESPONSE_CODE%"), ("route", "%ROUTE_NAME%")]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(v.into())),
                },
            )
        })
        .collect();
    #[allow(deprecated)]
    let format = Some(file_access_log::AccessLogFormat::JsonFormat(Struct {
        fields,
    }));
    let logger = AccessLogger::compile(&file_log(&path, format)).unwrap();
    logger.log(&sample_info(), &Snapshot::default());
    wait_for(&path, "{\"code\":204,\"route\":\"api\"}\n");

    #[allow(deprecated)]
    let bad = Some(file_access_log::AccessLogFormat::Format("%NOPE%".into()));
    let errors = AccessLogger::compile(&file_log(&temp_path("x.log"), bad)).unwrap_err();
    assert_eq!(errors[0].path, "typed_config.format");
    assert_eq!(errors[0].message, "Not supported field in StreamInfo: NOPE");

    let errors =
        AccessLogger::compile(&file_log(&temp_path("y.log"), text("%REQ(A?B?C)%"))).unwrap_err();
    assert_eq!(
        errors[0].path,
        "typed_config.log_format.text_format_source.inline_string"
    );
}

#[test]
fn unusable_configs_are_refused_with_their_path() {
    let errors = AccessLogger::compile(&file_log(Path::new("/nonexistent-dir/legate/a.log"), None))
        .unwrap_err();
    assert_eq!(errors[0].path, "typed_config.path");
    assert!(
        errors[0]
            .message
            .starts_with("unable to open file '/nonexistent-dir/legate/a.log'"),
        "{}",
        errors[0].message
    );

    let grpc = AccessLog {
        name: "envoy.access_loggers.http_grpc".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
                    .into(),
            value: vec![],
        })),
    };
    let errors = AccessLogger::compile(&grpc).unwrap_err();
    assert_eq!(errors[0].path, "typed_config");

    let unnamed = AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        filter: None,
        config_type: None,
    };
    assert!(
        AccessLogger::compile(&unnamed).unwrap_err()[0]
            .message
            .starts_with("Didn't find a registered implementation")
    );
}

#[test]
fn stdout_logger_compiles_with_the_default_format() {
    let config = AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(any(&StdoutAccessLog {
            access_log_format: None,
        }))),
    };
    let logger = AccessLogger::compile(&config).unwrap();
    assert_eq!(logger.destination().destination(), &Destination::Stdout);
}
