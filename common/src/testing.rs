//! Test support (feature `testing`): a fresh, migrated PostgreSQL database per test, dropped
//! when the test ends, so tests run in parallel against one real server and leave nothing behind.
//!
//! `TEST_DATABASE_URL` names a maintenance database on the server and a role allowed to create
//! databases (default: the `floodgate` role on the local server's `postgres` database).

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::config::env_string;

/// The default maintenance connection used to create and drop test databases.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://floodgate:floodgate@127.0.0.1:5432/postgres?sslmode=disable";

/// A database that exists for the lifetime of this value.
pub struct TestDatabase {
    name: String,
    url: String,
    maintenance_url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// Creates a uniquely named database and applies every migration to it.
    pub async fn create() -> Self {
        let maintenance_url = env_string("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL);
        let name = format!("floodgate_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&maintenance_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach PostgreSQL at TEST_DATABASE_URL ({err}); run scripts/test"));
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("the test role may create databases");
        admin.close().await.ok();
        // Same server and options, other database: .../postgres?sslmode=x -> .../<name>?sslmode=x
        let (path, query) = match maintenance_url.split_once('?') {
            Some((path, query)) => (path, format!("?{query}")),
            None => (maintenance_url.as_str(), String::new()),
        };
        let (base, _) = path
            .rsplit_once('/')
            .expect("TEST_DATABASE_URL ends with a database name");
        let url = format!("{base}/{name}{query}");
        let pool = crate::db::pool(&url, 10).expect("test database URL is valid");
        crate::db::migrate(&pool)
            .await
            .expect("migrations apply to a fresh database");
        Self {
            name,
            url,
            maintenance_url,
            pool,
        }
    }

    /// Connection URL of the test database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on the test database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which is blocked while we wait, so the clean-up
        // runs on a short-lived thread with its own runtime and its own connection (the pool's
        // connections belong to the blocked runtime). FORCE ends the pool's sessions.
        let name = self.name.clone();
        let maintenance_url = self.maintenance_url.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&maintenance_url).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("could not drop test database {}: {err}", self.name),
            Err(_) => eprintln!("test database clean-up of {} panicked", self.name),
        }
    }
}
