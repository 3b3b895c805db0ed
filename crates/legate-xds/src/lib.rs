//! Dynamic configuration sources. Today: the file form of xDS — a `DiscoveryResponse` file per
//! subscription, replaced atomically by rename and watched with inotify ([`watch`]), read and
//! checked by `legate_api::resources`. The gRPC xDS client will feed the same subscriptions.

pub mod watch;

pub use watch::FileWatcher;
