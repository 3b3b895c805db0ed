//! Legate's own logs, configured as Envoy's: `-l LEVEL`, `--component-log-level`,
//! `--log-format` with spdlog's flags, `--log-path`.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Envoy's logger names and the Legate crates that log under them.
const COMPONENTS: &[(&str, &str)] = &[
    ("admin", "legate_admin"),
    ("config", "legate_api"),
    ("connection", "legate_net"),
    ("conn_handler", "legate_net"),
    ("filter", "legate_net"),
    ("http", "legate_http"),
    ("http2", "legate_http"),
    ("router", "legate_http"),
    ("upstream", "legate_upstream"),
    ("pool", "legate_upstream"),
    ("hc", "legate_upstream"),
    ("client", "legate_upstream"),
    ("dns", "legate_upstream"),
    ("main", "legate"),
    ("runtime", "legate"),
    ("stats", "legate"),
    ("init", "legate"),
    ("misc", "legate"),
];

/// An Envoy level name as a tracing directive.
fn level(name: &str) -> Result<&'static str, String> {
    Ok(match name {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(format!("error: invalid log level specified '{name}'")),
    })
}

/// Each logger's Envoy level name, as `/logging` lists and changes them.
static LEVELS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// Swaps the installed filter (set by [`init`]).
type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();

fn levels() -> std::sync::MutexGuard<'static, Vec<(&'static str, String)>> {
    LEVELS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every Envoy logger name with its level, for `/logging`.
pub fn loggers() -> Vec<(String, String)> {
    levels()
        .iter()
        .map(|(n, l)| ((*n).to_owned(), l.clone()))
        .collect()
}

/// Sets one logger's level (`None`: all of them) and reinstalls the filter.
pub fn set_level(logger: Option<&str>, envoy_level: &str) -> Result<(), String> {
    level(envoy_level)?;
    let directives = {
        let mut levels = levels();
        for (name, lvl) in levels.iter_mut() {
            if logger.is_none_or(|l| l == *name) {
                *lvl = envoy_level.to_owned();
            }
        }
        directives(&levels)
    };
    let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
    match RELOAD.get() {
        Some(reload) => reload(filter),
        None => Ok(()),
    }
}

/// The tracing directives for per-logger levels. Several Envoy loggers share one crate; the
/// most verbose of them wins for that crate.
fn directives(levels: &[(&'static str, String)]) -> String {
    let rank = |l: &str| {
        ["off", "error", "warn", "info", "debug", "trace"]
            .iter()
            .position(|x| *x == l)
            .unwrap_or(3)
    };
    let mut by_target: Vec<(&str, &str)> = Vec::new();
    for (name, lvl) in levels {
        let Some((_, target)) = COMPONENTS.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let lvl = level(lvl).unwrap_or("info");
        match by_target.iter_mut().find(|(t, _)| t == target) {
            Some((_, existing)) if rank(lvl) > rank(existing) => *existing = lvl,
            Some(_) => {}
            None => by_target.push((target, lvl)),
        }
    }
    let default = levels
        .iter()
        .find(|(n, _)| *n == "main")
        .map_or("info", |(_, l)| level(l).unwrap_or("info"));
    let mut out: Vec<String> = vec![default.to_owned()];
    out.extend(by_target.iter().map(|(t, l)| format!("{t}={l}")));
    out.join(",")
}

/// Builds the tracing filter for `-l` and `--component-log-level`.
pub fn filter(log_level: &str, components: Option<&str>) -> Result<EnvFilter, String> {
    {
        let mut levels = levels();
        levels.clear();
        levels.extend(COMPONENTS.iter().map(|(n, _)| (*n, log_level.to_owned())));
    }
    let mut directives = vec![level(log_level)?.to_owned()];
    for item in components
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (component, lvl) = item.split_once(':').ok_or_else(|| {
            format!("error: component log level not correctly specified '{item}'")
        })?;
        let lvl = level(lvl)?;
        let (_, target) = COMPONENTS
            .iter()
            .find(|(name, _)| *name == component)
            .ok_or_else(|| format!("error: invalid component specified '{component}'"))?;
        directives.push(format!("{target}={lvl}"));
        if let Some(entry) = levels().iter_mut().find(|(n, _)| *n == component) {
            entry.1 = item
                .split_once(':')
                .map_or(String::new(), |(_, l)| l.to_owned());
        }
    }
    EnvFilter::try_new(directives.join(",")).map_err(|e| e.to_string())
}

/// Formats events with an spdlog pattern, as Envoy's `--log-format`.
pub struct SpdlogFormat {
    pattern: String,
}

impl SpdlogFormat {
    pub fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_owned(),
        }
    }
}

fn envoy_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// The Envoy component name for a tracing target (`legate_upstream::x` -> `upstream`).
fn component(target: &str) -> &'static str {
    let krate = target.split("::").next().unwrap_or(target);
    COMPONENTS
        .iter()
        .find(|(_, t)| *t == krate)
        .map_or("main", |(name, _)| name)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl<S, N> FormatEvent<S, N> for SpdlogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as i64;
        let (y, mo, d) = civil(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
        let mut out = String::with_capacity(128);
        let mut chars = self.pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('Y') => write!(out, "{y:04}")?,
                Some('m') => write!(out, "{mo:02}")?,
                Some('d') => write!(out, "{d:02}")?,
                Some('H') => write!(out, "{h:02}")?,
                Some('M') => write!(out, "{mi:02}")?,
                Some('S') => write!(out, "{s:02}")?,
                Some('T') => write!(out, "{h:02}:{mi:02}:{s:02}")?,
                Some('e') => write!(out, "{:03}", now.subsec_millis())?,
                Some('l') => out.push_str(envoy_level(event.metadata().level())),
                Some('n') => out.push_str(component(event.metadata().target())),
                Some('t') => write!(out, "{}", thread_id())?,
                Some('v') => {
                    writer.write_str(&out)?;
                    out.clear();
                    ctx.format_fields(writer.by_ref(), event)?;
                }
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        writer.write_str(&out)?;
        writeln!(writer)
    }
}

fn thread_id() -> u64 {
    // The kernel thread id, as Envoy's %t prints it.
    unsafe extern "C" {
        fn gettid() -> i32;
    }
    // SAFETY: gettid has no preconditions and cannot fail.
    u64::from(unsafe { gettid() } as u32)
}

/// Installs the global subscriber. Logs go to `log_path`, or stderr.
pub fn init(
    filter: EnvFilter,
    format: &str,
    log_path: Option<&std::path::Path>,
) -> Result<(), String> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(SpdlogFormat::new(format));
    match log_path {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("unable to open log file '{}': {e}", path.display()))?;
            let file = Arc::new(Mutex::new(file));
            let builder = builder
                .with_writer(move || LogFile(file.clone()))
                .with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.init();
        }
        None => {
            let builder = builder.with_writer(std::io::stderr).with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            builder.init();
        }
    }
    Ok(())
}

/// Appends to the log file; one lock per line, so lines from several threads never interleave.
struct LogFile(Arc<Mutex<std::fs::File>>);

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log file lock poisoned"))?
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_537), (2026, 3, 25));
    }

    #[test]
    fn levels_and_components() {
        assert!(filter("warning", Some("upstream:debug,config:trace")).is_ok());
        assert!(
            filter("loud", None)
                .unwrap_err()
                .contains("invalid log level")
        );
        assert!(
            filter("info", Some("nosuch:debug"))
                .unwrap_err()
                .contains("invalid component")
        );
    }
}
