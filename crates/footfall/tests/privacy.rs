//! Privacy by design: no full client IP address is kept anywhere. Events arrive from
//! IPv4 and IPv6 clients by every path that carries an address (a server's write-key
//! batch naming the address, keyless browser events and the Plausible endpoint behind a
//! trusted proxy's `X-Forwarded-For`); after they are counted, archived and
//! checkpointed, every file under the data directory is scanned for each address, as
//! text and as its bytes. The truncated prefixes the enrichment keeps are found, which
//! shows the scan reads the files the addresses would be in.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::json;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// The forms an address could be stored in: its text (IPv6 also fully expanded) and
/// its bytes.
fn needles(ip: IpAddr) -> Vec<Vec<u8>> {
    let mut v = vec![ip.to_string().into_bytes()];
    match ip {
        IpAddr::V4(a) => v.push(a.octets().to_vec()),
        IpAddr::V6(a) => {
            let s = a.segments();
            v.push(
                s.iter()
                    .map(|x| format!("{x:04x}"))
                    .collect::<Vec<_>>()
                    .join(":")
                    .into_bytes(),
            );
            v.push(a.octets().to_vec());
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_full_client_ip_is_kept_anywhere() {
    let Some(py) = test_python() else { return };
    // The scan itself finds an address where one is.
    let probe = tempfile::tempdir().unwrap();
    std::fs::write(probe.path().join("x.bin"), b"..203.0.113.77..").unwrap();
    let ip: IpAddr = "203.0.113.77".parse().unwrap();
    assert_eq!(holding(probe.path(), &needles(ip)[0]).len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    cli(
        dir.path(),
        &[
            "property",
            "update",
            &site.tracking_id,
            "--domain",
            "shop.example",
        ],
    );
    let mut server = Server::start(dir.path(), &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms")]);
    let c = reqwest::Client::new();
    let (server_v4, server_v6) = ("203.0.113.77", "2001:db8:85a3:8d3:1319:8a2e:370:7348");
    let (browser_v4, browser_v6) = ("198.51.100.123", "2001:db8:1234:5678:9abc:def0:1234:5678");
    let batch = json!([
        {"tracking_id": site.tracking_id, "name": "pageview", "url": "https://shop.example/a", "ip": server_v4, "user_agent": CHROME},
        {"tracking_id": site.tracking_id, "name": "pageview", "url": "https://shop.example/b", "ip": server_v6, "user_agent": CHROME},
    ]);
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &batch).await,
        2
    );
    let r = c
        .post(format!("{}/api/v1/events", server.url))
        .header("user-agent", CHROME)
        .header("x-forwarded-for", browser_v4)
        .json(&json!({"tracking_id": site.tracking_id, "name": "pageview", "url": "https://shop.example/c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    let r = c
        .post(format!("{}/api/event", server.url))
        .header("user-agent", CHROME)
        .header("x-forwarded-for", browser_v6)
        .body(
            json!({"n": "pageview", "u": "https://shop.example/d", "d": "shop.example"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    wait_for_events(&c, &server.url, &site, json!("day"), 4).await;
    // Archived, then a final checkpoint at a graceful stop.
    let decoded = tempfile::tempdir().unwrap();
    let records = decoded.path().join("records.txt");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut files = Vec::new();
        files_under(&dir.path().join("archive"), &mut files);
        if files
            .iter()
            .any(|f| f.extension().is_some_and(|x| x == "avro"))
        {
            archive_records(&py, dir.path(), &records);
            if std::fs::read_to_string(&records).unwrap().lines().count() == 4 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "not all archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.terminate();

    for ip in [server_v4, server_v6, browser_v4, browser_v6] {
        let ip: IpAddr = ip.parse().unwrap();
        for n in needles(ip) {
            for place in [dir.path(), decoded.path()] {
                let found = holding(place, &n);
                assert!(
                    found.is_empty(),
                    "{ip} ({}) is kept in {found:?}",
                    String::from_utf8_lossy(&n)
                );
            }
        }
    }
    // What is kept instead: the network prefix, in the log and the archive's records.
    for prefix in [
        "203.0.113.0",
        "198.51.100.0",
        "2001:db8:85a3::",
        "2001:db8:1234::",
    ] {
        let found = holding(dir.path(), prefix.as_bytes());
        assert!(
            found.iter().any(|f| f.starts_with(dir.path().join("log"))),
            "{prefix} in {found:?}"
        );
        assert_eq!(
            holding(decoded.path(), prefix.as_bytes()).len(),
            1,
            "{prefix}"
        );
    }
}
