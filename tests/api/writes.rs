//! `App::write`, the one path every mutating use case takes: one transaction per try, rolled
//! back when the try fails, tried again while it conflicts, committed once.

use std::sync::atomic::{AtomicU32, Ordering};

use finmatch::service::Error;
use scoped_futures::ScopedFutureExt as _;

use crate::helpers::TestApp;

async fn database(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(app.database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

async fn probes(db: &tokio_postgres::Client) -> Vec<i32> {
    db.query("SELECT n FROM write_probe ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A try that wrote and then conflicted leaves nothing behind; the next try's write commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_try_is_rolled_back_and_the_next_one_commits_once() {
    let app = TestApp::spawn().await;
    let db = database(&app).await;
    db.execute("CREATE TABLE write_probe (n int NOT NULL)", &[])
        .await
        .unwrap();
    let tries = AtomicU32::new(0);
    let tries = &tries;
    let answer = app
        .app
        .write(|conn| {
            async move {
                let n = tries.fetch_add(1, Ordering::SeqCst) as i32 + 1;
                diesel_async::RunQueryDsl::execute(
                    diesel::sql_query(format!("INSERT INTO write_probe VALUES ({n})")),
                    conn,
                )
                .await?;
                if n == 1 {
                    return Err(Error::conflict());
                }
                Ok(n)
            }
            .scope_boxed()
        })
        .await
        .unwrap();
    assert_eq!(answer, 2);
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    assert_eq!(
        probes(&db).await,
        [2],
        "the first try's row was rolled back"
    );
}

/// A try that fails for any other reason is rolled back and not tried again; the pool's
/// connections stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_is_rolled_back_and_not_repeated() {
    let app = TestApp::spawn().await;
    let db = database(&app).await;
    db.execute("CREATE TABLE write_probe (n int NOT NULL)", &[])
        .await
        .unwrap();
    let tries = AtomicU32::new(0);
    let tries = &tries;
    let refused = app
        .app
        .write(|conn| {
            async move {
                tries.fetch_add(1, Ordering::SeqCst);
                diesel_async::RunQueryDsl::execute(
                    diesel::sql_query("INSERT INTO write_probe VALUES (7)"),
                    conn,
                )
                .await?;
                Err::<(), _>(Error::not_found("probe", 7))
            }
            .scope_boxed()
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::NotFound { .. }), "{refused:?}");
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    assert!(probes(&db).await.is_empty());
    // Every pooled connection left its transaction: the next writes commit.
    for n in 0..4 {
        app.app
            .write(|conn| {
                async move {
                    diesel_async::RunQueryDsl::execute(
                        diesel::sql_query(format!("INSERT INTO write_probe VALUES ({n})")),
                        conn,
                    )
                    .await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await
            .unwrap();
    }
    assert_eq!(probes(&db).await, [0, 1, 2, 3]);
}
