//! mesh-sample-app: the test application as a process of its own, for tests that run
//! workloads in network namespaces (and demos): the HTTP routes of
//! `mesh_test::backend` on each `--http` address and a TCP echo on each `--tcp-echo`.

use std::net::SocketAddr;

use clap::Parser;

/// Serves the sample application until killed.
#[derive(Parser, Debug)]
struct Args {
    /// Serve the sample HTTP app (HTTP/1 and h2c) here; repeatable.
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// Serve a TCP echo here; repeatable.
    #[arg(long)]
    tcp_echo: Vec<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        !args.http.is_empty() || !args.tcp_echo.is_empty(),
        "nothing to serve: pass --http or --tcp-echo"
    );
    for addr in &args.http {
        let app = mesh_test::backend::http_with_delay(*addr, std::time::Duration::ZERO).await?;
        println!("http {}", app.addr);
    }
    for addr in &args.tcp_echo {
        println!(
            "tcp-echo {}",
            mesh_test::backend::tcp_echo_on(*addr, None).await?
        );
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
