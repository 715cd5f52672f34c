//! Every endpoint of the OpenAPI document reaches the role that serves it through each
//! gateway Footfall ships: the nginx configuration (deploy/nginx/footfall.conf), the
//! local cluster's (deploy/nginx/cluster.conf.template) and the Kubernetes ingress
//! (deploy/k8s/base/ingress.yaml). Collection goes to the collectors; reports, SQL,
//! exports and the dashboard to the query nodes. An endpoint added without a route fails
//! here. Admin endpoints run on a single node (reprocessing and deletion need the
//! embedded processor; docs/DISTRIBUTED.md) and operations endpoints are each node's
//! own, so neither is routed.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Collector,
    Query,
}

/// A route: the path, whether it must match exactly (else a prefix), and its role.
type Route = (String, bool, Role);

/// How a gateway picks the route of a request path.
type Pick = fn(&[Route], &str) -> Option<Role>;

fn repo(path: &str) -> String {
    let p = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn role_of_upstream(name: &str) -> Role {
    if name.contains("quer") {
        Role::Query
    } else if name.contains("collector") {
        Role::Collector
    } else {
        panic!("an upstream of no known role: {name}")
    }
}

/// `location [=] PATH { … proxy_pass http://UPSTREAM; … }` on one line each, as both
/// nginx files write them.
fn nginx_routes(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("location ") else {
            continue;
        };
        let (exact, rest) = match rest.strip_prefix("= ") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let path = rest.split_whitespace().next().unwrap().to_string();
        let Some(upstream) = line.split("proxy_pass http://").nth(1) else {
            continue; // answered by the gateway itself (its health check)
        };
        let upstream = upstream.split([';', '/']).next().unwrap();
        out.push((path, exact, role_of_upstream(upstream)));
    }
    out
}

/// The ingress's `- path:`, `pathType:` and backend service `name:` lines.
fn ingress_routes(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    let (mut path, mut exact) = (None::<String>, false);
    for line in text.lines().map(str::trim) {
        if let Some(p) = line.strip_prefix("- path: ") {
            path = Some(p.to_string());
        } else if let Some(t) = line.strip_prefix("pathType: ") {
            exact = t == "Exact";
        } else if let (Some(name), Some(p)) = (line.strip_prefix("name: footfall-"), &path) {
            out.push((p.clone(), exact, role_of_upstream(name)));
            path = None;
        }
    }
    out
}

/// The route nginx picks: an exact match, else the longest prefix.
fn nginx_pick(routes: &[Route], path: &str) -> Option<Role> {
    if let Some(r) = routes.iter().find(|r| r.1 && r.0 == path) {
        return Some(r.2);
    }
    routes
        .iter()
        .filter(|r| !r.1 && path.starts_with(&r.0))
        .max_by_key(|r| r.0.len())
        .map(|r| r.2)
}

/// The route an ingress picks: the longest match, Exact before Prefix at equal length;
/// a Prefix matches whole path elements (`/api/v2/` matches `/api/v2/query`).
fn ingress_pick(routes: &[Route], path: &str) -> Option<Role> {
    routes
        .iter()
        .filter(|r| {
            if r.1 {
                r.0 == path
            } else {
                let prefix = r.0.trim_end_matches('/');
                prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
            }
        })
        .max_by_key(|r| (r.0.trim_end_matches('/').len(), r.1))
        .map(|r| r.2)
}

#[test]
fn every_endpoint_reaches_its_role_through_every_gateway() {
    let doc: Value =
        serde_json::from_str(&repo("crates/footfall-server/src/openapi.json")).unwrap();
    let mut endpoints = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            let role = match op["tags"][0].as_str().unwrap() {
                "collect" => Role::Collector,
                "query" | "dashboard" => Role::Query,
                "admin" | "operations" => continue,
                other => panic!("{path}: a tag of no known role: {other}"),
            };
            // A concrete request path: each parameter given a value.
            let concrete: String = path
                .split('/')
                .map(|part| if part.starts_with('{') { "x1" } else { part })
                .collect::<Vec<_>>()
                .join("/");
            endpoints.push((path.clone(), concrete, role));
        }
    }
    assert!(endpoints.len() > 30, "{}", endpoints.len());
    let gateways: [(&str, Vec<Route>, Pick); 3] = [
        (
            "deploy/nginx/footfall.conf",
            nginx_routes(&repo("deploy/nginx/footfall.conf")),
            nginx_pick,
        ),
        (
            "deploy/nginx/cluster.conf.template",
            nginx_routes(&repo("deploy/nginx/cluster.conf.template")),
            nginx_pick,
        ),
        (
            "deploy/k8s/base/ingress.yaml",
            ingress_routes(&repo("deploy/k8s/base/ingress.yaml")),
            ingress_pick,
        ),
    ];
    let mut wrong = Vec::new();
    for (file, routes, pick) in &gateways {
        assert!(routes.len() >= 5, "{file}: routes read: {routes:?}");
        for (path, concrete, role) in &endpoints {
            let got = pick(routes, concrete);
            if got != Some(*role) {
                wrong.push(format!("{file}: {path} goes to {got:?}, not {role:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!(
        "{} endpoints routed to their role by {} gateways",
        endpoints.len(),
        gateways.len()
    );
}
