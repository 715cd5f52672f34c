//! `footfall export`: a property's raw events from a running server
//! (`GET /api/v1/export`), written to a file or standard output as they arrive.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args)]
pub struct ExportArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub property: String,
    /// A read key of the property.
    #[arg(long)]
    pub key: String,
    /// A named range (`30d`, `all`, …) or `YYYY-MM-DD,YYYY-MM-DD`.
    #[arg(long, default_value = "all")]
    pub date_range: String,
    /// `csv` or `parquet`.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// The file to write (default: standard output).
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = format!("{}/api/v1/export", a.url.trim_end_matches('/'));
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let written = rt.block_on(async {
        let mut r = reqwest::Client::new()
            .get(&endpoint)
            .bearer_auth(&a.key)
            .query(&[
                ("site_id", a.property.as_str()),
                ("date_range", a.date_range.as_str()),
                ("format", a.format.as_str()),
            ])
            .send()
            .await
            .with_context(|| format!("asking {endpoint} (is `footfall serve` running?)"))?;
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            bail!("{endpoint} answered {status}: {text}");
        }
        let mut n = 0u64;
        while let Some(chunk) = r.chunk().await.context("reading the export")? {
            out.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        out.flush()?;
        anyhow::Ok(n)
    })?;
    if let Some(p) = &a.output {
        eprintln!("wrote {written} bytes to {}", p.display());
    }
    Ok(())
}
