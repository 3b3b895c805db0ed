//! `legate`: the command-line entry point. Parses Envoy's flags, loads and compiles the
//! bootstrap, and runs the mode asked for.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use legate_api::ConfigError;
use legate_api::bootstrap::{self, BootstrapSource};

use crate::cli::{Mode, Options};
use legate::config::{Config, NodeOverrides};
use legate::server::ServeOptions;
use legate::{logging, supported};
use legate_api::bootstrap::LoadedBootstrap;

/// The allocator's options, set before Rust's runtime first allocates (see `configure`), and
/// before mimalloc's own constructor reads them: a constructor of priority 101 runs before
/// those of the default priority.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = legate::alloc::configure;

/// The configuration served when neither `-c` nor `--config-yaml` is given.
const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// The Envoy release whose API and behaviour Legate follows.
const ENVOY_COMPAT: &str = "1.40";

fn main() -> ExitCode {
    // One crypto provider in the process (DESIGN.md §5): aws-lc-rs, installed before any TLS
    // context is built.
    legate_core::tls::install_default_provider();
    let options = Options::parse();
    if options.version {
        println!(
            "legate version: {} (Envoy {ENVOY_COMPAT} compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if options.print_supported {
        print!("{}", supported::markdown());
        return ExitCode::SUCCESS;
    }
    let filter = match logging::filter(&options.log_level, options.component_log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(filter, &options.log_format, options.log_path.as_deref()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    if options.concurrency == Some(0) {
        eprintln!("error: --concurrency must be at least 1");
        return ExitCode::FAILURE;
    }

    let (name, config, loaded) = match load(&options) {
        Ok(loaded) => loaded,
        Err((name, errors)) => {
            eprintln!("error initializing configuration '{name}':");
            for e in &errors {
                eprintln!("  {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match options.mode {
        Mode::Validate => {
            println!("configuration '{name}' OK");
            ExitCode::SUCCESS
        }
        Mode::InitOnly => {
            tracing::info!("configuration '{name}' initialised; exiting (--mode init_only)");
            ExitCode::SUCCESS
        }
        Mode::Serve => serve(config, loaded, &options),
    }
}

/// Loads the bootstrap named by the options and compiles it. On failure, returns the name of
/// the configuration and every error found.
fn load(
    options: &Options,
) -> Result<(String, Config, LoadedBootstrap), (String, Vec<ConfigError>)> {
    let support = supported::support();
    let (name, source, overlay) = match (&options.config_path, &options.config_yaml) {
        (Some(path), overlay) => (
            path.display().to_string(),
            BootstrapSource::File(path),
            overlay.as_deref(),
        ),
        (None, Some(yaml)) => (
            "--config-yaml".to_owned(),
            BootstrapSource::Yaml(yaml),
            None,
        ),
        (None, None) => (
            "<embedded default>".to_owned(),
            BootstrapSource::Yaml(DEFAULT_CONFIG),
            None,
        ),
    };
    let bootstrap = bootstrap::load(source, overlay, support).map_err(|e| (name.clone(), e))?;
    let overrides = NodeOverrides {
        service_node: options.service_node.clone(),
        service_cluster: options.service_cluster.clone(),
        service_zone: options.service_zone.clone(),
    };
    let config = Config::compile(&bootstrap, &overrides).map_err(|e| (name.clone(), e))?;
    Ok((name, config, bootstrap))
}

fn serve(config: Config, loaded: LoadedBootstrap, options: &Options) -> ExitCode {
    let concurrency = options
        .concurrency
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let info = legate_admin::ServerInfo {
        version: format!(
            "legate/{}/Envoy-{ENVOY_COMPAT}-compatible/RELEASE",
            env!("CARGO_PKG_VERSION")
        ),
        hot_restart_version: "disabled".to_owned(),
        started: std::time::Instant::now(),
        command_line_options: command_line_options(options, concurrency),
        node: config.node.clone(),
    };
    let dump = legate_admin::ConfigDumpSource {
        bootstrap: loaded.bootstrap,
        listeners: loaded.listeners,
        clusters: loaded.clusters,
        loaded_at: Some(std::time::SystemTime::now()),
        ..Default::default()
    };
    let serve_options = ServeOptions {
        concurrency,
        drain_time: std::time::Duration::from_secs(options.drain_time_s),
        info,
    };
    tracing::info!(
        "starting Legate {} with {concurrency} worker(s)",
        env!("CARGO_PKG_VERSION")
    );
    // SIGHUP re-reads the bootstrap file (with the same `--config-yaml` overlay and flags).
    let reload: Option<legate::server::control::Reload> =
        options.config_path.is_some().then(|| {
            let options = options.clone();
            Box::new(move || {
                load(&options)
                    .map(|(_, config, _)| config)
                    .map_err(|(name, errors)| {
                        let errors: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
                        format!("configuration '{name}':\n{}", errors.join("\n"))
                    })
            }) as legate::server::control::Reload
        });
    match legate::server::run(config, dump, serve_options, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The options as `/server_info` reports them (`envoy.admin.v3.CommandLineOptions`).
fn command_line_options(
    o: &Options,
    concurrency: usize,
) -> legate_api::pb::envoy::admin::v3::CommandLineOptions {
    use legate_api::pb::google::protobuf::Duration;
    let seconds = |s: u64| {
        Some(Duration {
            seconds: s as i64,
            nanos: 0,
        })
    };
    legate_api::pb::envoy::admin::v3::CommandLineOptions {
        base_id: o.base_id.into(),
        concurrency: concurrency as u32,
        config_path: o
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        config_yaml: o.config_yaml.clone().unwrap_or_default(),
        log_level: o.log_level.clone(),
        component_log_level: o.component_log_level.clone().unwrap_or_default(),
        log_format: o.log_format.clone(),
        log_path: o
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        service_cluster: o.service_cluster.clone().unwrap_or_default(),
        service_node: o.service_node.clone().unwrap_or_default(),
        service_zone: o.service_zone.clone().unwrap_or_default(),
        drain_time: seconds(o.drain_time_s),
        parent_shutdown_time: seconds(o.parent_shutdown_time_s),
        restart_epoch: o.restart_epoch,
        file_flush_interval: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}
