//! Which statements a connection may run: decided on the parsed statement, before the
//! engine plans it, by the first of the session's hooks.

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Query, Set, SetExpr, Statement};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::error::PgWireResult;
use datafusion_postgres::QueryHook;

/// Refuses every statement [`allowed`] does not name (SQLSTATE 42501).
pub struct Guard;

/// Queries (not `SELECT … INTO`), `EXPLAIN` of a query, `SHOW`, session settings other
/// than the engine's own (`datafusion.*`), transaction statements, and cursors over a
/// query. Nothing else: no DDL, DML, `COPY`, `CREATE EXTERNAL TABLE`, `PREPARE` or
/// `DISCARD`.
pub fn allowed(statement: &Statement) -> Result<(), String> {
    let ok = match statement {
        Statement::Query(q) => !writes(q),
        Statement::Explain { statement, .. } => {
            matches!(&**statement, Statement::Query(q) if !writes(q))
        }
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => true,
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string();
            if name.contains('.') {
                return Err(format!(
                    "`{name}` is a setting of the engine itself, which connections may not change"
                ));
            }
            true
        }
        Statement::Set(Set::MultipleAssignments { .. })
        | Statement::Set(Set::ParenthesizedAssignments { .. }) => false,
        Statement::Set(_) => true,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => true,
        Statement::Declare { stmts } => stmts
            .iter()
            .all(|d| d.for_query.as_ref().is_some_and(|q| !writes(q))),
        Statement::Fetch { .. } | Statement::Close { .. } => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(
            "only reads of `events` and `visits` are allowed here (queries, EXPLAIN, SHOW, \
             session settings, BEGIN/COMMIT/ROLLBACK and cursors); this statement is not one"
                .into(),
        )
    }
}

/// `SELECT … INTO t`, which the engine would plan as creating a table.
fn writes(q: &Query) -> bool {
    fn body(e: &SetExpr) -> bool {
        match e {
            SetExpr::Select(s) => s.into.is_some(),
            SetExpr::Query(q) => writes(q),
            SetExpr::SetOperation { left, right, .. } => body(left) || body(right),
            SetExpr::Values(_) | SetExpr::Table(_) => false,
            _ => true,
        }
    }
    body(&q.body)
}

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
