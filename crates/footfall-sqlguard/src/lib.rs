//! Which SQL statements Footfall runs (docs/SQL.md), decided on the parsed statement
//! before an engine plans it: the one place for both the HTTP endpoint's rule
//! ([`check_select`]: exactly one read-only query) and the wire protocol's
//! ([`allowed`]: reads, and the session statements tools send at connect). Kept apart
//! from the engine so that it can be fuzzed on its own (fuzz/fuzz_targets/sql.rs).
//!
//! The engine refuses DDL and DML again on the plan; this is the first wall, not the
//! only one.

use sqlparser::ast::{Query, Set, SetExpr, Statement};
use sqlparser::dialect::{GenericDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

/// The deepest nesting of parentheses a statement may have.
///
/// The SQL parser (sqlparser 0.62, the version DataFusion 55 is built with) takes time
/// exponential in the nesting depth of some constructs — nested function calls in the
/// PostgreSQL dialect, `CAST(CASE (` chains in both — so a statement of a few hundred
/// bytes could hold a core for minutes (found by the `sql` fuzz target: 220 bytes,
/// 0.19 s; `CAST(CASE (` eight times, 16 deep, took 52 s). At 10 deep the worst shape
/// we know parses in milliseconds, and queries people write rarely nest past 6.
pub const MAX_DEPTH: usize = 10;

/// Refuses `sql` when its parentheses nest deeper than [`MAX_DEPTH`], before any parser
/// sees it. Every parenthesis counts, inside quotes and comments too: counting more than
/// the parser would can only refuse, never let a deep statement through.
pub fn check_depth(sql: &str) -> Result<(), String> {
    let mut depth = 0usize;
    for b in sql.bytes() {
        match b {
            b'(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "the statement nests parentheses more than {MAX_DEPTH} deep; \
                         write the inner parts as WITH queries"
                    ));
                }
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses `sql` as the HTTP endpoint's engine does (the generic dialect), after
/// [`check_depth`].
pub fn parse_generic(sql: &str) -> Result<Vec<Statement>, String> {
    check_depth(sql)?;
    Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| e.to_string())
}

/// Parses `sql` as the wire protocol's clients write it (the PostgreSQL dialect), after
/// [`check_depth`].
pub fn parse_postgres(sql: &str) -> Result<Vec<Statement>, String> {
    check_depth(sql)?;
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())
}

/// The HTTP endpoint's rule: `sql` is exactly one query (`SELECT`, `WITH … SELECT`,
/// `VALUES`, set operations of those) that writes nothing (no `SELECT … INTO`).
pub fn check_select(sql: &str) -> Result<(), String> {
    let statements = parse_generic(sql).map_err(|e| format!("SQL does not parse: {e}"))?;
    if statements.len() != 1 {
        return Err(format!(
            "exactly one statement, please (got {})",
            statements.len()
        ));
    }
    match &statements[0] {
        Statement::Query(q) if !writes(q) => Ok(()),
        _ => Err(
            "only a SELECT over `events` and `visits` is allowed (no DDL, DML, COPY, SET, SHOW or EXPLAIN)"
                .into(),
        ),
    }
}

/// The wire protocol's rule: queries (not `SELECT … INTO`), `EXPLAIN` of a query,
/// `SHOW`, session settings other than the engine's own (`datafusion.*`), transaction
/// statements, and cursors over a query. Nothing else: no DDL, DML, `COPY`,
/// `CREATE EXTERNAL TABLE`, `PREPARE` or `DISCARD`.
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

/// `SELECT … INTO t`, which an engine would plan as creating a table; anything but plain
/// selects, nested queries, set operations, `VALUES` and `TABLE` counts as writing.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> Result<(), String> {
        parse_postgres(sql)?.iter().try_for_each(allowed)
    }

    /// Deep nesting is refused before parsing (the parser's time is exponential in it);
    /// what people write passes.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        // What the fuzzer found (0.19 s to parse in a release build, 15 s under the
        // sanitizer), and a chain that took 52 s.
        let found = "SELECT n_name(v_name(viSELECT * LECT &n_n &n_namname(v_name(viSELECT * \
            LECT &n_name(v_name(viSELECT * INTO (vise(v_name(viSELamname(v_name(viSELECT * \
            LECT &n_name(v_name(viSELECT * INTO (vise(v_name(viSELECT * INTO (vis(";
        let chain = format!("SELECT {}x{}", "CAST(CASE (".repeat(8), ")))".repeat(8));
        for sql in [found, chain.as_str()] {
            let e = parse_postgres(sql).unwrap_err();
            assert!(e.contains("more than 10 deep"), "{e}");
            assert!(parse_generic(sql).is_err());
            assert!(check_select(sql).is_err());
        }
        let at_limit = format!("SELECT {}1{} AS x", "abs(".repeat(10), ")".repeat(10));
        assert!(check_select(&at_limit).is_ok());
        assert!(parse_postgres(&format!("SELECT {}1{}", "(".repeat(11), ")".repeat(11))).is_err());
        // Depth is what counts, not the number of parentheses.
        let wide = format!(
            "SELECT {} FROM events",
            vec!["round(abs(sum(x)), 2)"; 50].join(", ")
        );
        assert!(check_select(&wide).is_ok());
        let usual = "SELECT local_date, ROUND(100.0 * SUM(CASE WHEN (bounce AND (pageviews = 1)) \
            THEN 1 ELSE 0 END) / NULLIF(COUNT(*), 0), 2) FROM (SELECT * FROM visits) v \
            GROUP BY local_date";
        assert!(check_select(usual).is_ok());
        assert!(pg(usual).is_ok());
    }

    #[test]
    fn reads_pass_and_everything_else_is_refused() {
        for ok in [
            "SELECT count(*) FROM events",
            "WITH v AS (SELECT * FROM visits) SELECT * FROM v",
            "SELECT 1 UNION ALL SELECT 2",
            "VALUES (1)",
        ] {
            assert_eq!(check_select(ok), Ok(()), "{ok}");
            assert_eq!(pg(ok), Ok(()), "{ok}");
        }
        for ok in [
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "SET search_path = public",
            "BEGIN",
            "COMMIT",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 10 FROM c",
            "CLOSE c",
        ] {
            assert_eq!(pg(ok), Ok(()), "{ok}");
            assert!(check_select(ok).is_err(), "{ok}: over HTTP only a query");
        }
        for bad in [
            "SELECT * INTO copied FROM events",
            "CREATE TABLE t (a int)",
            "INSERT INTO events VALUES (1)",
            "DROP TABLE events",
            "COPY events TO '/tmp/x'",
            "SET datafusion.execution.memory_limit = '10G'",
            "DECLARE c CURSOR FOR SELECT * INTO t FROM events",
            "PREPARE p AS SELECT 1",
            "DELETE FROM events",
        ] {
            assert!(pg(bad).is_err(), "{bad}");
            assert!(check_select(bad).is_err(), "{bad}");
        }
        assert!(check_select("SELECT 1; SELECT 2").is_err());
        assert!(check_select("SELEC").is_err());
        // Deep nesting is refused by the parser's recursion limit, not a stack overflow.
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(check_select(&deep).is_err());
    }
}
