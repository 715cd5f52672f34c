//! Admission: a typed event from any protocol, checked against the property and the
//! ingestion rules, becomes a log record (its visitor identity computed, its time
//! settled), or a [`Rejection`] saying why not.

use std::net::IpAddr;

use footfall_event::identity::{truncate_ip, visitor_id, IdentitySource};
use footfall_event::native::{Limits, NativeEvent, Rejection};
use footfall_event::LoggedEvent;
use footfall_log::partition_for;
use footfall_meta::{KeyGrant, MetaCache};

/// Ingestion time rules.
#[derive(Debug, Clone)]
pub struct IngestRules {
    pub limits: Limits,
    /// Browser events older than this are refused; write-key senders may backdate.
    pub max_past_ms: i64,
    /// Timestamps further than this in the future are clamped to the receive time.
    pub max_future_ms: i64,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` / `Forwarded` entries
    /// are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Each property's rate and daily quota on this node (none by default), and their
    /// state.
    pub property_limits: std::sync::Arc<crate::PropertyLimits>,
}

impl Default for IngestRules {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_past_ms: 72 * 3600 * 1000,
            max_future_ms: 60 * 1000,
            trusted_proxies: vec![
                IpAddr::from([127, 0, 0, 1]).into(),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST).into(),
            ],
            property_limits: Default::default(),
        }
    }
}

/// Who sent a request, and what admission may take from it.
pub struct Sender<'a> {
    /// The write key's grant (server-side senders), if any.
    pub grant: Option<&'a KeyGrant>,
    /// The client's address ([`crate::client_ip`]).
    pub ip: IpAddr,
    /// The request's user agent, for browser protocols; `None` for server protocols,
    /// whose HTTP client is not the visitor (their events may carry one).
    pub user_agent: Option<String>,
    /// Check browser events' page host against the property's domains.
    pub check_url_host: bool,
}

/// Records ready to append (partition, encoded event) and, per input index, the events
/// refused.
pub type Admitted = (Vec<(u32, Vec<u8>)>, Vec<(usize, Rejection)>);

/// Admits typed events: each is validated against the shared limits
/// ([`NativeEvent::validate`]), then against its property and the time rules. Only a
/// metadata store failure fails the whole call.
pub fn admit_all(
    cache: &MetaCache,
    rules: &IngestRules,
    now: i64,
    partitions: u32,
    events: Vec<NativeEvent>,
    s: &Sender<'_>,
) -> footfall_meta::Result<Admitted> {
    let salt = cache.salt(now.div_euclid(86_400_000))?;
    let secret = *cache.secret();
    let (mut ok, mut bad) = (Vec::with_capacity(events.len()), Vec::new());
    for (i, e) in events.into_iter().enumerate() {
        match admit(cache, rules, e, s, now, &salt, &secret) {
            Ok(ev) => ok.push((partition_for(ev.visitor, partitions), ev.encode())),
            Err(r) => bad.push((i, r)),
        }
    }
    Ok((ok, bad))
}

/// Turns one event into a log record, or says why not.
fn admit(
    cache: &MetaCache,
    rules: &IngestRules,
    e: NativeEvent,
    s: &Sender<'_>,
    now: i64,
    salt: &[u8; 16],
    secret: &[u8; 16],
) -> Result<LoggedEvent, Rejection> {
    let e = e.validate(&rules.limits)?;
    let property = cache
        .property(&e.tracking_id)
        .map_err(|err| Rejection::new("unavailable", err.to_string()))?
        .ok_or_else(|| {
            Rejection::new(
                "unknown_tracking_id",
                format!("no property has tracking id `{}`", e.tracking_id),
            )
        })?;
    if let Some(g) = s.grant {
        if g.property != e.tracking_id {
            return Err(Rejection::new(
                "forbidden",
                "the write key belongs to another property",
            ));
        }
    }
    if s.grant.is_none() && e.server_side == Some(true) {
        return Err(Rejection::new(
            "server_side_needs_key",
            "only a write key may send `server_side: true` events",
        ));
    }
    // Write-key rules (backdating, any address); `counted_as_server` is the narrower
    // question of who is counted (docs/METRICS.md, "Who is counted").
    let server_side = s.grant.is_some();
    let counted_as_server = server_side && e.server_side != Some(false);
    let mut ts = e.timestamp.unwrap_or(now);
    if ts > now + rules.max_future_ms {
        ts = now;
    }
    if !server_side && ts < now - rules.max_past_ms {
        return Err(Rejection::new(
            "timestamp_too_old",
            "timestamps older than 72 hours need a write key",
        ));
    }
    if s.check_url_host && !server_side && !property.domains.is_empty() {
        if let Some(host) = e.url.as_deref().and_then(footfall_event::url_host) {
            if !property.allows_host(&host) {
                return Err(Rejection::new(
                    "domain_not_allowed",
                    format!("`{host}` is not an allowed domain of this property"),
                ));
            }
        }
    }
    let ip = if server_side {
        e.ip.unwrap_or(s.ip)
    } else {
        s.ip
    };
    let user_agent = if server_side {
        e.user_agent.or_else(|| s.user_agent.clone())
    } else {
        s.user_agent.clone()
    };
    let source = if let Some(u) = e.user_id.as_deref() {
        IdentitySource::UserId(u)
    } else if let Some(c) = e.client_id.as_deref() {
        IdentitySource::ClientId(c)
    } else {
        IdentitySource::Address {
            ip,
            user_agent: user_agent.as_deref().unwrap_or(""),
            daily_salt: salt,
        }
    };
    let visitor = visitor_id(secret, &e.tracking_id, source);
    // Last: an event refused for any other reason does not use the property's allowance.
    rules.property_limits.take(&e.tracking_id, now)?;
    Ok(LoggedEvent {
        property: e.tracking_id,
        received_at: now,
        timestamp: ts,
        visitor,
        name: e.name,
        url: e.url,
        referrer: e.referrer,
        title: e.title,
        props: e.props,
        revenue: e.revenue,
        interactive: e.interactive,
        user_agent,
        ip_prefix: Some(truncate_ip(ip)),
        server_side: counted_as_server,
    })
}
