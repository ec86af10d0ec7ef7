//! `mesh inject` and `mesh uninject`: YAML in (files, folders, `-`), YAML out, a line per
//! object on stderr. Nothing is written to stdout unless every object could be handled,
//! so a pipe into `kubectl apply` never applies half a change.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mesh_controller::inject::{self, Config, Mode, Outcome};
use serde_yaml::Value;

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
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = match serde::Deserialize::deserialize(de) {
                Ok(v) => v,
                // The parser cannot resume after a syntax error: stop at the first.
                Err(e) => bail!("{source}: document {}: invalid YAML: {e}", i + 1),
            };
            if !matches!(value, Value::Null) {
                let mut value = value;
                restore_octal_modes(&mut value);
                docs.push(Doc {
                    source: source.clone(),
                    index: i + 1,
                    value,
                });
            }
        }
    }
    Ok(docs)
}

/// File modes written the YAML 1.1 way (`defaultMode: 0644`, octal) are strings to
/// serde_yaml (YAML 1.2); written back quoted, kubectl would refuse them. They become the
/// numbers they mean (0644 → 420).
fn restore_octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let is_mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
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
        Value::Sequence(items) => items.iter_mut().for_each(restore_octal_modes),
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
            if let Some(items) = doc.value.get_mut("items").and_then(Value::as_sequence_mut) {
                for item in items {
                    apply(item);
                }
            }
        } else {
            apply(&mut doc.value);
        }
        out.push(yaml11_safe(
            &serde_yaml::to_string(&doc.value).context("cannot write YAML")?,
        ));
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

/// Words YAML 1.1 reads as booleans or null. kubectl's parser is YAML 1.1, while
/// serde_yaml writes these bare (they are strings in YAML 1.2): quote them, or an
/// annotation `"yes"` would reach the API server as `true`.
const YAML11_WORDS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes bare scalars YAML 1.1 would misread, outside block scalars.
pub fn yaml11_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The indentation of the line that opened a block scalar (`key: |`), while in it.
    let mut block: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent = body.len() - body.trim_start().len();
        if let Some(open) = block {
            if body.trim().is_empty() || indent > open {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        let trimmed = body.trim_end();
        if let Some(last) = trimmed.rsplit(' ').next()
            && is_block_header(last)
            && (trimmed.ends_with(&format!(": {last}")) || trimmed.ends_with(&format!("- {last}")))
        {
            block = Some(indent);
            out.push_str(line);
            continue;
        }
        // `key: value`, `- value` or `- key: value`: the value after the last ": " or "- ".
        let value_at = trimmed
            .rfind(": ")
            .map(|i| i + 2)
            .or_else(|| trimmed.trim_start().starts_with("- ").then_some(indent + 2));
        match value_at {
            Some(at) if YAML11_WORDS.contains(&&trimmed[at..]) => {
                out.push_str(&trimmed[..at]);
                out.push('\'');
                out.push_str(&trimmed[at..]);
                out.push('\'');
                out.push_str(&line[trimmed.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// `|`, `>`, with an optional indentation digit and chomping indicator (`|2-`, `>+`).
fn is_block_header(t: &str) -> bool {
    let mut c = t.chars();
    matches!(c.next(), Some('|' | '>')) && {
        let rest: String = c.collect();
        let rest = rest.trim_start_matches(|d: char| d.is_ascii_digit());
        matches!(rest, "" | "-" | "+")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml11_booleans_are_quoted_outside_block_scalars() {
        let text =
            "a: yes\nb:\n- on\n- 'no'\nc: |\n  d: yes\ne: off\nf: yesterday\ng: |2-\n   x: yes\n";
        assert_eq!(
            super::yaml11_safe(text),
            "a: 'yes'\nb:\n- 'on'\n- 'no'\nc: |\n  d: yes\ne: 'off'\nf: yesterday\ng: |2-\n   x: yes\n"
        );
    }
}
