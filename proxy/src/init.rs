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
    let (inb, out) = (INBOUND_CHAIN, OUTPUT_CHAIN);
    let mut rules = Vec::new();
    for port in &args.skip_inbound_ports {
        rules.push(format!("-A {inb} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!(
        "-A {inb} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    // The proxy's own connections (to apps and to peers) leave as they are.
    rules.push(format!(
        "-A {out} -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    ));
    rules.push(format!("-A {out} -o lo -j RETURN"));
    for port in &args.skip_outbound_ports {
        rules.push(format!("-A {out} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!(
        "-A {out} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    rules.iter().map(|r| words(r)).collect()
}

/// iptables arguments from a rule's text.
fn words(rule: &str) -> Vec<String> {
    rule.split_whitespace().map(str::to_owned).collect()
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
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        // Create the chain, or empty it if an earlier run made it: same rules again.
        if args.dry_run {
            print(&words(&format!("-N {chain}")));
        } else if iptables(bin, &words(&format!("-N {chain}"))).is_err() {
            iptables(bin, &words(&format!("-F {chain}")))?;
            print(&words(&format!("-F {chain}")));
        } else {
            print(&words(&format!("-N {chain}")));
        }
    }
    for rule in rules(args) {
        if !args.dry_run {
            iptables(bin, &rule)?;
        }
        print(&rule);
    }
    for (from, to) in jumps() {
        let jump = words(&format!("{from} -p tcp -j {to}"));
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
