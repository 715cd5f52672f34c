//! Which statements a connection may run: decided on the parsed statement, before the
//! engine plans it, by the first of the session's hooks.

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::error::PgWireResult;
use datafusion_postgres::QueryHook;

/// Refuses every statement [`allowed`] does not name (SQLSTATE 42501).
pub struct Guard;

/// The rule itself is [`footfall_sqlguard::allowed`] (fuzzed on its own).
pub use footfall_sqlguard::allowed;

fn refused(why: String) -> datafusion_postgres::pgwire::error::PgWireError {
    crate::error("ERROR", "42501", why)
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _: &SessionContext,
        _: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        allowed(statement).err().map(|why| Err(refused(why)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _: &SessionContext,
        _: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        allowed(statement).err().map(|why| Err(refused(why)))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        _: &ParamValues,
        _: &SessionContext,
        _: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Err(why) = allowed(statement) {
            return Some(Err(refused(why)));
        }
        // The plan too, in case the statement's text hid a write.
        match plan {
            LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => {
                Some(Err(refused("this statement would write".into())))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn check(sql: &str) -> Result<(), String> {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
        allowed(&s[0])
    }

    #[test]
    fn reads_pass_and_everything_else_is_refused() {
        for sql in [
            "SELECT count(*) FROM events",
            "WITH v AS (SELECT * FROM visits) SELECT count(*) FROM v",
            "SELECT 1 UNION SELECT 2",
            "EXPLAIN SELECT * FROM events",
            "SHOW TIME ZONE",
            "SET statement_timeout = 1000",
            "SET TIME ZONE 'UTC'",
            "BEGIN",
            "COMMIT",
            "DECLARE c CURSOR FOR SELECT * FROM events",
            "FETCH 10 FROM c",
            "CLOSE c",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
        for sql in [
            "SELECT * INTO stolen FROM events",
            "SELECT 1 UNION SELECT * INTO t FROM events",
            "CREATE TABLE t AS SELECT * FROM events",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO events SELECT * FROM events",
            "DELETE FROM events",
            "UPDATE events SET page = 'x'",
            "DROP TABLE events",
            "COPY events TO '/tmp/x.csv'",
            "SET datafusion.runtime.memory_limit = '100G'",
            "SET datafusion.execution.target_partitions = 64",
            "EXPLAIN CREATE TABLE t (a int)",
            "PREPARE p AS SELECT 1",
            "DISCARD ALL",
            "ATTACH DATABASE 'x' AS y",
            "CREATE SCHEMA s",
            "ALTER TABLE events ADD COLUMN x int",
            "TRUNCATE events",
            "GRANT SELECT ON events TO public",
        ] {
            assert!(check(sql).is_err(), "{sql}");
        }
    }
}
