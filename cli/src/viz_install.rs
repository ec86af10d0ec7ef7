//! `mesh viz install`: the objects of `charts/mesh-viz`, rendered from the chart's own
//! template and default values, so that the two cannot drift apart. The template is
//! rendered by a small evaluator of exactly the expressions it uses (values, `quote`,
//! `toYaml | nindent`, `include "mesh-viz.tag"`, `if`/`with`/`end`, whitespace
//! trimming); one it does not know is an error, caught by the tests.

use anyhow::{Context, bail};
use serde_json::Value;

const TEMPLATE: &str = include_str!("../../charts/mesh-viz/templates/viz.yaml");
const VALUES: &str = include_str!("../../charts/mesh-viz/values.yaml");
const CHART: &str = include_str!("../../charts/mesh-viz/Chart.yaml");

/// What `mesh viz install` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The namespace viz goes into.
    pub namespace: String,
    /// The image registry, when not the chart's.
    pub registry: Option<String>,
    /// The image tag, when not the chart's appVersion.
    pub version: Option<String>,
    /// The mesh's trust anchors (PEM), for viz's own identity (tap over mTLS).
    pub trust_anchors: Option<String>,
}

/// The YAML of mesh-viz's objects.
pub fn render(o: &Options) -> anyhow::Result<String> {
    let mut values: Value = mesh_api::yaml::from_str(VALUES).context("the chart's values")?;
    let chart: Value = mesh_api::yaml::from_str(CHART).context("the chart's Chart.yaml")?;
    if let Some(r) = &o.registry {
        values["image"]["registry"] = r.clone().into();
    }
    if let Some(v) = &o.version {
        values["image"]["tag"] = v.clone().into();
    }
    if let Some(pem) = &o.trust_anchors {
        values["identity"]["trustAnchorsPEM"] = pem.clone().into();
    }
    let ctx = Ctx {
        values: &values,
        chart: &chart,
        namespace: &o.namespace,
    };
    let mut out = String::new();
    ctx.render(TEMPLATE, &mut out)?;
    Ok(out.trim().to_string() + "\n")
}

struct Ctx<'a> {
    values: &'a Value,
    chart: &'a Value,
    namespace: &'a str,
}

/// A template action: `{{ … }}`, with its trimming marks.
struct Action<'t> {
    expr: &'t str,
    trim_left: bool,
    trim_right: bool,
}

/// Splits `t` at its next action: the text before, the action, the rest.
fn next_action(t: &str) -> anyhow::Result<Option<(&str, Action<'_>, &str)>> {
    let Some(open) = t.find("{{") else {
        return Ok(None);
    };
    let close = t[open..]
        .find("}}")
        .map(|c| open + c)
        .context("an action without its }}")?;
    let mut inner = &t[open + 2..close];
    let trim_left = inner.starts_with('-');
    if trim_left {
        inner = &inner[1..];
    }
    let trim_right = inner.ends_with('-');
    if trim_right {
        inner = &inner[..inner.len() - 1];
    }
    Ok(Some((
        &t[..open],
        Action {
            expr: inner.trim(),
            trim_left,
            trim_right,
        },
        &t[close + 2..],
    )))
}

impl Ctx<'_> {
    fn render(&self, template: &str, out: &mut String) -> anyhow::Result<()> {
        let mut rest = template;
        // Open blocks: whether each one's body is kept, and its `.` (for `with`).
        let mut blocks: Vec<(bool, Option<Value>)> = Vec::new();
        let kept = |blocks: &[(bool, Option<Value>)]| blocks.iter().all(|(k, _)| *k);
        while let Some((text, action, after)) = next_action(rest)? {
            if kept(&blocks) {
                out.push_str(text);
                if action.trim_left {
                    let trimmed = out.trim_end().len();
                    out.truncate(trimmed);
                }
            }
            rest = if action.trim_right {
                after.trim_start()
            } else {
                after
            };
            let expr = action.expr;
            if let Some(cond) = expr
                .strip_prefix("if ")
                .or_else(|| expr.strip_prefix("with "))
            {
                let v = self.value(cond.trim())?;
                let truthy = match &v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::String(s) => !s.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    Value::Object(o) => !o.is_empty(),
                    Value::Number(_) => true,
                };
                let dot = expr.starts_with("with ").then_some(v);
                blocks.push((truthy, dot));
                continue;
            }
            if expr == "end" {
                blocks.pop().context("an end without its block")?;
                continue;
            }
            if !kept(&blocks) {
                continue;
            }
            let dot = blocks.iter().rev().find_map(|(_, d)| d.clone());
            out.push_str(&self.eval(expr, dot.as_ref())?);
        }
        if !blocks.is_empty() {
            bail!("a block without its end");
        }
        if kept(&blocks) {
            out.push_str(rest);
        }
        Ok(())
    }

    /// A value path: `.Values.a.b`, `$.Values.a`, `.Release.Namespace`.
    fn value(&self, path: &str) -> anyhow::Result<Value> {
        let path = path.trim_start_matches('$');
        if path == ".Release.Namespace" {
            return Ok(self.namespace.into());
        }
        let Some(rest) = path.strip_prefix(".Values.") else {
            bail!("the chart uses {path:?}, which mesh viz install does not render");
        };
        let mut v = self.values;
        for key in rest.split('.') {
            v = v.get(key).unwrap_or(&Value::Null);
        }
        Ok(v.clone())
    }

    fn eval(&self, expr: &str, dot: Option<&Value>) -> anyhow::Result<String> {
        let mut parts = expr.split('|').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let mut v = match head {
            "." => dot.cloned().context("`.` outside a with block")?,
            r#"include "mesh-viz.tag" ."# => {
                let tag = &self.values["image"]["tag"];
                match tag.as_str() {
                    Some(t) if !t.is_empty() => tag.clone(),
                    _ => self.chart["appVersion"].clone(),
                }
            }
            h if h.starts_with("toYaml ") => {
                let v = self.value(h.trim_start_matches("toYaml ").trim())?;
                Value::String(
                    mesh_api::yaml::to_string(&v)
                        .context("toYaml")?
                        .trim_end()
                        .to_string(),
                )
            }
            h => self.value(h)?,
        };
        for f in parts {
            v = match f {
                "quote" => Value::String(serde_json::to_string(&text(&v))?),
                f if f.starts_with("nindent ") => {
                    let n: usize = f["nindent ".len()..].trim().parse()?;
                    let pad = " ".repeat(n);
                    let lines: Vec<String> =
                        text(&v).lines().map(|l| format!("{pad}{l}")).collect();
                    Value::String(format!("\n{}", lines.join("\n")))
                }
                other => bail!(
                    "the chart uses the function {other:?}, which mesh viz install does not render"
                ),
            };
        }
        Ok(text(&v))
    }
}

/// A value as the template prints it.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_action_and_refuses_unknown_ones() {
        let text = render(&Options {
            namespace: "mesh".into(),
            ..Default::default()
        })
        .expect("renders");
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("image: ghcr.io/mesh/viz:0.1.0"), "{text}");
        assert!(!text.contains("MESH_VIZ_IDENTITY_ADDR"));
        assert!(!text.contains("grafana"));
        let with = render(&Options {
            namespace: "mesh".into(),
            trust_anchors: Some(
                "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            ),
            version: Some("9.9".into()),
            ..Default::default()
        })
        .expect("renders");
        assert!(with.contains("MESH_VIZ_IDENTITY_ADDR"));
        assert!(
            with.contains(
                r#"value: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n""#
            ),
            "{with}"
        );
        assert!(with.contains("viz:9.9"));
        let ctx = Ctx {
            values: &Value::Null,
            chart: &Value::Null,
            namespace: "x",
        };
        let mut out = String::new();
        assert!(ctx.render("{{ .Chart.Name }}", &mut out).is_err());
        assert!(ctx.render("{{ .Values.a | upper }}", &mut out).is_err());
        assert!(ctx.render("{{- if .Values.a }}", &mut out).is_err());
    }
}
