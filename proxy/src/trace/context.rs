//! Trace context on the wire: W3C `traceparent` (with `tracestate` passed on as it
//! came), B3's single `b3` header and its `X-B3-*` headers. A request keeps the
//! format it came with; one that came with none gets `traceparent`.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// W3C Trace Context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// B3 in one header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3's trace id header.
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3's span id header.
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3's parent span id header.
pub const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3's sampling decision header.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3's debug flag header (debug implies sampled).
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// The request id Envoy and most gateways set.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which headers carried the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `traceparent`.
    W3c,
    /// `b3`.
    B3Single,
    /// `X-B3-TraceId` and the rest.
    B3Multi,
}

/// The context a request came with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Its trace, if it named one (B3 may carry a bare decision).
    pub ids: Option<([u8; 16], [u8; 8])>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// Where it was found.
    pub format: Format,
    /// A 64-bit B3 trace id, to be sent on as 64 bits.
    pub short: bool,
}

/// The context a request leaves with: its trace, this proxy's span, the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This proxy's span, the parent of what the next hop does.
    pub span_id: [u8; 8],
    /// The span this proxy's span is a child of.
    pub parent: Option<[u8; 8]>,
    /// Whether the trace is recorded.
    pub sampled: bool,
}

/// The context `headers` carry, if any: `traceparent` first, then `b3`, then
/// `X-B3-*`. Malformed values are ignored, as if absent (a caller's bad header must
/// not fail its request).
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    if let Some(v) = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok())
        && let Some(c) = traceparent(v)
    {
        return Some(c);
    }
    if let Some(v) = headers.get(&B3).and_then(|v| v.to_str().ok())
        && let Some(c) = b3_single(v)
    {
        return Some(c);
    }
    b3_multi(headers)
}

/// Parses `00-<trace>-<span>-<flags>` (later versions: the same four fields first).
fn traceparent(v: &str) -> Option<Incoming> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || !is_lower_hex(version) {
        return None;
    }
    // Version 00 has exactly four fields; later ones may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = hex16(trace)?;
    let span_id = hex8(span)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Incoming {
        ids: Some((trace_id, span_id)),
        sampled: Some(flags & 1 == 1),
        format: Format::W3c,
        short: false,
    })
}

/// Parses `b3: {trace}-{span}[-{sampling}[-{parent}]]` or a bare `b3: {sampling}`.
fn b3_single(v: &str) -> Option<Incoming> {
    let v = v.trim();
    let fields: Vec<&str> = v.split('-').collect();
    match fields.as_slice() {
        [decision] => Some(Incoming {
            ids: None,
            sampled: Some(b3_decision(decision)?),
            format: Format::B3Single,
            short: false,
        }),
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let (trace_id, short) = b3_trace_id(trace)?;
            let span_id = b3_span_id(span)?;
            let sampled = match rest.first() {
                Some(d) => Some(b3_decision(d)?),
                None => None,
            };
            if let Some(parent) = rest.get(1) {
                b3_span_id(parent)?;
            }
            Some(Incoming {
                ids: Some((trace_id, span_id)),
                sampled,
                format: Format::B3Single,
                short,
            })
        }
        _ => None,
    }
}

/// Parses the `X-B3-*` headers.
fn b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // Most requests carry none: two lookups decide that.
    if !headers.contains_key(&B3_TRACE_ID)
        && !headers.contains_key(&B3_SAMPLED)
        && !headers.contains_key(&B3_FLAGS)
    {
        return None;
    }
    let debug = get(&B3_FLAGS).is_some_and(|f| f.trim() == "1");
    let sampled = match get(&B3_SAMPLED).map(str::trim) {
        _ if debug => Some(true),
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    let ids = match (get(&B3_TRACE_ID), get(&B3_SPAN_ID)) {
        (Some(t), Some(s)) => Some((b3_trace_id(t.trim())?, b3_span_id(s.trim())?)),
        _ => None,
    };
    if ids.is_none() && sampled.is_none() {
        return None;
    }
    Some(Incoming {
        ids: ids.map(|((t, _), s)| (t, s)),
        sampled,
        format: Format::B3Multi,
        short: ids.is_some_and(|((_, short), _)| short),
    })
}

fn b3_decision(d: &str) -> Option<bool> {
    match d {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, kept in the low half).
fn b3_trace_id(s: &str) -> Option<([u8; 16], bool)> {
    let id = match s.len() {
        32 => (hex16(s)?, false),
        16 => {
            let low = hex8(s)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            (id, true)
        }
        _ => return None,
    };
    (id.0 != [0; 16]).then_some(id)
}

fn b3_span_id(s: &str) -> Option<[u8; 8]> {
    if s.len() != 16 {
        return None;
    }
    hex8(s).filter(|id| *id != [0; 8])
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex16(s: &str) -> Option<[u8; 16]> {
    if !is_lower_hex(s) {
        return None;
    }
    u128::from_str_radix(s, 16).ok().map(u128::to_be_bytes)
}

fn hex8(s: &str) -> Option<[u8; 8]> {
    if !is_lower_hex(s) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(u64::to_be_bytes)
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// A fresh non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A fresh non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A fresh request id: a random (version 4) UUID.
pub fn new_request_id() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    let mut id = String::with_capacity(36);
    for (i, part) in [&h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            id.push('-');
        }
        id.push_str(part);
    }
    id
}

/// Writes `out` into `headers` in `format` (`None`: the request came with no context,
/// and leaves with `traceparent`), replacing what the caller sent in that format.
pub fn inject(headers: &mut HeaderMap, out: &Outgoing, incoming: Option<&Incoming>) {
    let format = incoming.map_or(Format::W3c, |i| i.format);
    let short = incoming.is_some_and(|i| i.short);
    let trace = if short {
        hex(&out.trace_id[8..])
    } else {
        hex(&out.trace_id)
    };
    let span = hex(&out.span_id);
    let value = |s: String| HeaderValue::try_from(s).ok();
    match format {
        Format::W3c => {
            let mut v = String::with_capacity(55);
            v.push_str("00-");
            v.push_str(&trace);
            v.push('-');
            v.push_str(&span);
            v.push_str(if out.sampled { "-01" } else { "-00" });
            if let Some(v) = value(v) {
                headers.insert(TRACEPARENT, v);
            }
        }
        Format::B3Single => {
            let decision = if out.sampled { "1" } else { "0" };
            let v = match out.parent {
                Some(p) => format!("{trace}-{span}-{decision}-{}", hex(&p)),
                None => format!("{trace}-{span}-{decision}"),
            };
            if let Some(v) = value(v) {
                headers.insert(B3, v);
            }
        }
        Format::B3Multi => {
            if let Some(v) = value(trace) {
                headers.insert(B3_TRACE_ID, v);
            }
            if let Some(v) = value(span) {
                headers.insert(B3_SPAN_ID, v);
            }
            match out.parent.and_then(|p| value(hex(&p))) {
                Some(v) => {
                    headers.insert(B3_PARENT, v);
                }
                None => {
                    headers.remove(B3_PARENT);
                }
            }
            // Debug was honoured as sampled; the decision goes on as a plain one.
            headers.remove(B3_FLAGS);
            headers.insert(
                B3_SAMPLED,
                HeaderValue::from_static(if out.sampled { "1" } else { "0" }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_is_read_and_written_back_with_this_proxys_span() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let c = extract(&h).expect("context");
        assert_eq!(c.format, Format::W3c);
        assert_eq!(c.sampled, Some(true));
        let (t, s) = c.ids.expect("ids");
        assert_eq!((hex(&t), hex(&s)), (TRACE.to_string(), SPAN.to_string()));

        let mut h = h;
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let out = Outgoing {
            trace_id: t,
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent: Some(s),
            sampled: false,
        };
        inject(&mut h, &out, Some(&c));
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00"
        );
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE", "passed on as it came");
    }

    #[test]
    fn malformed_w3c_is_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "garbage",
            "",
        ] {
            let h = headers(&[("traceparent", bad)]);
            assert_eq!(extract(&h), None, "{bad:?}");
        }
        // A later version may add fields after the four it shares with 00.
        let h = headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        )]);
        assert!(extract(&h).is_some());
    }

    #[test]
    fn b3_single_and_multi() {
        let h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let c = extract(&h).expect("b3");
        assert_eq!(c.format, Format::B3Single);
        assert_eq!(c.sampled, Some(true));
        assert_eq!(
            hex(&c.ids.expect("ids").1),
            "e457b5a2e4d86bd1",
            "the caller's span is the parent"
        );
        assert_eq!(
            extract(&headers(&[("b3", "0")])),
            Some(Incoming {
                ids: None,
                sampled: Some(false),
                format: Format::B3Single,
                short: false
            })
        );
        assert_eq!(
            extract(&headers(&[("b3", "d")])).and_then(|c| c.sampled),
            Some(true)
        );
        assert!(extract(&headers(&[("b3", "x-y-z")])).is_none());

        // 64-bit trace ids stay 64 bits on the way out.
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]);
        let c = extract(&h).expect("b3 multi");
        assert_eq!(c.format, Format::B3Multi);
        assert!(c.short);
        assert_eq!(c.sampled, Some(true), "debug implies sampled");
        let (t, s) = c.ids.expect("ids");
        let out = Outgoing {
            trace_id: t,
            span_id: [0xab; 8],
            parent: Some(s),
            sampled: true,
        };
        inject(&mut h, &out, Some(&c));
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(h["x-b3-spanid"], "abababababababab");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(h.get("x-b3-flags").is_none());

        // No context: traceparent.
        let mut h = HeaderMap::new();
        inject(&mut h, &out, None);
        assert_eq!(
            h["traceparent"],
            "00-0000000000000000463ac35c9f6413ad-abababababababab-01"
        );
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_request_id());
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
