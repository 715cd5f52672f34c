//! Goals: what a merchant counts as a conversion. A goal is a page (a path pattern) or a
//! custom event (a name, and property values it must have). Goals are kept with their
//! property (`footfall-meta`) and read by the query engines; docs/METRICS.md, "Goals".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most goals a property may have.
pub const MAX_GOALS: usize = 100;

/// One goal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// Its `event:goal` value; unique within the property. Default: `Visit <page>` or
    /// the event's name.
    pub name: String,
    /// A page goal: page views whose path matches; `*` stands for any characters but
    /// `/`, `**` for any characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// A custom event goal: events of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// For an event goal: properties the event must have, with these values (as text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub props: BTreeMap<String, String>,
}

impl Goal {
    /// A page goal named after its pattern.
    pub fn page(pattern: &str) -> Self {
        Goal {
            name: format!("Visit {pattern}"),
            page: Some(pattern.to_string()),
            event: None,
            props: BTreeMap::new(),
        }
    }

    /// An event goal named after its event.
    pub fn event(name: &str, props: BTreeMap<String, String>) -> Self {
        Goal {
            name: name.to_string(),
            page: None,
            event: Some(name.to_string()),
            props,
        }
    }

    /// Checks one goal: a name, and exactly one of a page pattern (starting with `/`)
    /// or an event name; properties only with an event.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.chars().count() > 120 {
            return Err("a goal needs a name of 1 to 120 characters".into());
        }
        match (&self.page, &self.event) {
            (Some(p), None) => {
                if !p.starts_with('/') || p.len() > 2000 {
                    return Err(format!(
                        "goal `{}`: a page pattern starts with `/` and has at most 2,000 bytes",
                        self.name
                    ));
                }
                if !self.props.is_empty() {
                    return Err(format!(
                        "goal `{}`: properties belong to event goals",
                        self.name
                    ));
                }
            }
            (None, Some(e)) if !e.is_empty() && e.chars().count() <= 120 => {}
            _ => {
                return Err(format!(
                    "goal `{}` needs exactly one of `page` or `event` (an event name of 1 to 120 characters)",
                    self.name
                ))
            }
        }
        Ok(())
    }

    /// For a page goal, its pattern as an anchored regular expression over the path.
    pub fn page_regex(&self) -> Option<String> {
        let p = self.page.as_deref()?;
        let mut re = String::from("^");
        let mut rest = p;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("**") {
                re.push_str(".*");
                rest = r;
            } else if let Some(r) = rest.strip_prefix('*') {
                re.push_str("[^/]*");
                rest = r;
            } else {
                let c = rest.chars().next().expect("not empty");
                let mut buf = [0u8; 4];
                re.push_str(&regex_syntax_escape(c.encode_utf8(&mut buf)));
                rest = &rest[c.len_utf8()..];
            }
        }
        re.push('$');
        Some(re)
    }
}

/// Escapes the characters regular expressions give a meaning to.
fn regex_syntax_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks a property's goals: each one, their number, and that names are unique.
pub fn check_goals(goals: &[Goal]) -> Result<(), String> {
    if goals.len() > MAX_GOALS {
        return Err(format!("a property has at most {MAX_GOALS} goals"));
    }
    let mut names = std::collections::BTreeSet::new();
    for g in goals {
        g.check()?;
        if !names.insert(g.name.as_str()) {
            return Err(format!("two goals are named `{}`", g.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_patterns_and_checks() {
        let g = Goal::page("/blog/*/comments");
        assert_eq!(g.name, "Visit /blog/*/comments");
        assert_eq!(g.page_regex().unwrap(), "^/blog/[^/]*/comments$");
        assert_eq!(Goal::page("/a.b/**").page_regex().unwrap(), "^/a\\.b/.*$");
        assert!(g.check().is_ok());
        assert!(Goal::page("pricing").check().is_err());
        let mut e = Goal::event("Signup", [("plan".into(), "pro".into())].into());
        assert!(e.check().is_ok());
        e.page = Some("/x".into());
        assert!(e.check().is_err());
        let two = [Goal::page("/a"), Goal::page("/a")];
        assert!(check_goals(&two).unwrap_err().contains("two goals"));
        let json = serde_json::to_value(Goal::event("Buy", Default::default())).unwrap();
        assert_eq!(json, serde_json::json!({"name": "Buy", "event": "Buy"}));
    }
}
