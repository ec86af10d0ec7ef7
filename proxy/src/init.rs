//! `mesh-proxy init`: programs iptables (nat) so that a pod's inbound TCP goes to the
//! proxy's inbound port and its outbound TCP to the outbound port, except the proxy's
//! own traffic (by UID), loopback, and the ports asked to be skipped. Run once per pod,
//! in an init container with NET_ADMIN; running it again gives the same rules.

use std::process::Command;

use clap::Parser;

/// The chain inbound TCP passes through (from PREROUTING).
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// The chain outbound TCP passes through (from OUTPUT).
pub const OUTPUT_CHAIN: &str = "MESH_OUTPUT";

/// mesh-proxy init: redirect the pod's traffic through the proxy.
#[derive(Clone, Debug, Parser)]
#[command(name = "mesh-proxy init", version, about)]
pub struct InitArgs {
    /// The proxy's inbound port.
    #[arg(long, env = "MESH_INIT_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound port.
    #[arg(long, env = "MESH_INIT_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// The UID the proxy runs as: its own connections are never redirected.
    #[arg(long, env = "MESH_INIT_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound ports not redirected (comma-separated); the admin port belongs here.
    #[arg(
        long,
        env = "MESH_INIT_SKIP_INBOUND_PORTS",
        value_delimiter = ',',
        default_value = "4191"
    )]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports not redirected (comma-separated).
    #[arg(long, env = "MESH_INIT_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// The iptables command (e.g. `iptables-legacy` on nodes that use it).
    #[arg(long, env = "MESH_INIT_IPTABLES", default_value = "iptables")]
    pub iptables: String,
    /// Print the rules without applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// The rules, as iptables arguments (after `-t nat`), in order: chains flushed and
/// filled, then the jumps into them.
pub fn rules(args: &InitArgs) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut rules = Vec::new();
    for port in &args.skip_inbound_ports {
        rules.push(s(&[
            "-A",
            INBOUND_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    rules.push(s(&[
        "-A",
        INBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &args.inbound_port.to_string(),
    ]));
    // The proxy's own connections (to apps and to peers) leave as they are.
    rules.push(s(&[
        "-A",
        OUTPUT_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &args.proxy_uid.to_string(),
        "-j",
        "RETURN",
    ]));
    rules.push(s(&["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"]));
    for port in &args.skip_outbound_ports {
        rules.push(s(&[
            "-A",
            OUTPUT_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    rules.push(s(&[
        "-A",
        OUTPUT_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &args.outbound_port.to_string(),
    ]));
    rules
}

/// The jumps from the built-in chains into ours.
fn jumps() -> [(&'static str, &'static str); 2] {
    [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)]
}

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// iptables could not be run.
    #[error("cannot run {command}: {source} (is iptables installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// iptables refused a rule.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What iptables said.
        stderr: String,
    },
}

fn iptables(bin: &str, args: &[String]) -> Result<bool, InitError> {
    let command = format!("{bin} -t nat {}", args.join(" "));
    let out = Command::new(bin)
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
        .map_err(|source| InitError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    Err(InitError::Failed {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Applies the rules (or, with `--dry-run`, only prints them); prints each rule.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    let bin = args.iptables.as_str();
    let print = |rule: &[String]| println!("{bin} -t nat {}", rule.join(" "));
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        // Create the chain, or empty it if an earlier run made it: same rules again.
        if args.dry_run {
            print(&s(&["-N", chain]));
        } else if iptables(bin, &s(&["-N", chain])).is_err() {
            iptables(bin, &s(&["-F", chain]))?;
            print(&s(&["-F", chain]));
        } else {
            print(&s(&["-N", chain]));
        }
    }
    for rule in rules(args) {
        if !args.dry_run {
            iptables(bin, &rule)?;
        }
        print(&rule);
    }
    for (from, to) in jumps() {
        let jump = s(&[from, "-p", "tcp", "-j", to]);
        let check = [vec!["-C".to_owned()], jump.clone()].concat();
        let add = [vec!["-A".to_owned()], jump].concat();
        if args.dry_run || iptables(bin, &check).is_err() {
            if !args.dry_run {
                iptables(bin, &add)?;
            }
            print(&add);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_the_proxy_loopback_and_asked_ports() {
        let args = InitArgs::try_parse_from([
            "mesh-proxy init",
            "--skip-inbound-ports",
            "4191,22",
            "--skip-outbound-ports",
            "5432",
        ])
        .expect("args");
        let text: Vec<String> = rules(&args).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            text,
            [
                "-A MESH_INBOUND -p tcp --dport 4191 -j RETURN",
                "-A MESH_INBOUND -p tcp --dport 22 -j RETURN",
                "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-A MESH_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A MESH_OUTPUT -o lo -j RETURN",
                "-A MESH_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
            ]
        );
    }

    #[test]
    fn a_missing_iptables_is_a_clear_error() {
        let args =
            InitArgs::try_parse_from(["mesh-proxy init", "--iptables", "/nonexistent/iptables"])
                .expect("args");
        let err = run(&args).expect_err("no iptables");
        assert!(err.to_string().contains("/nonexistent/iptables"), "{err}");
    }
}
