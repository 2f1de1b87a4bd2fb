//! The schema: versioned migrations (refinery), applied under an advisory lock.
//!
//! The migrations are SQL files in `migrations/`, embedded in the binary. Each instance
//! applies what is missing when it starts; the advisory lock makes instances that start
//! together wait for each other, so every migration runs once. refinery records them in
//! `hooktap_schema_history` and refuses a database whose history diverges from the binary's.

use super::pg_error;
use crate::store::StoreError;

refinery::embed_migrations!("src/store/postgres/migrations");

/// The advisory lock that serialises migrations (an arbitrary constant: "hooktap" + 1).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7461_7001;
const HISTORY_TABLE: &str = "hooktap_schema_history";

/// One migration, applied or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    /// When it was applied (RFC 3339), if it was.
    pub applied_on: Option<String>,
}

/// A migration the database has and this binary does not (a newer hooktap applied it) does
/// not stop this one (refinery's default does): migrations add to the schema and keep what
/// older instances read and write working, so during a rolling upgrade an instance of the
/// older version can still start and reload. A migration of the same version with another
/// text does stop it.
fn runner() -> refinery::Runner {
    let mut runner = migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(false);
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

/// Applies the missing migrations; returns the names of those applied now.
pub async fn migrate_with(client: &mut tokio_postgres::Client) -> Result<Vec<String>, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let report = runner().run_async(client).await;
    // The lock is the session's: release it even when the migration failed.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report =
        report.map_err(|e| StoreError::Postgres(format!("cannot migrate the schema: {e}")))?;
    unlocked.map_err(pg_error)?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// Applies the migrations up to `version` only: a database as an older hooktap left it (tests
/// of a later migration's upgrade of existing rows).
#[cfg(test)]
pub async fn migrate_to(
    client: &mut tokio_postgres::Client,
    version: u8,
) -> Result<(), StoreError> {
    runner()
        .set_target(refinery::Target::Version(version.into()))
        .run_async(client)
        .await
        .map(drop)
        .map_err(|e| StoreError::Postgres(format!("cannot migrate the schema: {e}")))
}

/// Every migration this binary knows, with whether (and when) the database has it.
pub async fn status_with(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<MigrationStatus>, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&HISTORY_TABLE])
        .await
        .map_err(pg_error)?
        .get(0);
    let applied = if exists {
        runner()
            .get_applied_migrations_async(client)
            .await
            .map_err(|e| StoreError::Postgres(format!("cannot read the schema history: {e}")))?
    } else {
        Vec::new()
    };
    Ok(runner()
        .get_migrations()
        .iter()
        .map(|m| MigrationStatus {
            version: i64::from(m.version()),
            name: m.name().to_owned(),
            applied_on: applied
                .iter()
                .find(|a| a.version() == m.version())
                .and_then(|a| a.applied_on())
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
        })
        .collect())
}
