//! A work budget for the SQL parser.
//!
//! sqlparser 0.62 retries at many places where a construct fails to parse (a keyword
//! taken as a name, `a.b.c` taken as an expression, then as names), and each retry
//! parses the rest again: nested, that is exponential time, and the `sql` fuzz target
//! keeps finding new shapes of it. Refusing shapes one by one cannot be complete, and a
//! parse cannot be stopped from outside. But the parser asks its dialect about almost
//! every step (the tokenizer about every character), so [`Budgeted`] wraps a dialect,
//! behaves exactly as it does, and counts those questions; past the budget, the next
//! expression, operator or statement the parser starts fails with
//! `RecursionLimitExceeded`, which the parser's retries pass on instead of swallowing.
//!
//! A statement that parses within the budget under the wrapper takes the same path, so
//! the same steps, when the engine parses it again with the plain dialect: its time is
//! bounded too. That needs the wrapper to answer every question as the wrapped dialect
//! does, so every method of the trait is forwarded (src/forward.rs, generated from the
//! trait by scripts/gen-sqlguard-dialect.py; `is::<PostgreSqlDialect>()` checks see the
//! wrapped dialect's type).

use std::any::TypeId;
use std::cell::Cell;
use std::iter::Peekable;
use std::str::Chars;

use sqlparser::ast::{ColumnOption, Expr, GranteesType, Ident, ObjectNamePart, Statement};
use sqlparser::dialect::{Dialect, Precedence};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};

/// Questions a parse may ask its dialect regardless of the statement's length. The
/// PostgreSQL dialect's own cost grows exponentially with nested function calls: ten
/// deep (`coalesce(nullif(` five times) asks about 46,000.
pub const BASE_BUDGET: u64 = 200_000;
/// And per byte of the statement: what people write asks 2 to 12 per byte (300 nested
/// expressions in a select list, in the PostgreSQL dialect: 11.8).
pub const BUDGET_PER_BYTE: u64 = 50;

/// `D`, counting the parser's calls into it (see the module's documentation).
#[derive(Debug)]
pub struct Budgeted<D> {
    inner: D,
    spent: Cell<u64>,
    budget: u64,
}

impl<D: Dialect> Budgeted<D> {
    /// A budget for parsing `sql`: [`BASE_BUDGET`] plus [`BUDGET_PER_BYTE`] per byte.
    pub fn for_statement(inner: D, sql: &str) -> Self {
        Self {
            inner,
            spent: Cell::new(0),
            budget: BASE_BUDGET + BUDGET_PER_BYTE * sql.len() as u64,
        }
    }

    /// Calls made so far.
    pub fn spent(&self) -> u64 {
        self.spent.get()
    }

    /// Whether the parse ran out of budget (whatever it returned).
    pub fn exhausted(&self) -> bool {
        self.spent.get() > self.budget
    }

    /// Counts one call; true once the budget is spent.
    fn spend(&self) -> bool {
        let n = self.spent.get().saturating_add(1);
        self.spent.set(n);
        n > self.budget
    }
}

include!("forward.rs");
