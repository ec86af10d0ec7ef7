//! mesh-try: mesh-proxy in front of a sample server, to see the data plane work before
//! the rest of the mesh exists. Starts the sample app and one proxy, sends requests
//! through both of the proxy's directions, shows the proxy's own errors and metrics,
//! then keeps running for you to try with curl until Ctrl-C (or `--duration`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_test::{backend, client, proxy};

/// Runs mesh-proxy in front of a sample HTTP server.
#[derive(Parser, Debug)]
struct Args {
    /// Where the sample app listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    app_addr: SocketAddr,
    /// The proxy's inbound listener.
    #[arg(long, default_value = "127.0.0.1:4143")]
    inbound_addr: SocketAddr,
    /// The proxy's outbound listener.
    #[arg(long, default_value = "127.0.0.1:4140")]
    outbound_addr: SocketAddr,
    /// The proxy's admin server.
    #[arg(long, default_value = "127.0.0.1:4191")]
    admin_addr: SocketAddr,
    /// Stop on your own after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    duration: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, addr) in [
        ("outbound", args.outbound_addr),
        ("inbound", args.inbound_addr),
        ("admin", args.admin_addr),
    ] {
        if addr.port() != 0 && std::net::TcpListener::bind(addr).is_err() {
            anyhow::bail!(
                "{addr} ({name}) is already in use: stop what listens there, or pass --{name}-addr"
            );
        }
    }
    let app_listener = std::net::TcpListener::bind(args.app_addr).with_context(|| {
        format!(
            "{} (the sample app) is already in use: pass --app-addr",
            args.app_addr
        )
    })?;
    drop(app_listener);
    let app = backend::http_on(args.app_addr).await;
    let proxy = proxy::new()
        .env("INBOUND_ADDR", args.inbound_addr)
        .env("OUTBOUND_ADDR", args.outbound_addr)
        .env("ADMIN_ADDR", args.admin_addr)
        .env("SHUTDOWN_ENDPOINT_ENABLED", true)
        .env("LOG", "warn,mesh_proxy::server=info")
        .app(app.addr)
        .run()
        .await;

    println!("sample app  http://{}", app.addr);
    println!(
        "mesh-proxy  outbound {}  inbound {}  admin {}\n",
        proxy.outbound, proxy.inbound, proxy.admin
    );

    let show = |what: &str, r: &client::Reply| {
        let err = r.header("mesh-proxy-error");
        let err = if err.is_empty() {
            String::new()
        } else {
            format!("  mesh-proxy-error: {err}")
        };
        println!(
            "{what:<52} → {} {:?}{err}",
            r.status.as_u16(),
            r.text().trim()
        );
    };
    let host = app.addr.to_string();
    show(
        &format!("outbound GET http://{host}/ (Host header)"),
        &client::get(proxy.outbound, &host, "/").await,
    );
    show(
        "inbound  GET /status/503 (to the app)",
        &client::get(proxy.inbound, "web", "/status/503").await,
    );
    show(
        "outbound GET http://nothing.invalid/",
        &client::get(proxy.outbound, "nothing.invalid", "/").await,
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    show(
        &format!("outbound GET http://{closed}/ (nothing listens)"),
        &client::get(proxy.outbound, &closed.to_string(), "/").await,
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("\nmetrics (GET http://{}/metrics), in part:", proxy.admin);
    for line in proxy
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("response_total"))
    {
        println!("  {line}");
    }
    println!("\ntry it:");
    println!(
        "  curl -x http://{} http://{host}/echo -d hello",
        proxy.outbound
    );
    println!(
        "  curl -H 'Host: {host}' http://{}/size/100",
        proxy.outbound
    );
    println!("  curl http://{}/metrics", proxy.admin);
    match args.duration {
        Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
        None => {
            println!("\nCtrl-C to stop.");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
        }
    }
    proxy.shutdown().await;
    Ok(())
}
