//! The `mesh-proxy` binary: parses flags and environment, then runs the proxy until
//! SIGTERM, Ctrl-C or `POST /shutdown`.

use clap::Parser;
use mesh_proxy::{Config, Proxy};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    // Every worker is a current-thread runtime: no work stealing and no cross-thread
    // wake-ups, which is most of what a second scheduler thread would cost a sidecar.
    // This one is the first; the proxy starts the others (`mesh_proxy::worker`).
    let runtime = mesh_api::start::start(
        &config.log,
        "MESH_PROXY_LOG",
        mesh_api::start::Runtime::CurrentThread,
    )?;
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
