//! The `mesh-proxy` binary: parses flags and environment, then runs the proxy until
//! SIGTERM, Ctrl-C or `POST /shutdown`.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use mesh_proxy::{Config, Proxy};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // `mesh-proxy init`: program iptables and exit (the pod's init container).
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let args = mesh_proxy::init::InitArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("mesh-proxy init"))
                .chain(std::env::args_os().skip(2)),
        );
        mesh_proxy::init::run(&args)?;
        return Ok(());
    }
    let config = Config::parse();
    // One crypto provider for every TLS use in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid MESH_PROXY_LOG {:?}", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // One worker runs on a current-thread runtime: no work stealing and no cross-thread
    // wake-ups, which is most of what a second scheduler thread would cost a sidecar.
    let mut runtime = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(config.workers));
        b
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let proxy = Proxy::bind(config).await?;
        proxy.run(shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C and POST /shutdown stop the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
