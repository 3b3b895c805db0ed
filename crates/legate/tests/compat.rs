//! Differential tests of the HTTP data path: every case in `compat/cases.rs` (a configuration
//! fragment and a list of requests) runs through real Envoy and through Legate, both on the same
//! bootstrap and pointed at the same echo upstream, and the normalized observations must match:
//! status, response headers, body, the upstream's view of the request, the access-log line in
//! Envoy's default format, and the stat names that became non-zero. What is compared and how it
//! is normalized is documented in `compat/harness.rs`; every difference that is allowed is listed,
//! with its reason, in `compat/differences.rs` and `compat/DIFFERENCES.md`.
//!
//! Envoy comes from `$ENVOY` or the project's `.venv` (the README's test command installs it).
//! Without it the test is skipped with a note, unless `LEGATE_REQUIRE_ENVOY=1`.
//!
//! Knobs for working on a case: `COMPAT_ONLY=name1,name2` runs only those cases,
//! `COMPAT_DUMP=1` prints both sides' normalized observations, `COMPAT_VERBOSE=1` lists every
//! difference (documented ones too) with both values. Run with `--nocapture` to see the
//! pass/fail matrix on success.

// `common` and `e2e` both bring the scratch-directory helpers (one file, two modules).
#[allow(clippy::duplicate_mod)]
mod common;
mod e2e;

#[path = "compat/cases.rs"]
mod cases;
#[path = "compat/differences.rs"]
mod differences;
#[path = "compat/harness.rs"]
mod harness;

#[test]
fn envoy_and_legate_agree_on_the_http_data_path() {
    let Some(common::Validator::Envoy(envoy)) = common::envoy() else {
        return;
    };
    let all = cases::all();
    assert!(
        all.len() >= 30,
        "the issue asks for at least 30 configurations"
    );
    let mut names = std::collections::HashSet::new();
    for case in &all {
        assert!(names.insert(case.name), "two cases are named {}", case.name);
    }
    let only: Option<Vec<String>> = std::env::var("COMPAT_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let total = all.len();
    let selected: Vec<cases::Case> = all
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|n| n == c.name)))
        .collect();
    let complete = selected.len() == total;
    let report = harness::run(&envoy, &selected, differences::documented(), complete);
    eprintln!("{}", report.text);
    assert!(report.ok, "{}", report.failures);
}
