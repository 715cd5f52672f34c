//! Which roles a node runs (`footfall serve --role …`), and which combinations work with
//! which engines.

use anyhow::bail;

/// The roles of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    /// Accepts events over HTTP and appends them to the log.
    pub collector: bool,
    /// Reads the log, sessionises, rolls up and checkpoints into the rollup store.
    pub processor: bool,
    /// Answers reports from the rollup store.
    pub query: bool,
    /// Seals the log into the raw archive.
    pub archiver: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        collector: true,
        processor: true,
        query: true,
        archiver: true,
    };

    /// Parses `all` or names joined by commas (or given several times).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> anyhow::Result<Roles> {
        let mut r = Roles::default();
        for name in names.iter().flat_map(|n| n.as_ref().split(',')) {
            match name.trim() {
                "all" => r = Roles::ALL,
                "collector" => r.collector = true,
                "processor" => r.processor = true,
                "query" => r.query = true,
                "archiver" => r.archiver = true,
                "" => {}
                other => bail!(
                    "unknown role `{other}`: use collector, processor, query, archiver or all"
                ),
            }
        }
        if r == Roles::default() {
            bail!("no role given: use collector, processor, query, archiver or all");
        }
        Ok(r)
    }

    /// Whether the node uses the event log.
    pub fn uses_log(&self) -> bool {
        self.collector || self.processor || self.archiver
    }

    /// Checks that the engines configured can serve these roles on separate nodes:
    /// the embedded log is one process's files, and a query node apart from its
    /// processor reads the shared database.
    pub fn check(&self, shared_log: bool, shared_store: bool) -> anyhow::Result<()> {
        let log_roles = [self.collector, self.processor, self.archiver];
        if !shared_log && self.uses_log() && log_roles.contains(&false) {
            bail!(
                "with the embedded log, collector, processor and archiver run in one process \
                 (its log files are that process's); configure log.kafka_brokers to run them apart"
            );
        }
        if shared_log && self.processor && !shared_store {
            bail!(
                "processors of a shared log take partitions by lease and write their rollups \
                 to the shared database: set store.url (postgres://…)"
            );
        }
        if self.query && !self.processor && !shared_store {
            bail!(
                "a query node without a processor reads the rollups from the shared database: \
                 set store.url (postgres://…)"
            );
        }
        if self.processor && !self.query && !shared_store {
            bail!(
                "a processor without a query role in the same process must write to the shared \
                 database (store.url), or no node could read its rollups"
            );
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, name) in [
            (self.collector, "collector"),
            (self.processor, "processor"),
            (self.query, "query"),
            (self.archiver, "archiver"),
        ] {
            if on {
                v.push(name);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(Roles::parse(&["all"]).unwrap(), Roles::ALL);
        let r = Roles::parse(&["collector,query"]).unwrap();
        assert!(r.collector && r.query && !r.processor && !r.archiver);
        assert_eq!(
            Roles::parse(&["query", "processor"]).unwrap().names(),
            ["processor", "query"]
        );
        assert!(Roles::parse(&["colector"])
            .unwrap_err()
            .to_string()
            .contains("colector"));
        assert!(Roles::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn combinations_follow_the_engines() {
        // The embedded default: everything in one process.
        Roles::ALL.check(false, false).unwrap();
        // A query node on the shared database, beside an embedded all-in-one writer.
        Roles::parse(&["query"])
            .unwrap()
            .check(false, true)
            .unwrap();
        assert!(Roles::parse(&["query"])
            .unwrap()
            .check(false, false)
            .is_err());
        // Splitting the log's roles needs a shared log.
        let collector = Roles::parse(&["collector"]).unwrap();
        assert!(collector.check(false, true).is_err());
        collector.check(true, true).unwrap();
        let processor = Roles::parse(&["processor"]).unwrap();
        assert!(processor.check(true, false).is_err());
        processor.check(true, true).unwrap();
        assert!(
            Roles::ALL.check(true, false).is_err(),
            "a shared log needs a shared store"
        );
        Roles::parse(&["collector,processor,archiver"])
            .unwrap()
            .check(false, true)
            .unwrap();
    }
}
