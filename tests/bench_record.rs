//! The README's benchmark tables agree with the runs recorded in `docs/bench/` (the `--out` files of
//! `examples/bench`): they are rendered by the benchmark's own code (`--render-readme docs/bench`), so a figure
//! edited by hand, or a run recorded without regenerating the README, fails here. No control plane needed.

#[allow(dead_code)]
#[path = "../examples/bench/table.rs"]
mod table;

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn runs() -> Vec<serde_json::Value> {
    let runs = table::load_runs(&root().join("docs/bench")).expect("docs/bench/*.json parse");
    assert!(!runs.is_empty(), "no recorded run in docs/bench");
    runs
}

#[test]
fn the_readme_tables_are_the_recorded_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let current = table::current_section(&readme).expect("the README has the bench-table markers");
    let expected = table::section(&runs(), table::PEER_N);
    assert!(
        current == expected,
        "the README's benchmark tables differ from docs/bench/*.json; regenerate them with \
         `cargo run --release --example bench -- --render-readme docs/bench`\n--- README ---\n{current}\n--- files ---\n{expected}"
    );
}

#[test]
fn every_recorded_run_says_where_it_ran() {
    for r in runs() {
        let n = r["keys"].as_u64().expect("keys");
        let m = &r["machine"];
        for k in ["nproc", "cpu", "memory_mib", "loadavg_start", "loadavg_end"] {
            assert!(!m[k].is_null(), "run at N = {n}: machine.{k} missing");
        }
        let commit = r["commit"].as_str().expect("commit");
        assert!(commit.len() >= 40 && !commit.ends_with("-dirty"), "run at N = {n} from an uncommitted tree: {commit}");
    }
}

#[test]
fn the_readme_compares_keyward_with_its_peer_at_the_peer_n() {
    let runs = runs();
    let run = runs.iter().find(|r| r["keys"] == table::PEER_N).expect("a run at the README's N");
    for k in ["cold_start_per_s", "peer_cold_start_per_s", "peer_rss_mib", "peer_writes_per_key", "vs_peer_cold_start"]
    {
        assert!(run[k].is_number(), "the run at N = {} has no {k}", table::PEER_N);
    }
}

#[test]
fn numbers_are_grouped_by_thousands() {
    assert_eq!(table::num(Some(30000.0), 0), "30,000");
    assert_eq!(table::num(Some(1234.567), 2), "1,234.57");
    assert_eq!(table::num(Some(999.0), 0), "999");
    assert_eq!(table::num(Some(-1500.0), 0), "-1,500");
    assert_eq!(table::num(None, 0), "–");
}
