//! `mesh inject` and `mesh uninject`: YAML in (files, folders, `-`), YAML out, a line per
//! object on stderr. Nothing is written to stdout unless every object could be handled,
//! so a pipe into `kubectl apply` never applies half a change.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mesh_api::yaml::Value;
use mesh_controller::inject::{self, Config, Mode, Outcome};

/// One input document and where it came from.
struct Doc {
    source: String,
    index: usize,
    value: Value,
}

/// Reads every document of every input, failing on the first unparseable one with its
/// file, document number and position.
fn read_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files: Vec<(String, String)> = Vec::new();
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            files.push(("stdin".into(), text));
        } else if input.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot read {}", input.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            for path in entries {
                files.push((path.display().to_string(), read(&path)?));
            }
        } else {
            files.push((input.display().to_string(), read(input)?));
        }
    }
    let mut docs = Vec::new();
    for (source, text) in files {
        for (i, value) in mesh_api::yaml::documents(&text).enumerate() {
            let mut value = match value {
                Ok(v) => v,
                // The parser cannot resume after a syntax error: stop at the first.
                Err(e) => bail!("{source}: document {}: invalid YAML: {e}", i + 1),
            };
            restore_octal_modes(&mut value);
            docs.push(Doc {
                source: source.clone(),
                index: i + 1,
                value,
            });
        }
    }
    Ok(docs)
}

/// File modes written the YAML 1.1 way (`defaultMode: 0644`, octal) are strings to
/// our reader (YAML 1.2); written back quoted, kubectl would refuse them. They become the
/// numbers they mean (0644 → 420).
fn restore_octal_modes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let is_mode = matches!(k.as_str(), "defaultMode" | "mode");
                if is_mode
                    && let Some(text) = v.as_str()
                    && text.len() > 1
                    && text.starts_with('0')
                    && let Ok(n) = u32::from_str_radix(&text[1..], 8)
                {
                    *v = Value::Number(n.into());
                } else {
                    restore_octal_modes(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(restore_octal_modes),
        _ => {}
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Injects (or, with `mode = None`, uninjects) every object, then prints them all, or
/// nothing if any failed.
pub fn run(inputs: &[PathBuf], mode: Option<Mode>, config: &Config) -> anyhow::Result<()> {
    let docs = read_inputs(inputs)?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut log = Vec::new();
    for mut doc in docs {
        let mut apply = |obj: &mut Value| {
            let name = inject::describe(obj);
            let outcome = match mode {
                Some(mode) => inject::inject(obj, mode, config),
                None => inject::uninject(obj),
            };
            match outcome {
                Ok(o) => log.push(format!(
                    "{name} {}",
                    match o {
                        Outcome::Injected => "injected",
                        Outcome::Annotated => "annotated",
                        Outcome::AlreadyInjected => "already injected",
                        Outcome::Skipped => "skipped",
                        Outcome::Uninjected => "uninjected",
                    }
                )),
                Err(e) => errors.push(format!(
                    "{}: document {}: {name} cannot be meshed: {e}",
                    doc.source, doc.index
                )),
            }
        };
        let is_list = doc.value.get("kind").and_then(Value::as_str) == Some("List");
        if is_list {
            if let Some(items) = doc.value.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    apply(item);
                }
            }
        } else {
            apply(&mut doc.value);
        }
        // Strings kubectl's YAML 1.1 would misread (`yes`, `0644`) are written quoted.
        out.push(mesh_api::yaml::to_string(&doc.value).context("cannot write YAML")?);
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!(
            "nothing written: {} object(s) cannot be meshed",
            errors.len()
        );
    }
    for line in log {
        eprintln!("{line}");
    }
    print!("{}", out.join("---\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml11_words_are_written_quoted_for_kubectl() {
        let text = "a: 'yes'\nb:\n- 'on'\n- 'no'\nc: |\n  d: yes\ne: 'off'\nf: yesterday\n";
        let value: mesh_api::yaml::Value = mesh_api::yaml::from_str(text).expect("yaml");
        let out = mesh_api::yaml::to_string(&value).expect("written");
        for word in [
            r#"a: "yes""#,
            r#"- "on""#,
            r#"- "no""#,
            r#"e: "off""#,
            "f: yesterday",
            "  d: yes",
        ] {
            assert!(out.contains(word), "{word} in {out}");
        }
        assert_eq!(
            mesh_api::yaml::from_str::<mesh_api::yaml::Value>(&out).expect("reads"),
            value
        );
    }
}
