//! `mesh`: the user's command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod check;
mod demo;
#[cfg(test)]
mod fake_api;
mod inject;
mod install;
mod profile;
mod viz;
mod viz_install;

/// mesh: a lightweight service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds the mesh to workloads: `mesh inject deploy.yaml | kubectl apply -f -`.
    Inject {
        /// Files, folders, or `-` for stdin; multi-document YAML and `kind: List`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the whole sidecar instead of the annotation the webhook acts on.
        #[arg(long)]
        manual: bool,
        /// With --manual: the proxy among the containers, for clusters older than 1.29
        /// (default: a native sidecar).
        #[arg(long, requires = "manual")]
        classic_sidecar: bool,
        /// The proxy image (without tag).
        #[arg(long, default_value = "ghcr.io/mesh/proxy")]
        proxy_image: String,
        /// The proxy version (image tag).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        proxy_version: String,
        /// With --manual (required then): the mesh's trust anchors (PEM file), written
        /// into each sidecar — e.g. `kubectl -n mesh get cm mesh-identity-trust-anchors
        /// -o jsonpath='{.data.ca-bundle\.crt}'`.
        #[arg(long, requires = "manual", required_if_eq("manual", "true"))]
        trust_anchors: Option<PathBuf>,
    },
    /// Prints everything a cluster needs: `mesh install | kubectl apply -f -`.
    Install {
        /// Only the CRDs.
        #[arg(long)]
        crds: bool,
        /// Leave out the Gateway API's HTTPRoute and GRPCRoute CRDs: the cluster
        /// already has them (from an ingress controller, say).
        #[arg(long)]
        skip_gateway_api_crds: bool,
        /// Leave out the CRDs for Istio's security and Linkerd's policy kinds (those the
        /// cluster already has, Istio's or Linkerd's own, are always left out).
        #[arg(long)]
        skip_policy_crds: bool,
        /// Trust anchors (PEM); with the issuer files. Generated when none are given.
        #[arg(long)]
        identity_trust_anchors_file: Option<PathBuf>,
        /// The issuer certificate (PEM), signed by a trust anchor.
        #[arg(long)]
        identity_issuer_certificate_file: Option<PathBuf>,
        /// The issuer key (PEM).
        #[arg(long)]
        identity_issuer_key_file: Option<PathBuf>,
        /// Image registry prefix.
        #[arg(long, default_value = "ghcr.io/mesh")]
        registry: String,
        /// Image tag.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// Controller replicas.
        #[arg(long, default_value_t = 1)]
        controller_replicas: u32,
        /// What admits requests to ports no policy decides, for pods and namespaces
        /// that set no `config.linkerd.io/default-inbound-policy`: all-unauthenticated,
        /// all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or
        /// audit.
        #[arg(long, default_value = "all-unauthenticated")]
        default_inbound_policy: String,
        /// Where meshed proxies export spans (`host:port`; mesh-viz receives OTLP on
        /// 4317: `mesh-viz.mesh.svc.cluster.local:4317`). Unset: pods trace only
        /// when their `config.mesh.io/trace-collector` or an Istio Telemetry asks.
        #[arg(long)]
        trace_collector: Option<String>,
        /// How proxies export spans: otlp or zipkin.
        #[arg(long, default_value = "otlp")]
        trace_protocol: String,
        /// The share (0 to 1) of new traces recorded; a caller's decision always wins.
        #[arg(long, default_value = "0.01")]
        trace_sampling: String,
        /// Do not look in the cluster of the current kubeconfig for a mesh already
        /// installed (whose trust anchors, issuer and webhook certificate are otherwise
        /// kept): render as for a new cluster.
        #[arg(long)]
        ignore_cluster: bool,
    },
    /// Checks the cluster of the current kubeconfig: `--pre` before installing.
    Check {
        /// Pre-install checks.
        #[arg(long, conflicts_with = "dir")]
        pre: bool,
        /// Check a folder of YAML (what `mesh-controller --dir` serves) instead of the
        /// cluster: objects refused, and each Gateway API route's conditions.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Removes what `mesh inject` added.
    Uninject {
        /// Files, folders, or `-` for stdin.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// A whole mesh on this machine: control plane, six workloads behind strict mTLS
    /// proxies, a canary split, retries and timeouts, live metrics and a dashboard.
    Demo {
        /// Stop after this long (e.g. 30s, 5m); without it, Ctrl-C stops the demo.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Keep CA, tokens, manifests and logs here (default: a temporary folder,
        /// removed on exit).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Keep the temporary state folder on exit.
        #[arg(long)]
        keep_state: bool,
    },
    /// Runs one workload of the demo application (used by `mesh demo`).
    #[command(hide = true)]
    DemoApp {
        /// `web`, `books`, `authors`, `traffic` or `caller`.
        role: String,
        /// caller: the authority it calls (`books.demo.svc.cluster.local:80`).
        #[arg(long)]
        target: Option<String>,
        /// caller: the paths it asks for, in turn.
        #[arg(long, default_value = "/")]
        path: Vec<String>,
        /// caller: a header sent with every request (`name: value`).
        #[arg(long)]
        header: Vec<String>,
        /// Where to serve.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The pod's proxy (outbound), for workloads that call others.
        #[arg(long)]
        proxy: Option<std::net::SocketAddr>,
        /// The books version.
        #[arg(long, default_value = "v1")]
        version: String,
        /// Requests per second (traffic).
        #[arg(long, default_value_t = 20)]
        rps: u32,
        /// books: fail every request during the last third of each such cycle.
        #[arg(long, value_parser = parse_duration)]
        fail_cycle: Option<Duration>,
    },
    /// Golden metrics from mesh-viz: `edges deployment`, `stat deploy`, `routes svc/NAME`;
    /// live calls: `tap deploy/NAME`; `install`: mesh-viz's objects, as charts/mesh-viz.
    Viz {
        /// `edges`, `stat`, `routes`, `authz`, `tap` or `install`.
        #[arg(value_parser = ["edges", "stat", "routes", "authz", "tap", "install"])]
        command: String,
        /// `deployment` (edges, stat), `svc/NAME` (routes) or `deploy/NAME` (authz, tap).
        resource: Option<String>,
        /// install: the mesh's trust anchors (PEM), for viz's own identity (tap over mTLS).
        #[arg(long)]
        identity_trust_anchors_file: Option<std::path::PathBuf>,
        /// install: the image registry prefix (default: the chart's).
        #[arg(long)]
        registry: Option<String>,
        /// install: the image tag (default: the chart's appVersion).
        #[arg(long)]
        version: Option<String>,
        /// tap: only outbound calls answered by this workload (`deploy/NAME`).
        #[arg(long)]
        to: Option<String>,
        /// tap: only paths starting with this.
        #[arg(long)]
        path: Option<String>,
        /// tap: only this method.
        #[arg(long)]
        method: Option<String>,
        /// tap: only this authority.
        #[arg(long)]
        authority: Option<String>,
        /// tap: only `inbound` or `outbound` calls.
        #[arg(long)]
        direction: Option<String>,
        /// tap: stop after this many calls (default: until Ctrl-C).
        #[arg(long)]
        max_calls: Option<u64>,
        /// The namespace (install: viz's own, default `mesh`; else `default`).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output: table, wide or json.
        #[arg(short, long, value_enum, default_value_t = viz::Output::Table)]
        output: viz::Output,
        /// The window the numbers cover (e.g. 30s, 1m, 5m).
        #[arg(short, long, default_value = "1m")]
        window: String,
        /// mesh-viz's address.
        #[arg(long, env = "MESH_VIZ_ADDR", default_value = "127.0.0.1:8084")]
        viz_addr: std::net::SocketAddr,
        /// Reach mesh-viz in the cluster of the current kubeconfig, through the
        /// Kubernetes API's service proxy (Service mesh-viz, port 8084, in this
        /// namespace), instead of --viz-addr.
        #[arg(long, value_name = "NAMESPACE", num_args = 0..=1, default_missing_value = "mesh")]
        kube: Option<String>,
    },
    /// Prints a ServiceProfile: `mesh profile --template NAME -n NS > profile.yaml`.
    Profile {
        /// A skeleton for Service NAME, every field the mesh acts on shown and explained.
        #[arg(long, value_name = "NAME")]
        template: String,
        /// The Service's namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
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
    /// Creates the next issuer under an existing trust anchor (a folder from `mesh
    /// identity ca`, with `ca.crt` and `ca.key`): writes `tls.crt`, `tls.key` and
    /// `ca.crt` to a new folder, ready to replace mesh-identity's issuer in place.
    Issuer {
        /// The folder holding the trust anchor and its key.
        #[arg(long)]
        anchor: PathBuf,
        /// The folder to write to.
        #[arg(long)]
        out: PathBuf,
        /// How long the issuer is valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36500))]
        issuer_days: u64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> anyhow::Result<()> {
    mesh_api::start::crypto();
    match Cli::parse().command {
        Command::Inject {
            inputs,
            manual,
            classic_sidecar,
            proxy_image,
            proxy_version,
            trust_anchors,
        } => {
            let mode = if manual {
                mesh_controller::inject::Mode::Manual {
                    classic: classic_sidecar,
                }
            } else {
                mesh_controller::inject::Mode::Annotate
            };
            let trust_anchors_pem = match trust_anchors {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ),
                None => None,
            };
            let config = mesh_controller::inject::Config {
                image: proxy_image,
                version: proxy_version,
                trust_anchors_pem,
                ..Default::default()
            };
            inject::run(&inputs, Some(mode), &config)
        }
        Command::Install {
            crds,
            skip_gateway_api_crds,
            skip_policy_crds,
            identity_trust_anchors_file,
            identity_issuer_certificate_file,
            identity_issuer_key_file,
            registry,
            version,
            controller_replicas,
            default_inbound_policy,
            trace_collector,
            trace_protocol,
            trace_sampling,
            ignore_cluster,
        } => {
            let files_given = identity_trust_anchors_file.is_some()
                || identity_issuer_certificate_file.is_some()
                || identity_issuer_key_file.is_some();
            let installed = if crds || ignore_cluster {
                None
            } else {
                runtime()?.block_on(installed_mesh(files_given))?
            };
            if let (Some(given), Some(installed)) = (&identity_trust_anchors_file, &installed) {
                warn_dropped_anchors(given, installed);
            }
            let gateway_api_crds =
                !skip_gateway_api_crds && !runtime()?.block_on(foreign_gateway_api_crds());
            let skip_policy_crds = if skip_policy_crds {
                None
            } else {
                Some(runtime()?.block_on(foreign_policy_crds()))
            };
            let text = install::render(&install::Options {
                crds_only: crds,
                gateway_api_crds,
                skip_policy_crds,
                trust_anchors: identity_trust_anchors_file,
                issuer_cert: identity_issuer_certificate_file,
                issuer_key: identity_issuer_key_file,
                registry,
                version,
                replicas: controller_replicas,
                default_inbound_policy,
                tracing: install::Tracing {
                    collector: trace_collector,
                    protocol: trace_protocol,
                    sampling: trace_sampling,
                },
                installed,
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Check { dir: Some(dir), .. } => {
            if check::print(&check::folder(&dir)) {
                Ok(())
            } else {
                anyhow::bail!("some checks failed")
            }
        }
        Command::Check { pre, dir: None } => runtime()?.block_on(async {
            let checks = match kube::Client::try_default().await {
                Ok(client) => check::run(client, pre).await,
                Err(e) => vec![check::Check {
                    name: "can reach the Kubernetes API".into(),
                    ok: false,
                    hint: Some(format!(
                        "{e}: set KUBECONFIG or the current context to your cluster"
                    )),
                }],
            };
            if check::print(&checks) {
                Ok(())
            } else {
                anyhow::bail!("some checks failed")
            }
        }),
        Command::Uninject { inputs } => {
            inject::run(&inputs, None, &mesh_controller::inject::Config::default())
        }
        Command::Demo {
            duration,
            state,
            keep_state,
        } => runtime()?.block_on(demo::run(demo::Options {
            duration,
            state,
            keep_state,
        })),
        Command::DemoApp {
            role,
            target,
            path,
            header,
            listen,
            proxy,
            version,
            rps,
            fail_cycle,
        } => {
            let need = |a: Option<std::net::SocketAddr>, flag: &str| {
                a.ok_or_else(|| anyhow::anyhow!("{role} needs --{flag}"))
            };
            let rt = runtime()?;
            match role.as_str() {
                "web" => rt.block_on(demo::app::web(
                    need(listen, "listen")?,
                    need(proxy, "proxy")?,
                )),
                "books" => rt.block_on(demo::app::books(
                    need(listen, "listen")?,
                    version,
                    fail_cycle,
                )),
                "authors" => rt.block_on(demo::app::authors(need(listen, "listen")?)),
                "traffic" => rt.block_on(demo::app::traffic(need(proxy, "proxy")?, rps)),
                "caller" => rt.block_on(demo::app::caller(
                    need(proxy, "proxy")?,
                    target.ok_or_else(|| anyhow::anyhow!("caller needs --target"))?,
                    path,
                    header
                        .iter()
                        .map(|h| {
                            h.split_once(':')
                                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                                .ok_or_else(|| {
                                    anyhow::anyhow!("--header {h:?}: expected name: value")
                                })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?,
                    rps,
                )),
                other => anyhow::bail!("unknown demo workload {other:?}"),
            }
        }
        Command::Viz {
            command,
            resource,
            identity_trust_anchors_file,
            registry,
            version,
            to,
            path,
            method,
            authority,
            direction,
            max_calls,
            namespace,
            all_namespaces,
            output,
            window,
            viz_addr,
            kube,
        } => {
            if command == "install" {
                let trust_anchors = match &identity_trust_anchors_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    ),
                    None => None,
                };
                print!(
                    "{}",
                    viz_install::render(&viz_install::Options {
                        namespace: namespace.unwrap_or_else(|| "mesh".into()),
                        registry,
                        version,
                        trust_anchors,
                    })?
                );
                return Ok(());
            }
            if identity_trust_anchors_file.is_some() || registry.is_some() || version.is_some() {
                anyhow::bail!(
                    "--identity-trust-anchors-file, --registry and --version are for install"
                );
            }
            let namespace = namespace.unwrap_or_else(|| "default".into());
            let Some(resource) = resource else {
                anyhow::bail!(
                    "mesh viz {command} needs a resource (e.g. deployment, svc/NAME, deploy/NAME)"
                );
            };
            let target = match kube {
                Some(namespace) => viz::Target::Kubernetes { namespace },
                None => viz::Target::Addr(viz_addr),
            };
            let filters = viz::TapFilter {
                to,
                path,
                method,
                authority,
                direction,
            };
            if command == "tap" {
                let workload = viz::tap_workload(&resource)?;
                return runtime()?.block_on(viz::tap(
                    target, &namespace, &workload, &filters, output, max_calls,
                ));
            }
            if !filters.is_empty() || max_calls.is_some() {
                anyhow::bail!(
                    "--to, --path, --method, --authority, --direction and --max-calls are for tap"
                );
            }
            let query = viz::parse_resource(&command, &resource)?;
            runtime()?.block_on(viz::run(
                target,
                query,
                Some(&namespace),
                all_namespaces,
                &window,
                output,
            ))
        }
        Command::Profile {
            template,
            namespace,
        } => {
            print!("{}", profile::template(&template, &namespace)?);
            Ok(())
        }
        Command::Identity {
            command:
                IdentityCommand::Ca {
                    out,
                    anchor_days,
                    issuer_days,
                    force,
                },
        } => identity_ca(out, anchor_days, issuer_days, force),
        Command::Identity {
            command:
                IdentityCommand::Issuer {
                    anchor,
                    out,
                    issuer_days,
                    force,
                },
        } => identity_issuer(anchor, out, issuer_days, force),
    }
}

/// Whether a cluster is configured here: `KUBECONFIG` set, `~/.kube/config`, or a pod's
/// in-cluster environment. (A `KUBECONFIG` naming a missing file counts: it is a
/// mistake to report, not a reason to render for a new cluster.)
fn cluster_configured() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
        || std::env::var_os("HOME")
            .is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists())
}

/// Whether the cluster of the current kubeconfig has the Gateway API's route CRDs from
/// elsewhere (then they are left out, with a note). No cluster, or one that cannot say:
/// no, and they are included.
/// The policy CRDs the cluster already has (Istio's, Linkerd's): left out.
async fn foreign_policy_crds() -> std::collections::BTreeSet<String> {
    if !cluster_configured() {
        return Default::default();
    }
    let Ok(client) = kube::Client::try_default().await else {
        return Default::default();
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        install::foreign_policy_crds(client),
    )
    .await
    {
        Ok(Ok(names)) => {
            for name in &names {
                eprintln!("the cluster has CRD {name} already (not the mesh's): leaving it out");
            }
            names
        }
        Ok(Err(e)) => {
            eprintln!("warning: {e:#}: including the policy CRDs");
            Default::default()
        }
        Err(_) => {
            eprintln!(
                "warning: the Kubernetes API did not answer in 10s: including the policy CRDs"
            );
            Default::default()
        }
    }
}

async fn foreign_gateway_api_crds() -> bool {
    if !cluster_configured() {
        return false;
    }
    let Ok(client) = kube::Client::try_default().await else {
        return false;
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        install::foreign_gateway_api_crds(client),
    )
    .await
    {
        Ok(Ok(true)) => {
            eprintln!(
                "the cluster has the Gateway API's HTTPRoute and GRPCRoute CRDs already (not the mesh's): leaving them out"
            );
            true
        }
        Ok(Ok(false)) => false,
        Ok(Err(e)) => {
            eprintln!("warning: {e:#}: including the Gateway API's CRDs");
            false
        }
        Err(_) => {
            eprintln!(
                "warning: the Kubernetes API did not answer in 10s: including the Gateway API's CRDs"
            );
            false
        }
    }
}

/// The mesh already installed in the cluster of the current kubeconfig, if any. With no
/// cluster configured there is none to look at. A cluster that cannot say, or whose
/// mesh does not check out, is an error, unless the identity files were given (then
/// only the webhook certificate is new).
async fn installed_mesh(files_given: bool) -> anyhow::Result<Option<install::Installed>> {
    if !cluster_configured() {
        eprintln!("no kubeconfig and not in a cluster: rendering for a new cluster");
        return Ok(None);
    }
    let found = match kube::Client::try_default().await {
        Ok(client) => tokio::time::timeout(Duration::from_secs(15), install::installed(client))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the Kubernetes API did not answer in 15s"))),
        Err(e) => Err(anyhow::Error::new(e).context("cannot load the kubeconfig")),
    };
    match found {
        Ok(Some(installed)) => {
            let kept = match (files_given, installed.webhook.is_some()) {
                (false, true) => "the trust anchors, issuer and webhook certificate",
                (false, false) => "the trust anchors and issuer",
                (true, true) => "the webhook certificate",
                (true, false) => "nothing",
            };
            eprintln!("keeping {kept} of the mesh installed in the cluster");
            Ok(Some(installed))
        }
        Ok(None) => Ok(None),
        Err(e) if files_given => {
            eprintln!("warning: {e:#}; the webhook certificate will be new");
            Ok(None)
        }
        Err(e) if e.downcast_ref::<install::Broken>().is_some() => Err(e),
        Err(e) => Err(e.context(
            "cannot tell whether the cluster already runs the mesh, whose trust anchors a new install would replace (breaking its proxies); pass --ignore-cluster to render for a new cluster anyway",
        )),
    }
}

/// Warns when the trust anchors in `given` leave out some of the installed mesh's:
/// its running proxies would not trust certificates from the new issuer.
fn warn_dropped_anchors(given: &std::path::Path, installed: &install::Installed) {
    let Ok(given) = std::fs::read_to_string(given) else {
        return; // render reports it
    };
    if !install::bundle_includes(&given, &installed.anchors) {
        eprintln!(
            "warning: the given trust anchors leave out some of the installed mesh's: its running proxies will refuse the new issuer's certificates until they restart. To rotate, give a bundle of both (see docs/identity.md)"
        );
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(mesh_api::start::runtime(
        mesh_api::start::Runtime::CurrentThread,
    )?)
}

/// A positive duration flag in the mesh's grammar ([`mesh_api::duration`]).
fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(s, Duration::from_millis(1)..=Duration::MAX)
}

fn refuse_overwrite(out: &std::path::Path, files: &[&str], force: bool) -> anyhow::Result<()> {
    if !force && let Some(existing) = files.iter().map(|f| out.join(f)).find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists; not overwriting a CA (use --force to replace it)",
            existing.display()
        );
    }
    Ok(())
}

fn identity_issuer(
    anchor: PathBuf,
    out: PathBuf,
    issuer_days: u64,
    force: bool,
) -> anyhow::Result<()> {
    use mesh_identity::ca;
    refuse_overwrite(
        &out,
        &[
            ca::ISSUER_CERT_FILE,
            ca::ISSUER_KEY_FILE,
            ca::TRUST_ANCHORS_FILE,
        ],
        force,
    )?;
    let signer = ca::load_anchor(&anchor)
        .with_context(|| format!("cannot load the trust anchor from {}", anchor.display()))?;
    let lifetime = Duration::from_secs(86_400) * u32::try_from(issuer_days)?;
    let (cert, key) = ca::generate_issuer(&signer, lifetime).context("cannot create the issuer")?;
    let anchors = std::fs::read(anchor.join(ca::TRUST_ANCHORS_FILE))?;
    // Check the result the way mesh-identity will.
    ca::Issuer::from_pem(&anchors, cert.as_bytes(), &key)
        .context("the new issuer does not check out")?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(ca::TRUST_ANCHORS_FILE), &anchors)?;
    std::fs::write(out.join(ca::ISSUER_CERT_FILE), &cert)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out.join(ca::ISSUER_KEY_FILE))?;
        f.write_all(key.as_bytes())?;
    }
    eprintln!(
        "wrote {} and {} (issuer, valid {issuer_days} days) with {}",
        out.join(ca::ISSUER_CERT_FILE).display(),
        out.join(ca::ISSUER_KEY_FILE).display(),
        out.join(ca::TRUST_ANCHORS_FILE).display(),
    );
    Ok(())
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
        "wrote {} (trust anchor, valid {anchor_days} days), {} and {} (issuer, valid {issuer_days} days), {} (the anchor's key: keep it offline; mesh-identity does not need it)",
        out.join(ca::TRUST_ANCHORS_FILE).display(),
        out.join(ca::ISSUER_CERT_FILE).display(),
        out.join(ca::ISSUER_KEY_FILE).display(),
        out.join(ca::TRUST_ANCHOR_KEY_FILE).display(),
    );
    Ok(())
}
