//! The admin server's compiled configuration ([`AdminConfig`]), from
//! `envoy.config.bootstrap.v3.Admin`.

use std::net::SocketAddr;

use legate_api::pb::envoy::config::accesslog::v3::AccessLog;
use legate_api::pb::envoy::config::bootstrap::v3::Admin;
use legate_core::address::{Pipe, pipe, socket_addr};
use legate_core::{Compiled, Errors};

/// Where the admin server listens: a TCP address, or a unix domain socket (`pipe`).
#[derive(Debug)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    Pipe(Pipe),
}

#[derive(Debug)]
pub struct AdminConfig {
    /// Where the admin server listens; Envoy runs no admin server without an address.
    pub address: Option<AdminAddress>,
    pub access_log: Vec<AccessLog>,
    /// The deprecated `access_log_path`, still honoured by Envoy.
    pub access_log_path: Option<String>,
}

impl AdminConfig {
    #[allow(deprecated)]
    pub fn compile(admin: &Admin) -> Compiled<Self> {
        let mut errors = Errors::default();
        let address = admin.address.as_ref().and_then(|a| {
            let address = match pipe(a) {
                Some(p) => p.map(AdminAddress::Pipe),
                None => socket_addr(a).map(AdminAddress::Tcp),
            };
            errors.take("address", address)
        });
        legate_core::extension::check_access_logs(&admin.access_log, &mut errors);
        errors.finish(|| AdminConfig {
            address,
            access_log: admin.access_log.clone(),
            access_log_path: (!admin.access_log_path.is_empty())
                .then(|| admin.access_log_path.clone()),
        })
    }
}
