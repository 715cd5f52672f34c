//! Which SQL statements Footfall runs (docs/SQL.md), decided on the parsed statement
//! before an engine plans it: the one place for both the HTTP endpoint's rule
//! ([`check_select`]: exactly one read-only query) and the wire protocol's
//! ([`allowed`]: reads, and the session statements tools send at connect). Kept apart
//! from the engine so that it can be fuzzed on its own (fuzz/fuzz_targets/sql.rs).
//!
//! The engine refuses DDL and DML again on the plan; this is the first wall, not the
//! only one.

pub mod budget;

use sqlparser::ast::{Query, Set, SetExpr, Statement};
use sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};

use budget::Budgeted;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The deepest nesting a statement may have: parentheses, brackets and braces, and
/// `CASE … END`, all counted together.
///
/// The SQL parser (sqlparser 0.62, the version DataFusion 55 is built with) takes time
/// exponential in the nesting of some constructs, because where a keyword's own syntax
/// fails to parse it parses the rest again with the keyword as a name. Found by the
/// `sql` fuzz target: nested function calls in the PostgreSQL dialect and `CAST(CASE (`
/// chains (`CAST(CASE (` eight times took 52 s), and chains of `CASE` with no `END`
/// (`CASE WHEN CASE +` fourteen times: 4.7 s), each a few hundred bytes. At 10 deep the
/// worst shapes we know parse in milliseconds, and queries people write rarely nest
/// past 6.
pub const MAX_DEPTH: usize = 10;

/// The longest statement parsed: with the parser's work budget
/// ([`budget::BUDGET_PER_BYTE`]) this bounds the time any statement can take to parse,
/// or to be refused (about 3.5 million calls into the dialect, well under a second).
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;

/// Why [`check_shape`] refused a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nested deeper than [`MAX_DEPTH`], or more work to parse than its length allows
    /// ([`budget`]): PostgreSQL's "statement too complex".
    TooComplex(String),
    /// Brackets or `CASE … WHEN … THEN … ELSE … END` that do not pair up: the statement
    /// cannot parse, and asking the parser to find that out is what takes time.
    Malformed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooComplex(m) | Refusal::Malformed(m) => f.write_str(m),
        }
    }
}

/// One open level of nesting, innermost last.
enum Open {
    /// `(`, `[` or `{`, closed by this token.
    Bracket(Token),
    /// `CASE`: how many `WHEN`s and `THEN`s it has had, and whether `ELSE`.
    Case {
        whens: usize,
        thens: usize,
        otherwise: bool,
    },
}

/// Refuses `sql` before any parser sees it when its nesting is deeper than
/// [`MAX_DEPTH`], or when its brackets or `CASE` expressions do not pair up: in both
/// the parser's time can be exponential in the statement's length.
///
/// Works on the tokens of `dialect` (the parser's own tokenizer, linear in the length),
/// so that brackets and keywords inside strings, quoted names and comments do not
/// count. Unquoted `case`, `when`, `then`, `else` and `end` are taken as keywords:
/// a column of that name must be quoted. A statement the tokenizer cannot read passes:
/// the parser fails on it at once, in the same tokenizer.
pub fn check_shape(dialect: &dyn Dialect, sql: &str) -> Result<(), Refusal> {
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
        return Ok(());
    };
    let malformed = |what: &str| {
        Err(Refusal::Malformed(format!(
            "the statement cannot parse: {what}"
        )))
    };
    let mut open: Vec<Open> = Vec::new();
    for token in tokens {
        let keyword = match &token {
            Token::Word(w) => w.keyword,
            _ => Keyword::NoKeyword,
        };
        let case = match open.last_mut() {
            Some(Open::Case {
                whens,
                thens,
                otherwise,
            }) => Some((whens, thens, otherwise)),
            _ => None,
        };
        match (&token, keyword, case) {
            (Token::LParen, ..) => open.push(Open::Bracket(Token::RParen)),
            (Token::LBracket, ..) => open.push(Open::Bracket(Token::RBracket)),
            (Token::LBrace, ..) => open.push(Open::Bracket(Token::RBrace)),
            (Token::RParen | Token::RBracket | Token::RBrace, ..) => match open.pop() {
                Some(Open::Bracket(close)) if close == token => {}
                Some(Open::Case { .. }) => return malformed("a CASE without its END"),
                _ => return malformed(&format!("an unmatched {token}")),
            },
            (_, Keyword::CASE, _) => open.push(Open::Case {
                whens: 0,
                thens: 0,
                otherwise: false,
            }),
            // Outside a CASE these words are not this rule's business (`END` is also
            // a statement, as `COMMIT`).
            (_, Keyword::WHEN, Some((whens, thens, otherwise))) => {
                if *otherwise || whens != thens {
                    return malformed("a WHEN out of place in a CASE");
                }
                *whens += 1;
            }
            (_, Keyword::THEN, Some((whens, thens, _))) => {
                if *whens != *thens + 1 {
                    return malformed("a THEN without its WHEN");
                }
                *thens += 1;
            }
            (_, Keyword::ELSE, Some((whens, thens, otherwise))) => {
                if *otherwise || *whens == 0 || whens != thens {
                    return malformed("an ELSE out of place in a CASE");
                }
                *otherwise = true;
            }
            (_, Keyword::END, Some((whens, thens, _))) => {
                if *whens == 0 || whens != thens {
                    return malformed("a CASE with no WHEN … THEN before its END");
                }
                open.pop();
            }
            _ => {}
        }
        if open.len() > MAX_DEPTH {
            return Err(Refusal::TooComplex(format!(
                "the statement nests more than {MAX_DEPTH} deep (parentheses and CASE \
                 together); write the inner parts as WITH queries"
            )));
        }
    }
    match open.last() {
        None => Ok(()),
        Some(Open::Case { .. }) => malformed("a CASE without its END"),
        Some(Open::Bracket(close)) => malformed(&format!("a missing {close}")),
    }
}

/// Parses `sql` in `dialect` once [`check_shape`] passes it, within a work budget
/// ([`budget::Budgeted`]). The outer error is a refusal before or during parsing, the
/// inner result the parser's own. A statement this returns `Ok` for parses again in the
/// same dialect in the same bounded time.
pub fn parse_within_budget<D: Dialect>(
    dialect: D,
    sql: &str,
) -> Result<Result<Vec<Statement>, ParserError>, Refusal> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(Refusal::TooComplex(format!(
            "the statement is longer than {} KiB",
            MAX_STATEMENT_BYTES / 1024
        )));
    }
    check_shape(&dialect, sql)?;
    let budgeted = Budgeted::for_statement(dialect, sql);
    let parsed = Parser::parse_sql(&budgeted, sql);
    if budgeted.exhausted() {
        return Err(Refusal::TooComplex(
            "the statement is too complex to parse in bounded time; write its parts as \
             WITH queries"
                .into(),
        ));
    }
    Ok(parsed)
}

/// Parses `sql` as the HTTP endpoint's engine does (the generic dialect), within
/// [`parse_within_budget`]'s bounds.
pub fn parse_generic(sql: &str) -> Result<Vec<Statement>, String> {
    parse_within_budget(GenericDialect {}, sql)
        .map_err(|r| r.to_string())?
        .map_err(|e| e.to_string())
}

/// Parses `sql` as the wire protocol's clients write it (the PostgreSQL dialect),
/// within [`parse_within_budget`]'s bounds.
pub fn parse_postgres(sql: &str) -> Result<Vec<Statement>, String> {
    parse_within_budget(PostgreSqlDialect {}, sql)
        .map_err(|r| r.to_string())?
        .map_err(|e| e.to_string())
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
        // CASE counts as a level: five CASEs in five parentheses are ten.
        let cases = format!(
            "SELECT {}1{}",
            "(CASE WHEN x THEN ".repeat(6),
            " END)".repeat(6)
        );
        for sql in [found, chain.as_str(), cases.as_str()] {
            let e = parse_postgres(sql).unwrap_err();
            assert!(e.contains("more than 10 deep"), "{e}");
            assert!(parse_generic(sql).is_err());
            assert!(check_select(sql).is_err());
            assert!(matches!(
                check_shape(&PostgreSqlDialect {}, sql),
                Err(Refusal::TooComplex(_))
            ));
        }
        let at_limit = format!("SELECT {}1{} AS x", "abs(".repeat(10), ")".repeat(10));
        assert!(check_select(&at_limit).is_ok());
        let cases_at_limit = format!(
            "SELECT {}1{}",
            "(CASE WHEN x THEN ".repeat(5),
            " END)".repeat(5)
        );
        assert!(check_select(&cases_at_limit).is_ok());
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

    /// `CASE` whose `END` never comes is parsed again with `CASE` as a name at every
    /// level: the second finding of the `sql` target (361 bytes, 0.69 s). Such
    /// statements cannot parse, and are refused before the parser tries.
    #[test]
    fn case_without_end_is_refused_before_parsing() {
        let found = "SELECT CASE @@approx_distanct(viSELEtio++case++ry_nVVVVVVVe8cutio++case++\
            Ve8cutio++caseio++case++ry_nam0$(ase++ry_nam++se++Ve8cutio++case++ryutio++case++\
            ry_nVVVVVVVe8cutio++case++Ve8cutio++caseio++case++ry_nam0$(aseE @@approx_distanct(\
            viSELEtio++case++ry_nVVVVVVVe8cutio++case++Ve8cutio++caseio++case++ry_nam0$(ase++\
            ry_nam++se++Ve8cutio++case++ryutio++c++ry_nam";
        let plus = format!("SELECT {}1", "CASE ++".repeat(40));
        let with_end = format!("SELECT {}1", "CASE ++END ++".repeat(40));
        let when_case = format!("SELECT {}1", "CASE WHEN CASE +".repeat(40));
        for sql in [found, &plus, &with_end, &when_case] {
            let started = std::time::Instant::now();
            assert!(parse_postgres(sql).is_err(), "{sql}");
            assert!(check_select(sql).is_err(), "{sql}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{sql}: {:?}",
                started.elapsed()
            );
        }
        for (sql, why) in [
            ("SELECT CASE WHEN x THEN 1", "a CASE without its END"),
            ("SELECT CASE END", "a CASE with no WHEN"),
            (
                "SELECT CASE WHEN x WHEN y THEN 1 END",
                "a WHEN out of place",
            ),
            ("SELECT CASE x THEN 1 END", "a THEN without its WHEN"),
            ("SELECT CASE ELSE 1 END", "an ELSE out of place"),
            ("SELECT count(case) FROM events", "a CASE without its END"),
            ("SELECT (1))", "an unmatched )"),
            ("SELECT [1)", "an unmatched )"),
        ] {
            let e = check_shape(&GenericDialect {}, sql).unwrap_err();
            assert!(matches!(e, Refusal::Malformed(_)), "{sql}");
            assert!(e.to_string().contains(why), "{sql}: {e}");
        }
        // What people write, and brackets and keywords inside strings, quoted names and
        // comments, pass.
        for ok in [
            "SELECT CASE page WHEN '/' THEN 'home' WHEN '/a' THEN 'a' ELSE 'other' END FROM events",
            "SELECT CASE WHEN CASE WHEN x THEN 1 END = 1 THEN 2 ELSE CASE y WHEN 1 THEN 3 END END",
            "SELECT '(((((((((((( CASE case' AS \"end\", \"case\" FROM events -- CASE ((((",
            "SELECT x /* CASE (( [[ */ FROM events",
            "SELECT make_array(1, 2)[1] FROM events",
        ] {
            assert_eq!(check_shape(&GenericDialect {}, ok), Ok(()), "{ok}");
            assert_eq!(check_shape(&PostgreSqlDialect {}, ok), Ok(()), "{ok}");
        }
        // END alone is a statement (COMMIT) on the wire protocol.
        assert_eq!(check_shape(&PostgreSqlDialect {}, "END"), Ok(()));
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

    /// Every statement of the fuzz seeds and of these tests parses to the same result
    /// under the budget as without it, in both dialects: the wrapper changes nothing but
    /// the count.
    #[test]
    fn the_budgeted_dialect_parses_as_the_plain_one() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/sql");
        let mut corpus: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        assert!(corpus.len() >= 5, "the seeds are read");
        corpus.extend(
            [
                "SELECT e.page, count(*) FROM events e JOIN visits v ON e.visit_id = v.visit_id \
                 WHERE e.local_date >= DATE '2026-01-01' GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
                "SELECT interval '1 day', x::text, CAST(y AS BIGINT), '{\"a\":1}'::json->>'a'",
                "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(n, s) WHERE s ILIKE 'A%'",
                "SELECT date_trunc('hour', ts) AS h, approx_distinct(visitor) FROM events GROUP BY h",
                "SELECT CASE WHEN a THEN 1 END, t.a.b, arr[1], \"end\" FROM t",
                "SET search_path = public",
                "SHOW TABLES",
                "SELECT a FROM t WINDOW w AS (PARTITION BY b ORDER BY c) QUALIFY 1",
            ]
            .map(String::from),
        );
        corpus.push(format!(
            "SELECT {}x{}",
            "coalesce(nullif(".repeat(5),
            ", 0), 1)".repeat(5)
        ));
        for sql in &corpus {
            let plain = format!("{:?}", Parser::parse_sql(&GenericDialect {}, sql));
            let d = Budgeted::for_statement(GenericDialect {}, sql);
            let budgeted = format!("{:?}", Parser::parse_sql(&d, sql));
            assert!(d.spent() > 0);
            if !d.exhausted() {
                assert_eq!(plain, budgeted, "{sql}");
            }
            let plain = format!("{:?}", Parser::parse_sql(&PostgreSqlDialect {}, sql));
            let d = Budgeted::for_statement(PostgreSqlDialect {}, sql);
            let budgeted = format!("{:?}", Parser::parse_sql(&d, sql));
            if !d.exhausted() {
                assert_eq!(plain, budgeted, "{sql}");
            }
        }
        // The parser's dialect checks see the wrapped dialect.
        let d: &dyn Dialect = &Budgeted::for_statement(PostgreSqlDialect {}, "");
        assert!(d.is::<PostgreSqlDialect>());
    }

    /// Statements whose parse takes exponential time are refused within milliseconds of
    /// work, whatever their shape; what people write, even nested ten deep, passes.
    #[test]
    fn work_past_the_budget_is_refused() {
        // The third finding of the `sql` target (dotted names with broken subscripts:
        // 0.12 s in a release build), and dotted chains that double with each dot
        // (18 dots: 0.33 s; these 30 would take minutes).
        let found = "SELECT ecnt_rynamo$XTX$.amo$XTX$.exec_meion.emocu.ex.exec_meion.en.c[xtion.\
            memocu.mx.execnt_rynameexec_meion.emocu.#x.exec_meion.en.c[xtion.memocu.mx.\
            execnt_rynameion> O?$]extion.emocu.mx.execnt_rynameion> O?$]xecmmmmmmmmmm1";
        let dots = format!("SELECT {}a[+]", "a.".repeat(30));
        for sql in [found, &dots] {
            let started = std::time::Instant::now();
            for r in [
                parse_within_budget(GenericDialect {}, sql),
                parse_within_budget(PostgreSqlDialect {}, sql),
            ] {
                assert!(matches!(r, Err(Refusal::TooComplex(_))), "{sql}: {r:?}");
            }
            assert!(check_select(sql).unwrap_err().contains("too complex"));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{sql}: {:?}",
                started.elapsed()
            );
        }
        for ok in [
            format!(
                "SELECT {}x{}",
                "coalesce(nullif(".repeat(5),
                ", 0), 1)".repeat(5)
            ),
            format!("SELECT {}1{} AS x", "abs(".repeat(10), ")".repeat(10)),
            format!(
                "SELECT {} FROM events",
                vec!["round(abs(sum(x)), 2) AS y"; 300].join(", ")
            ),
            format!(
                "SELECT CASE {} ELSE 'x' END FROM events",
                (0..500)
                    .map(|i| format!("WHEN page = '/p/{i}' THEN 'g{i}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ] {
            assert!(matches!(
                parse_within_budget(PostgreSqlDialect {}, &ok),
                Ok(Ok(_))
            ));
            assert!(check_select(&ok).is_ok());
        }
        let long = format!("SELECT 1{}", " ".repeat(MAX_STATEMENT_BYTES));
        assert!(check_select(&long)
            .unwrap_err()
            .contains("longer than 64 KiB"));
    }
}
