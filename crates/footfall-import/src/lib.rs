//! Web server access logs → historical page views: line parsers (Apache/nginx combined
//! and common log formats, and tab-separated logs with a header) and the rule for which
//! requests are page views. No I/O here; `footfall import access-log` drives it.

use chrono::DateTime;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
    Combined,
    /// `%h %l %u %t "%r" %>s %b`
    Common,
    /// Tab-separated with a header naming at least `host`, `time` (Unix seconds),
    /// `method`, `url`, `response`; `referer` and `useragent` when present.
    Tsv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "combined" => Format::Combined,
            "common" => Format::Common,
            "tsv" => Format::Tsv,
            _ => return None,
        })
    }
}

/// One request from a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub client: String,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    pub method: String,
    pub target: String,
    pub status: u16,
    pub referrer: Option<String>,
    pub user_agent: Option<String>,
}

/// Why a line did not become a page view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    Unparsable,
    Header,
    NotGet,
    NotSuccess,
    StaticAsset,
}

/// File extensions of assets rather than pages.
const ASSETS: &[&str] = &[
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "bmp",
    "tif", "tiff", "woff", "woff2", "ttf", "otf", "eot", "mp3", "mp4", "webm", "ogg", "wav", "avi",
    "mov", "mpg", "mpeg", "zip", "gz", "tgz", "bz2", "xz", "rar", "7z", "tar", "iso", "dmg", "exe",
    "pdf", "xbm", "swf", "json", "xml", "txt", "rss", "atom",
];

/// Whether a request target (path and query) names a static asset, by extension.
pub fn is_static_asset(target: &str) -> bool {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    match last.rsplit_once('.') {
        Some((_, ext)) => ASSETS.contains(&ext.to_ascii_lowercase().as_str()),
        None => false,
    }
}

fn dash_none(s: &str) -> Option<String> {
    (s != "-" && !s.is_empty()).then(|| s.to_string())
}

/// Takes a `"..."` field from the start of `s`, honouring `\"` escapes; returns the
/// content and the rest.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '"' => return Some((out, &s[i + 1..])),
            _ => out.push(c),
        }
    }
    None
}

fn parse_clf(line: &str, combined: bool) -> Option<Request> {
    let (client, rest) = line.split_once(' ')?;
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    let time = DateTime::parse_from_str(&rest[open + 1..close], "%d/%b/%Y:%H:%M:%S %z").ok()?;
    let (request, rest) = quoted(&rest[close + 1..])?;
    let mut parts = rest.split_whitespace();
    let status: u16 = parts.next()?.parse().ok()?;
    let _bytes = parts.next()?;
    let mut req = request.split_whitespace();
    let method = req.next()?.to_string();
    let target = req.next()?.to_string();
    let (mut referrer, mut user_agent) = (None, None);
    if combined {
        let after_bytes = rest.trim_start();
        let after_status = after_bytes.split_once(char::is_whitespace)?.1.trim_start();
        let after = after_status
            .split_once(char::is_whitespace)
            .map(|x| x.1)
            .unwrap_or("");
        if let Some((r, more)) = quoted(after) {
            referrer = dash_none(&r);
            // The last field of a truncated line may lack its closing quote: the rest of
            // the line is still the user agent (a crawler's, in the wild).
            let ua = quoted(more).map(|(ua, _)| ua).or_else(|| {
                more.trim_start()
                    .strip_prefix('"')
                    .map(|s| s.trim_end().to_string())
            });
            if let Some(ua) = ua {
                user_agent = dash_none(&ua);
            }
        }
    }
    Some(Request {
        client: client.to_string(),
        time_ms: time.timestamp_millis(),
        method,
        target,
        status,
        referrer,
        user_agent,
    })
}

/// Column positions of a TSV header.
#[derive(Debug, Clone)]
pub struct TsvColumns {
    host: usize,
    time: usize,
    method: usize,
    url: usize,
    status: usize,
    referer: Option<usize>,
    useragent: Option<usize>,
}

impl TsvColumns {
    pub fn from_header(line: &str) -> Option<Self> {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        let at = |n: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(n));
        Some(Self {
            host: at("host")?,
            time: at("time")?,
            method: at("method")?,
            url: at("url")?,
            status: at("response").or_else(|| at("status"))?,
            referer: at("referer").or_else(|| at("referrer")),
            useragent: at("useragent").or_else(|| at("user_agent")),
        })
    }
}

fn parse_tsv(line: &str, c: &TsvColumns) -> Option<Request> {
    let f: Vec<&str> = line.split('\t').collect();
    let secs: i64 = f.get(c.time)?.trim().parse().ok()?;
    Some(Request {
        client: f.get(c.host)?.to_string(),
        time_ms: secs * 1000,
        method: f.get(c.method)?.to_string(),
        target: f.get(c.url)?.to_string(),
        status: f.get(c.status)?.trim().parse().ok()?,
        referrer: c
            .referer
            .and_then(|i| f.get(i))
            .and_then(|s| dash_none(s.trim())),
        user_agent: c
            .useragent
            .and_then(|i| f.get(i))
            .and_then(|s| dash_none(s.trim())),
    })
}

/// Parses one line; `tsv` holds the columns once the header was seen.
pub fn parse_line(
    line: &str,
    format: Format,
    tsv: &mut Option<TsvColumns>,
) -> Result<Request, Skip> {
    match format {
        Format::Combined => parse_clf(line, true).ok_or(Skip::Unparsable),
        Format::Common => parse_clf(line, false).ok_or(Skip::Unparsable),
        Format::Tsv => {
            if tsv.is_none() {
                *tsv = TsvColumns::from_header(line);
                return Err(if tsv.is_some() {
                    Skip::Header
                } else {
                    Skip::Unparsable
                });
            }
            parse_tsv(line, tsv.as_ref().unwrap()).ok_or(Skip::Unparsable)
        }
    }
}

/// The page-view rule: a GET with a 2xx status for something that is not a static asset.
pub fn page_view(r: &Request) -> Result<(), Skip> {
    if !r.method.eq_ignore_ascii_case("GET") {
        return Err(Skip::NotGet);
    }
    if !(200..300).contains(&r.status) {
        return Err(Skip::NotSuccess);
    }
    if is_static_asset(&r.target) {
        return Err(Skip::StaticAsset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_line() {
        let l = r#"83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /blog/x.html?a=1 HTTP/1.1" 200 203023 "http://semicomplete.com/" "Mozilla/5.0 (X11) \"quoted\"""#;
        let r = parse_line(l, Format::Combined, &mut None).unwrap();
        assert_eq!(r.client, "83.149.9.216");
        assert_eq!(r.target, "/blog/x.html?a=1");
        assert_eq!(r.status, 200);
        assert_eq!(r.referrer.as_deref(), Some("http://semicomplete.com/"));
        assert_eq!(
            r.user_agent.as_deref(),
            Some("Mozilla/5.0 (X11) \"quoted\"")
        );
        assert_eq!(r.time_ms, 1_431_857_103_000);
        assert_eq!(page_view(&r), Ok(()));
        let truncated = r#"46.118.127.106 - - [20/May/2015:12:05:17 +0000] "GET /a.py HTTP/1.1" 200 235 "-" "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html"#;
        let r = parse_line(truncated, Format::Combined, &mut None).unwrap();
        assert_eq!(
            r.user_agent.as_deref(),
            Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html")
        );
        let asset =
            r#"1.2.3.4 - - [17/May/2015:10:05:03 +0000] "GET /a/b.PNG HTTP/1.1" 200 1 "-" "-""#;
        assert_eq!(
            page_view(&parse_line(asset, Format::Combined, &mut None).unwrap()),
            Err(Skip::StaticAsset)
        );
        let post = r#"1.2.3.4 - - [17/May/2015:10:05:03 +0000] "POST / HTTP/1.1" 200 1 "-" "-""#;
        assert_eq!(
            page_view(&parse_line(post, Format::Combined, &mut None).unwrap()),
            Err(Skip::NotGet)
        );
        assert_eq!(
            parse_line("garbage", Format::Combined, &mut None),
            Err(Skip::Unparsable)
        );
    }

    #[test]
    fn tsv_lines() {
        let mut cols = None;
        let h = "host\tlogname\ttime\tmethod\turl\tresponse\tbytes\treferer\tuseragent";
        assert_eq!(parse_line(h, Format::Tsv, &mut cols), Err(Skip::Header));
        let r = parse_line(
            "a.com\t-\t807256800\tGET\t/x/\t304\t0\t\t",
            Format::Tsv,
            &mut cols,
        )
        .unwrap();
        assert_eq!(
            (r.time_ms, r.status, r.referrer.clone()),
            (807_256_800_000, 304, None)
        );
        assert_eq!(page_view(&r), Err(Skip::NotSuccess));
    }
}
