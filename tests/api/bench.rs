//! `finmatch bench` against the test server: each scenario runs for about a second, and what the
//! tool counts as done is what PostgreSQL holds. Nothing here asserts on speed.

use finmatch::bench::{self, Outcome, Report};

use crate::helpers::TestApp;

/// Rows the tool's counts are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rows {
    enterprises: i64,
    needs: i64,
    approved: i64,
    declined: i64,
    acknowledged: i64,
}

async fn rows(app: &TestApp) -> Rows {
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM enterprises), (SELECT count(*) FROM needs), \
                 (SELECT count(*) FROM referrals WHERE status = 'APPROVED'), \
                 (SELECT count(*) FROM referrals WHERE status = 'DECLINED'), \
                 (SELECT count(*) FROM audit_log WHERE rpc LIKE '%/AcknowledgeReferral')",
            &[],
        )
        .await
        .unwrap();
    Rows {
        enterprises: row.get(0),
        needs: row.get(1),
        approved: row.get(2),
        declined: row.get(3),
        acknowledged: row.get(4),
    }
}

async fn latest_cursor(app: &TestApp) -> i64 {
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Streams resume from the delivery cursor the relay assigns; wait until it has assigned one
    // to every event so far (bounded: the relay probes every second even without a NOTIFY).
    for _ in 0..200 {
        let pending: i64 = db
            .query_one(
                "SELECT count(*) FROM referral_events WHERE delivery_cursor IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    db.query_one(
        "SELECT coalesce(max(delivery_cursor), 0) FROM referral_events",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

struct Bench<'a> {
    app: &'a TestApp,
    server: String,
    state: String,
}

impl Bench<'_> {
    /// Runs `bench <words> --server … --token … --state …` for a second at 4 in flight.
    async fn run(&self, words: &[&str]) -> Report {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(words);
        argv.extend_from_slice(&[
            "--server",
            &self.server,
            "--token",
            &self.app.operator,
            "--state",
            &self.state,
            "--duration",
            "1s",
            // No warm-up: a fast server finishes a small --max-calls within any warm-up, and the
            // test checks counts, not speed.
            "--warmup",
            "0s",
            "--concurrency",
            "4",
        ]);
        let command = bench::parse(argv).expect("the arguments parse");
        match bench::execute(command).await.expect("the scenario runs") {
            Outcome::Ran(report) => *report,
            Outcome::Seeded(_) => unreachable!("a scenario, not the seed"),
        }
    }

    /// Runs a scenario and checks its counts against the rows it added.
    async fn checked(&self, words: &[&str]) -> Report {
        let before = rows(self.app).await;
        let report = self.run(words).await;
        let after = rows(self.app).await;
        let total = |op: &str| report.ops.get(op).map_or(0, |o| o.total_successes as i64);
        assert_eq!(
            after.enterprises - before.enterprises,
            report.setup.enterprises as i64,
            "{words:?}: enterprises"
        );
        assert_eq!(
            after.needs - before.needs,
            report.setup.needs as i64 + total("SubmitNeed"),
            "{words:?}: needs"
        );
        assert_eq!(
            after.approved - before.approved,
            total("DecideReferral(approve)"),
            "{words:?}: approvals"
        );
        assert_eq!(
            after.declined - before.declined,
            total("DecideReferral(decline)"),
            "{words:?}: declines"
        );
        assert_eq!(
            after.acknowledged - before.acknowledged,
            total("AcknowledgeReferral"),
            "{words:?}: acknowledgements"
        );
        assert!(report.measured_secs > 0.0, "{words:?}: {report:?}");
        report
    }
}

fn successes(report: &Report, op: &str) -> u64 {
    report.ops.get(op).map_or(0, |o| o.total_successes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_scenario_runs_and_its_counts_match_the_rows_in_postgresql() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("finmatch-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let bench = Bench {
        app: &app,
        server: format!("http://{}", app.addr),
        state: state.to_string_lossy().into_owned(),
    };

    let seeded = bench::execute(
        bench::parse([
            "bench",
            "seed",
            "--server",
            &bench.server,
            "--token",
            &app.operator,
            "--state",
            &bench.state,
            "--lenders",
            "10",
            "--products",
            "80",
        ])
        .unwrap(),
    )
    .await
    .expect("the seed runs");
    let Outcome::Seeded(seeded) = seeded else {
        unreachable!()
    };
    assert_eq!((seeded.lenders.len(), seeded.products.len()), (10, 80));
    assert!(seeded.lenders.iter().all(|l| l.token.starts_with("fmk_")));
    let again = bench::execute(
        bench::parse([
            "bench",
            "seed",
            "--server",
            &bench.server,
            "--token",
            &app.operator,
            "--state",
            &dir.join("again.json").to_string_lossy(),
        ])
        .unwrap(),
    )
    .await;
    assert!(
        again.is_err(),
        "a second seed on the same database is refused"
    );

    let noop = bench.checked(&["noop"]).await;
    assert!(successes(&noop, "Health/Check") > 0);
    assert!(noop.errors.is_empty(), "{:?}", noop.errors);

    let submit = bench.checked(&["submit", "--max-calls", "30"]).await;
    eprintln!("{}", submit.table());
    assert_eq!(submit.setup.enterprises, 30, "one new enterprise per call");
    assert!(successes(&submit, "SubmitNeed") > 0, "{submit:?}");
    assert!(submit.errors.is_empty(), "{:?}", submit.errors);

    let get = bench.checked(&["get", "--pool", "5"]).await;
    eprintln!("{}", get.table());
    assert_eq!(get.setup.needs, 5);
    assert!(
        successes(&get, "GetNeed") > 0 && get.errors.is_empty(),
        "{get:?}"
    );

    let preview = bench.checked(&["preview", "--pool", "5"]).await;
    assert!(successes(&preview, "PreviewMatches") > 0 && preview.errors.is_empty());

    let decide = bench
        .checked(&["decide", "--max-calls", "12", "--decline-percent", "50"])
        .await;
    eprintln!("{}", decide.table());
    assert!(successes(&decide, "AcknowledgeReferral") > 0, "{decide:?}");
    assert!(
        successes(&decide, "DecideReferral(approve)")
            + successes(&decide, "DecideReferral(decline)")
            > 0,
        "{decide:?}"
    );

    let mixed = bench
        .checked(&["mixed", "--max-calls", "40", "--pool", "5"])
        .await;
    eprintln!("{}", mixed.table());
    assert!(mixed.ops.len() >= 3, "a mix: {:?}", mixed.ops.keys());

    let cursor = latest_cursor(&app).await.to_string();
    let json = dir.join("watch.json");
    let watch = bench
        .checked(&[
            "watch",
            "--streams",
            "20",
            "--after-cursor",
            &cursor,
            "--max-calls",
            "20",
            "--json",
            &json.to_string_lossy(),
        ])
        .await;
    eprintln!("{}", watch.table());
    let delivery = watch.watch.as_ref().expect("a watch report");
    assert_eq!(delivery.opened, 20);
    assert!(delivery.expected_deliveries > 0);
    assert_eq!(
        delivery.delivered, delivery.expected_deliveries,
        "every referral the run created reached every stream of its lender"
    );
    assert_eq!(
        delivery.backlog_events, 0,
        "no history replayed after the latest cursor"
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(written["scenario"], "watch");
    assert_eq!(
        written["ops"]["SubmitNeed"]["total_successes"].as_u64(),
        Some(successes(&watch, "SubmitNeed"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
