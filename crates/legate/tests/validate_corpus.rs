//! `legate --mode validate` over the configuration corpus in `tests/corpus/`, checked against
//! the expectations in `tests/corpus/expect.txt` and, differentially, against real Envoy.
//!
//! Envoy is found at `$ENVOY` or in the project's `.venv` (the README's test command installs
//! it there). Without it the differential half is skipped with a note, unless
//! `LEGATE_REQUIRE_ENVOY=1` (set by the test command), which makes its absence a failure.

mod common;

use std::path::{Path, PathBuf};

use common::{ScratchDir, envoy, legate, repo_root};

#[derive(Debug)]
enum Expect {
    Ok,
    /// Both refuse; Legate's output contains this.
    Error(String),
    /// Envoy accepts, Legate refuses as not implemented; Legate's output contains this.
    Unsupported(String),
}

fn corpus() -> Vec<(PathBuf, Expect)> {
    let dir = repo_root().join("tests/corpus");
    let text = std::fs::read_to_string(dir.join("expect.txt")).expect("tests/corpus/expect.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let file = dir.join(parts.next().unwrap());
            let expect = match (parts.next(), parts.next()) {
                (Some("ok"), _) => Expect::Ok,
                (Some("error"), Some(s)) => Expect::Error(s.to_owned()),
                (Some("unsupported"), Some(s)) => Expect::Unsupported(s.to_owned()),
                other => panic!("bad expect.txt line {line:?}: {other:?}"),
            };
            (file, expect)
        })
        .collect()
}

#[test]
fn corpus_matches_expectations_and_envoy() {
    let legate = legate();
    let envoy = envoy();
    let cases = corpus();
    assert!(
        cases.len() >= 60,
        "the corpus has only {} files",
        cases.len()
    );
    let mut failures = Vec::new();
    for (file, expect) in &cases {
        let name = file
            .strip_prefix(repo_root())
            .unwrap_or(file)
            .display()
            .to_string();
        let ours = legate.validate(file);
        let problem = match expect {
            Expect::Ok if !ours.accepted => Some(format!("Legate refused it:\n{}", ours.output)),
            Expect::Error(s) | Expect::Unsupported(s) if ours.accepted => {
                Some(format!("Legate accepted it; expected `{s}`"))
            }
            Expect::Error(s) | Expect::Unsupported(s) if !ours.output.contains(s.as_str()) => {
                Some(format!("Legate's error lacks `{s}`:\n{}", ours.output))
            }
            _ => None,
        };
        if let Some(p) = problem {
            failures.push(format!("{name}: {p}"));
            continue;
        }
        if let Some(envoy) = &envoy {
            let theirs = envoy.validate(file);
            let envoy_should_accept = !matches!(expect, Expect::Error(_));
            if theirs.accepted != envoy_should_accept {
                failures.push(format!(
                    "{name}: Envoy {} it, Legate's expectation is {expect:?}\n{}",
                    if theirs.accepted {
                        "accepted"
                    } else {
                        "refused"
                    },
                    theirs.output.lines().last().unwrap_or("")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "{} corpus files checked{}",
        cases.len(),
        if envoy.is_some() {
            " against Envoy"
        } else {
            ""
        }
    );
}

/// Hostile and degenerate inputs, generated here rather than committed: both proxies must
/// refuse them (or accept them) alike, and Legate must answer with an error, never a crash.
#[test]
fn hostile_inputs_are_refused_like_envoy() {
    let dir = ScratchDir::new("hostile");
    // (file, Legate accepts, Envoy accepts)
    let mut cases: Vec<(PathBuf, bool, bool)> = Vec::new();
    let mut write_differing = |name: &str, bytes: &[u8], legate: bool, envoy: bool| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        cases.push((path, legate, envoy));
    };
    // Intentional difference: Envoy 1.40 reports this pseudo-random blob as a valid binary
    // bootstrap; it is not a protobuf encoding (field number 0), and Legate says so.
    write_differing(
        "blob.pb",
        &(0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
        false,
        true,
    );
    let mut write =
        |name: &str, bytes: &[u8], accepted: bool| write_differing(name, bytes, accepted, accepted);
    write("empty.yaml", b"", false);
    write("comments_only.yaml", b"# nothing here\n", false);
    write(
        "blob.yaml",
        &(0..4096u32)
            .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
            .collect::<Vec<_>>(),
        false,
    );
    write("unknown_extension.txt", b"static_resources: {}\n", false);
    write(
        "nested_lists.yaml",
        format!("node: {}{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
        false,
    );
    let mut nested_map = String::from("node:\n  metadata:\n");
    for depth in 0..300 {
        nested_map.push_str(&" ".repeat(4 + 2 * depth));
        nested_map.push_str("a:\n");
    }
    write("nested_maps.yaml", nested_map.as_bytes(), false);
    write(
        "nested.json",
        format!(
            "{{\"node\": {{\"metadata\": {}1{}}}}}",
            "{\"a\": ".repeat(5_000),
            "}".repeat(5_000)
        )
        .as_bytes(),
        false,
    );
    write(
        "nested.pb_text",
        format!(
            "node {{ metadata {{ {} }} }}",
            "fields { key: \"a\" value { struct_value { ".repeat(2_000)
        )
        .as_bytes(),
        false,
    );
    // 50 MB: a valid bootstrap whose node id is one huge string.
    let mut big = b"node:\n  id: \"".to_vec();
    big.resize(big.len() + 50 * 1024 * 1024, b'x');
    big.extend_from_slice(b"\"\n");
    write("huge.yaml", &big, true);
    // 50 MB of garbage.
    write("huge_garbage.yaml", &vec![b'{'; 50 * 1024 * 1024], false);

    let legate = legate();
    let envoy = envoy();
    let mut failures = Vec::new();
    for (file, accepted, envoy_accepts) in &cases {
        let name = file.file_name().unwrap().to_string_lossy();
        let ours = legate.validate(file);
        if ours.crashed {
            failures.push(format!("{name}: Legate crashed:\n{}", ours.output));
        } else if ours.accepted != *accepted {
            failures.push(format!(
                "{name}: Legate {}:\n{}",
                if ours.accepted {
                    "accepted it"
                } else {
                    "refused it"
                },
                ours.output
            ));
        }
        if let Some(envoy) = &envoy {
            let theirs = envoy.validate(file);
            if theirs.accepted != *envoy_accepts {
                failures.push(format!(
                    "{name}: Envoy {} it",
                    if theirs.accepted {
                        "accepted"
                    } else {
                        "refused"
                    }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = legate().validate(Path::new("/nonexistent/legate.yaml"));
    assert!(!out.accepted && !out.crashed);
    assert!(
        out.output
            .contains("unable to read '/nonexistent/legate.yaml'"),
        "{}",
        out.output
    );
}

/// The configs in `examples/` run as they are in Envoy; in Legate they validate, or say which
/// feature is not implemented yet.
#[test]
fn examples_validate_or_name_what_is_missing() {
    let root = repo_root();
    let examples: [(&str, Option<&str>); 5] = [
        ("examples/front-proxy.yaml", None),
        ("examples/dynamic-config-fs/bootstrap.yaml", None),
        ("examples/tcp-proxy.yaml", None),
        ("examples/tls-edge.yaml", None),
        ("crates/legate/src/default.yaml", None),
    ];
    let legate = legate();
    let envoy = envoy();
    // Certificate paths in the examples are relative to the repository root.
    std::env::set_current_dir(&root).unwrap();
    for (file, missing) in examples {
        let path = root.join(file);
        let ours = legate.validate(&path);
        match missing {
            None => assert!(ours.accepted, "{file}: {}", ours.output),
            Some(feature) => assert!(
                !ours.accepted && ours.output.contains(feature),
                "{file}: {}",
                ours.output
            ),
        }
        if let Some(envoy) = &envoy {
            let theirs = envoy.validate(&path);
            assert!(
                theirs.accepted,
                "{file}: Envoy refused it: {}",
                theirs.output
            );
        }
    }
}
