//! How every mesh binary starts: logs, the one TLS crypto provider, the async runtime.

use std::io::IsTerminal;

/// Why a binary could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log filter does not parse.
    #[error("invalid {flag} {filter:?}: {reason}")]
    LogFilter {
        /// The flag or variable that gave it (`MESH_PROXY_LOG`, say).
        flag: &'static str,
        /// The filter given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The async runtime a binary runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: no work stealing and no cross-thread wake-ups (the proxy, the CLI).
    CurrentThread,
    /// This many worker threads.
    Workers(usize),
}

impl Runtime {
    /// One worker runs on a current-thread runtime, more on a multi-thread one.
    pub fn with_workers(n: usize) -> Self {
        if n <= 1 {
            Self::CurrentThread
        } else {
            Self::Workers(n)
        }
    }
}

/// Logs to stderr by `filter` (tracing's EnvFilter syntax, given by `flag`), with
/// colours only on a terminal.
pub fn logs(filter: &str, flag: &'static str) -> Result<(), StartError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| StartError::LogFilter {
            flag,
            filter: filter.to_string(),
            reason: e.to_string(),
        })?;
    // A second call (tests starting twice) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

/// Installs ring as the process's one rustls crypto provider (kube's and tonic's TLS
/// included); a second call is harmless.
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the runtime.
pub fn runtime(runtime: Runtime) -> Result<tokio::runtime::Runtime, StartError> {
    let mut builder = match runtime {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Runtime::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    Ok(builder.enable_all().build()?)
}

/// Starts a server binary: its logs by `filter` (from `flag`), the crypto provider, and
/// the runtime it then runs on.
pub fn start(
    filter: &str,
    flag: &'static str,
    rt: Runtime,
) -> Result<tokio::runtime::Runtime, StartError> {
    logs(filter, flag)?;
    crypto();
    runtime(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_named() {
        let e = logs("info,=[", "MESH_X_LOG").expect_err("bad filter");
        assert!(
            e.to_string().starts_with("invalid MESH_X_LOG \"info,=[\""),
            "{e}"
        );
        assert_eq!(Runtime::with_workers(1), Runtime::CurrentThread);
        assert_eq!(Runtime::with_workers(4), Runtime::Workers(4));
        let rt = start("warn", "MESH_X_LOG", Runtime::CurrentThread).expect("starts");
        assert_eq!(rt.block_on(async { 1 + 1 }), 2);
    }
}
