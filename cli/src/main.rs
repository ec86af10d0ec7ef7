//! `mesh`: the user's command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mesh: a lightweight service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Identity: the mesh's certificate authority.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Creates a trust anchor and an issuer it signs, for a mesh that brings no CA:
    /// writes `ca.crt` (trust anchor), `tls.crt` and `tls.key` (issuer) to a folder,
    /// laid out like the Kubernetes TLS Secret mesh-identity mounts.
    Ca {
        /// The folder to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How long the trust anchor is valid, in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36500))]
        anchor_days: u64,
        /// How long the issuer is valid, in days (rotate it before then).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36500))]
        issuer_days: u64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Identity {
            command:
                IdentityCommand::Ca {
                    out,
                    anchor_days,
                    issuer_days,
                    force,
                },
        } => identity_ca(out, anchor_days, issuer_days, force),
    }
}

fn identity_ca(
    out: PathBuf,
    anchor_days: u64,
    issuer_days: u64,
    force: bool,
) -> anyhow::Result<()> {
    use mesh_identity::ca;
    if issuer_days > anchor_days {
        anyhow::bail!(
            "the issuer ({issuer_days} days) cannot outlive its trust anchor ({anchor_days} days)"
        );
    }
    let files = [
        ca::TRUST_ANCHORS_FILE,
        ca::ISSUER_CERT_FILE,
        ca::ISSUER_KEY_FILE,
    ];
    if !force && let Some(existing) = files.iter().map(|f| out.join(f)).find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists; not overwriting a CA (use --force to replace it)",
            existing.display()
        );
    }
    let day = Duration::from_secs(86_400);
    let generated = ca::generate(
        day * u32::try_from(anchor_days)?,
        day * u32::try_from(issuer_days)?,
    )
    .context("cannot generate the CA")?;
    ca::write(&out, &generated).context("cannot write the CA")?;
    eprintln!(
        "wrote {} (trust anchor, valid {anchor_days} days), {} and {} (issuer, valid {issuer_days} days)",
        out.join(ca::TRUST_ANCHORS_FILE).display(),
        out.join(ca::ISSUER_CERT_FILE).display(),
        out.join(ca::ISSUER_KEY_FILE).display(),
    );
    Ok(())
}
