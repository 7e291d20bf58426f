//! The audit trail's hash chain, tampered with through SQL as someone with database access
//! would: a row edited, a row deleted, a row inserted with an old id. Each is named by
//! `finmatch audit verify`, which exits 1; the untouched log verifies, and exits 0.

use chrono::{TimeDelta, Utc};
use finmatch::proto as pb;
use finmatch::proto::enterprise_service_client::EnterpriseServiceClient;
use finmatch::service::audit::SEAL_SETTLE;

use crate::helpers::{TestApp, authed};

/// `finmatch audit verify` on the test database: its exit code and what it printed.
fn verify_cli(app: &TestApp, heads: &[String]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_finmatch"))
        .args(["audit", "verify"])
        .args(heads.iter().flat_map(|h| ["--head", h.as_str()]))
        .env("FINMATCH_DATABASE_URL", app.database_url())
        .env("RUST_LOG", "error")
        .output()
        .expect("run finmatch audit verify");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn problems(app: &TestApp) -> Vec<String> {
    app.app.verify_audit().await.unwrap().problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_names_a_row_edited_deleted_or_inserted_out_of_order() {
    // No background sweeps: the test seals itself, at the time it chooses.
    let app = TestApp::spawn_configured(finmatch::config::ServerArgs {
        sweep_interval_secs: 3600,
        ..Default::default()
    })
    .await;
    let mut enterprises = EnterpriseServiceClient::new(app.channel.clone());
    for n in 1..=5 {
        enterprises
            .create_enterprise(authed(
                pb::CreateEnterpriseRequest {
                    enterprise: Some(crate::helpers::enterprise(n)),
                },
                &app.operator,
            ))
            .await
            .unwrap();
    }
    let (db, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let ids: Vec<i64> = db
        .query("SELECT id FROM audit_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let last = *ids.last().unwrap();
    // The append-only trigger is the first line; whoever can drop it meets the chain. (Here it
    // is dropped first to age rows for the sealer, before anything is sealed.)
    db.batch_execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .await
        .unwrap();

    // Rows are sealed once settled, in id order: the chain stops at the first row that has not
    // settled, even when later ones have.
    assert_eq!(app.app.seal_audit(Utc::now()).await.unwrap(), 0);
    db.execute(
        "UPDATE audit_log SET created_at = created_at - interval '1 hour' WHERE id <> $1",
        &[&ids[1]],
    )
    .await
    .unwrap();
    assert_eq!(app.app.seal_audit(Utc::now()).await.unwrap(), 1);
    let later = Utc::now() + SEAL_SETTLE + TimeDelta::seconds(1);
    let sealed = app.app.seal_audit(later).await.unwrap() + 1;
    assert_eq!(sealed, ids.len());
    assert_eq!(app.app.seal_audit(later).await.unwrap(), 0, "each row once");
    let verdict = app.app.verify_audit().await.unwrap();
    assert_eq!(verdict.sealed as usize, sealed);
    assert!(verdict.problems.is_empty(), "{verdict:?}");
    let (code, said) = verify_cli(&app, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("audit log intact"), "{said}");
    // A head kept outside the database: the chain passes through it, and not through another.
    let (through, head) = verdict.head.clone().unwrap();
    let (code, said) = verify_cli(&app, &[format!("{through}:{head}")]);
    assert_eq!(code, 0, "{said}");
    let forged = format!("{through}:{}", "0".repeat(64));
    let (code, said) = verify_cli(&app, &[forged]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("no longer passes through"), "{said}");

    let edited = ids[2];
    let original: String = db
        .query_one(
            "SELECT detail::text FROM audit_log WHERE id = $1",
            &[&edited],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "UPDATE audit_log SET detail = '{\"name\": \"someone else\"}' WHERE id = $1",
        &[&edited],
    )
    .await
    .unwrap();
    assert_eq!(
        problems(&app).await,
        vec![format!("audit row {edited} was changed")]
    );
    let (code, said) = verify_cli(&app, &[]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!("audit row {edited} was changed")),
        "{said}"
    );
    db.execute(
        "UPDATE audit_log SET detail = $2::text::jsonb WHERE id = $1",
        &[&edited, &original],
    )
    .await
    .unwrap();
    assert_eq!(problems(&app).await, Vec::<String>::new(), "put back");

    let removed = ids[3];
    db.execute(
        "CREATE TEMP TABLE kept AS SELECT * FROM audit_log WHERE id = $1",
        &[&removed],
    )
    .await
    .unwrap();
    db.execute("DELETE FROM audit_log WHERE id = $1", &[&removed])
        .await
        .unwrap();
    assert_eq!(
        problems(&app).await,
        vec![format!("audit row {removed} was removed")]
    );
    db.batch_execute("INSERT INTO audit_log OVERRIDING SYSTEM VALUE SELECT * FROM kept")
        .await
        .unwrap();
    assert_eq!(problems(&app).await, Vec::<String>::new(), "put back");

    db.batch_execute(
        "INSERT INTO audit_log (id, principal_role, rpc, entity_type, entity_id, created_at) \
         OVERRIDING SYSTEM VALUE \
         VALUES (0, 'OPERATOR', 'finmatch.v1.SpecialLoanService/SetLenderQuota', 'program', 'x', \
                 now() - interval '1 year')",
    )
    .await
    .unwrap();
    assert_eq!(
        problems(&app).await,
        vec![format!(
            "audit row 0 was inserted out of order, below the sealed row {last}"
        )]
    );
    let (code, said) = verify_cli(&app, &[]);
    assert_eq!(code, 1, "{said}");
    db.batch_execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        .await
        .unwrap();
}
