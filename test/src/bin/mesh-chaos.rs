//! mesh-chaos: the chaos soak of `mesh_test::chaos` for as long as asked, with its
//! report; exits non-zero when a request failed without an excuse. Build the binaries
//! first (`cargo build --workspace --bins`, or `--profile dist`).

use std::time::Duration;

use clap::Parser;

/// Runs the chaos soak.
#[derive(Parser, Debug)]
struct Args {
    /// How long to run (e.g. 10m).
    #[arg(long, default_value = "5m", value_parser = mesh_proxy::config::parse_duration)]
    duration: Duration,
    /// Requests a second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = mesh_test::chaos::run(mesh_test::chaos::Settings {
        duration: args.duration,
        rate: args.rate,
    })
    .await;
    println!(
        "{} requests: {} ok, {} failed in flight to a killed endpoint, {} failed otherwise",
        report.sent,
        report.ok,
        report.excused.len(),
        report.unexpected.len()
    );
    println!(
        "answered by v1 {} / v2 {}; certificates issued {}; {} chaos events",
        report.by_version[0],
        report.by_version[1],
        report.certificates_issued,
        report.events.len()
    );
    for why in &report.excused {
        println!("  excused: {why}");
    }
    for why in &report.unexpected {
        println!("  UNEXPECTED: {why}");
    }
    anyhow::ensure!(report.clean(), "requests failed without an excuse");
    Ok(())
}
