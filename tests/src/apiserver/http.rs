//! The wire side: HTTP/1.1 on std threads, one thread per connection,
//! `Connection: close` after every answer. A watch is a chunked response of
//! newline-delimited JSON events, as the real API server streams them.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{Arc, atomic::Ordering, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    Shared,
    selector::Selector,
    store::{Change, KINDS, Kind},
};

/// How long a watch waits between checks of the stop and drop flags.
const POLL: Duration = Duration::from_millis(50);
/// The longest watch we serve, whatever the client asks.
const MAX_WATCH: Duration = Duration::from_mins(5);

struct Request {
    path: String,
    query: Vec<(String, String)>,
}

impl Request {
    fn param(&self, key: &str) -> &str {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

pub fn handle(stream: TcpStream, shared: &Arc<Shared>) {
    let closer = stream.try_clone();
    serve(stream, shared);
    // The accept loop keeps a clone of every connection (so `stop` can cut
    // them); close explicitly so the client sees the end now.
    if let Ok(closer) = closer {
        let _ = closer.shutdown(std::net::Shutdown::Both);
    }
}

fn serve(stream: TcpStream, shared: &Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    let mut stream = stream;
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    if request.path == "/version" {
        let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"});
        return respond(&mut stream, 200, &version);
    }
    let Some((kind, namespace, name)) = route(&segments) else {
        return respond(
            &mut stream,
            404,
            &status(404, "NotFound", "no such resource"),
        );
    };
    let selector = Selector::parse(
        request.param("labelSelector"),
        request.param("fieldSelector"),
    );
    if let Some(name) = name {
        let selector = Selector::parse("", &format!("metadata.name={name}"));
        let (found, _) = shared
            .store()
            .list(kind, namespace.as_deref(), &selector, None, 1);
        return match found.into_iter().next() {
            Some(object) => respond(&mut stream, 200, &object),
            None => respond(&mut stream, 404, &status(404, "NotFound", "not found")),
        };
    }
    let scope = Scope {
        kind,
        namespace: namespace.as_deref(),
        selector: &selector,
        request: &request,
    };
    if matches!(request.param("watch"), "true" | "1") {
        shared.watches.fetch_add(1, Ordering::Relaxed);
        watch(&mut stream, shared, &scope);
    } else {
        shared.lists.fetch_add(1, Ordering::Relaxed);
        list(&mut stream, shared, &scope);
    }
}

/// What one list or watch request asks for.
struct Scope<'a> {
    kind: Kind,
    namespace: Option<&'a str>,
    selector: &'a Selector,
    request: &'a Request,
}

/// `/api/v1/[namespaces/NS/]PLURAL[/NAME]` and the same under
/// `/apis/GROUP/VERSION`.
fn route(segments: &[&str]) -> Option<(Kind, Option<String>, Option<String>)> {
    let rest = match segments {
        ["api", "v1", rest @ ..] => (rest, "v1".to_owned()),
        ["apis", group, version, rest @ ..] => (rest, format!("{group}/{version}")),
        _ => return None,
    };
    let (rest, api_version) = rest;
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some((*name).to_owned())),
        _ => return None,
    };
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| k.plural == plural && k.api_version == api_version)?;
    Some((kind, namespace, name))
}

fn list(stream: &mut TcpStream, shared: &Shared, scope: &Scope<'_>) {
    let Scope {
        kind,
        namespace,
        selector,
        request,
    } = *scope;
    let after = request.param("continue").split_once('/');
    let limit: usize = request
        .param("limit")
        .parse()
        .ok()
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let (items, token, rv) = {
        let store = shared.store();
        let (items, token) = store.list(kind, namespace, selector, after, limit);
        (items, token, store.resource_version())
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = token {
        metadata["continue"] = json!(token);
    }
    let body = json!({
        "apiVersion": kind.api_version,
        "kind": format!("{}List", kind.name),
        "metadata": metadata,
        "items": items,
    });
    respond(stream, 200, &body);
}

fn watch(stream: &mut TcpStream, shared: &Shared, scope: &Scope<'_>) {
    let Scope {
        kind,
        namespace,
        selector,
        request,
    } = *scope;
    let generation = shared.generation.load(Ordering::Acquire);
    let mut bookmarks = shared.bookmarks.load(Ordering::Acquire);
    let want_bookmarks = matches!(request.param("allowWatchBookmarks"), "true" | "1");
    let timeout = request
        .param("timeoutSeconds")
        .parse()
        .map_or(MAX_WATCH, |s: u64| Duration::from_secs(s).min(MAX_WATCH));
    let from: u64 = request.param("resourceVersion").parse().unwrap_or(0);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let subscription = shared.store().watch_from(from, generation);
    let Some((replay, feed)) = subscription else {
        let gone = status(410, "Expired", "too old resource version");
        let _ = send(stream, &json!({"type": "ERROR", "object": gone}));
        let _ = stream.write_all(b"0\r\n\r\n");
        return;
    };
    for change in &replay {
        if let Some(event) = event(change, kind, namespace, selector)
            && send(stream, &event).is_err()
        {
            return;
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if shared.generation.load(Ordering::Acquire) != generation {
            return; // dropped: close abruptly, no final chunk
        }
        if Instant::now() >= deadline {
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        let now_bookmarks = shared.bookmarks.load(Ordering::Acquire);
        if want_bookmarks && now_bookmarks != bookmarks {
            bookmarks = now_bookmarks;
            let rv = shared.store().resource_version();
            let bookmark = json!({
                "type": "BOOKMARK",
                "object": {"kind": kind.name, "apiVersion": kind.api_version,
                           "metadata": {"resourceVersion": rv.to_string()}},
            });
            if send(stream, &bookmark).is_err() {
                return;
            }
        }
        match feed.recv_timeout(POLL) {
            Ok(change) => {
                if let Some(event) = event(&change, kind, namespace, selector)
                    && send(stream, &event).is_err()
                {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The event a watcher with these selectors sees for `change`: an object
/// that stops matching is DELETED for it, one that starts matching ADDED.
fn event(
    change: &Change,
    kind: Kind,
    namespace: Option<&str>,
    selector: &Selector,
) -> Option<Value> {
    if change.kind != kind.name {
        return None;
    }
    let visible = |object: Option<&'_ Value>| -> bool {
        object.is_some_and(|o| {
            namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns) && selector.matches(o)
        })
    };
    let before = change.before.as_ref().filter(|o| visible(Some(o)));
    let after = change.after.as_ref().filter(|o| visible(Some(o)));
    let (kind_of_event, object) = match (before, after) {
        (None, Some(after)) => ("ADDED", after),
        (Some(_), Some(after)) => ("MODIFIED", after),
        (Some(before), None) => ("DELETED", change.after.as_ref().unwrap_or(before)),
        (None, None) => return None,
    };
    Some(json!({"type": kind_of_event, "object": object}))
}

fn send(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    stream.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())?;
    stream.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "message": message, "code": code})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_owned();
    // Headers are read and ignored; the request has no body (GET only).
    for _ in 0..100 {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect();
    Some(Request {
        path: percent_decode(path),
        query,
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(byte);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
