//! `legate`: the command-line entry point. Parses Envoy's flags, loads and compiles the
//! bootstrap, and runs the mode asked for.

mod cli;
mod logging;

use std::process::ExitCode;

use clap::Parser;
use legate_api::ConfigError;
use legate_api::bootstrap::{self, BootstrapSource};

use crate::cli::{Mode, Options};
use legate::config::{Config, NetworkFilter, NodeOverrides};
use legate::supported;

/// The configuration served when neither `-c` nor `--config-yaml` is given.
const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// The Envoy release whose API and behaviour Legate follows.
const ENVOY_COMPAT: &str = "1.40";

fn main() -> ExitCode {
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

    let (name, config) = match load(&options) {
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
        Mode::Serve => serve(&config),
    }
}

/// Loads the bootstrap named by the options and compiles it. On failure, returns the name of
/// the configuration and every error found.
fn load(options: &Options) -> Result<(String, Config), (String, Vec<ConfigError>)> {
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
    Ok((name, config))
}

fn serve(config: &Config) -> ExitCode {
    for l in &config.listeners {
        let NetworkFilter::HttpConnectionManager(hcm) = &l.filter_chains[0].filters[0];
        tracing::info!(
            "listener '{}' configured on {} (http, stat_prefix {})",
            l.name,
            l.address,
            hcm.stat_prefix
        );
    }
    if let Some(addr) = config.admin.as_ref().and_then(|a| a.address) {
        tracing::info!("admin address configured: {addr}");
    }
    tracing::error!(
        "the configuration is valid, but serving traffic is not implemented yet; \
         use --mode validate to check configurations"
    );
    ExitCode::FAILURE
}
