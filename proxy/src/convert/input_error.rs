//! Bad input: one clear line per problem, naming where, which object and
//! which field, plus a short label that a metric can count without
//! unbounded cardinality.

use std::{fmt, path::PathBuf};

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Api,
    File { path: PathBuf },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api => f.write_str("api"),
            Self::File { path } => write!(f, "{}", OneLine(&path.display().to_string())),
        }
    }
}

/// Text from the input, shown on one line whatever it holds: control
/// characters (a newline in a name or a file name, an escape sequence) and
/// Unicode's line separators are escaped, so an error stays one line and a
/// crafted name cannot forge log lines of its own.
pub struct OneLine<'a>(pub &'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// A Kubernetes object as people name it: `Service default/web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = (OneLine(&self.kind), OneLine(&self.name));
        if self.namespace.is_empty() {
            write!(f, "{kind} {name}")
        } else {
            write!(f, "{kind} {}/{name}", OneLine(&self.namespace))
        }
    }
}

/// What kind of problem; the label of the error-count metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidIp,
    InvalidPort,
    MissingField,
    ParseError,
    Unsupported,
    Duplicate,
    Conflict,
    /// An address the node's policy does not serve (`--external-ip-ranges`,
    /// the node's own addresses).
    Refused,
    TooManyEndpoints,
    /// The maps have no room left for the object's entries.
    NoRoom,
    /// The object alone asks for more map entries than one may take.
    OverBudget,
    Unreadable,
}

impl Reason {
    pub const fn label(self) -> &'static str {
        match self {
            Self::InvalidIp => "invalid_ip",
            Self::InvalidPort => "invalid_port",
            Self::MissingField => "missing_field",
            Self::ParseError => "parse_error",
            Self::Unsupported => "unsupported",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::TooManyEndpoints => "too_many_endpoints",
            Self::NoRoom => "no_room",
            Self::OverBudget => "over_budget",
            Self::Unreadable => "unreadable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A problem with one field of one identified object.
    #[error("{origin}: {object}: {}: {}", OneLine(.field), OneLine(.detail))]
    Field {
        origin: Origin,
        object: ObjectRef,
        /// JSON-path style, as `kubectl explain` spells it: `spec.ports[1].port`.
        field: String,
        reason: Reason,
        detail: String,
    },
    /// A document that could not be read as an object at all.
    #[error("{origin}: document {document}: {}", OneLine(.detail))]
    Document {
        origin: Origin,
        /// 1-based position in its file, as an editor would count it.
        document: usize,
        reason: Reason,
        detail: String,
    },
    /// A file or directory that could not be read.
    #[error("{origin}: {}", OneLine(.detail))]
    Unreadable { origin: Origin, detail: String },
}

impl InputError {
    /// A field error whose origin is filled in later by whoever knows it
    /// (see [`InputError::with_origin`]); the conversion layer only sees
    /// objects.
    pub fn field(
        object: &ObjectRef,
        field: impl Into<String>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        Self::Field {
            origin: Origin::Api,
            object: object.clone(),
            field: field.into(),
            reason,
            detail: detail.into(),
        }
    }

    /// The short machine label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Field { reason, .. } | Self::Document { reason, .. } => reason.label(),
            Self::Unreadable { .. } => Reason::Unreadable.label(),
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            Self::Field { origin, .. }
            | Self::Document { origin, .. }
            | Self::Unreadable { origin, .. } => origin,
        }
    }

    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            Self::Field { object, .. } => Some(object),
            Self::Document { .. } | Self::Unreadable { .. } => None,
        }
    }

    #[must_use]
    pub fn with_origin(mut self, new: Origin) -> Self {
        match &mut self {
            Self::Field { origin, .. }
            | Self::Document { origin, .. }
            | Self::Unreadable { origin, .. } => *origin = new,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask fuzz`: a namespace holding newlines (a YAML
    /// flow scalar over several lines) made a three-line error.
    #[test]
    fn input_text_never_breaks_the_line() {
        let object = ObjectRef::new("Service", "por\n\ntystem", "dns\u{1b}[2J");
        let file = Origin::File {
            path: "a\nb.yaml".into(),
        };
        let error = InputError::field(&object, "spec.x\r", Reason::ParseError, "bad \"\u{2028}\"")
            .with_origin(file);
        assert_eq!(
            error.to_string(),
            r#"a\nb.yaml: Service por\n\ntystem/dns\u{1b}[2J: spec.x\r: bad "\u{2028}""#
        );
    }

    #[test]
    fn renders_one_line_naming_where_what_and_field() {
        let web = ObjectRef::new("Service", "default", "web");
        let file = Origin::File {
            path: "manifests/web.yaml".into(),
        };
        let cases = [
            (
                InputError::field(
                    &web,
                    "spec.ports[1].port",
                    Reason::InvalidPort,
                    "must be 1-65535, got 0",
                )
                .with_origin(file.clone()),
                "manifests/web.yaml: Service default/web: spec.ports[1].port: must be 1-65535, got 0",
                "invalid_port",
            ),
            (
                InputError::field(
                    &web,
                    "spec.clusterIPs[0]",
                    Reason::InvalidIp,
                    "not an IP address: \"x\"",
                ),
                "api: Service default/web: spec.clusterIPs[0]: not an IP address: \"x\"",
                "invalid_ip",
            ),
            (
                InputError::Document {
                    origin: file.clone(),
                    document: 2,
                    reason: Reason::ParseError,
                    detail: "did not find expected node content".into(),
                },
                "manifests/web.yaml: document 2: did not find expected node content",
                "parse_error",
            ),
            (
                InputError::Unreadable {
                    origin: file,
                    detail: "permission denied".into(),
                },
                "manifests/web.yaml: permission denied",
                "unreadable",
            ),
            (
                InputError::field(
                    &ObjectRef::new("Node", "", "n1"),
                    "metadata.name",
                    Reason::Duplicate,
                    "d",
                ),
                "api: Node n1: metadata.name: d",
                "duplicate",
            ),
        ];
        for (error, text, reason) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(error.reason(), reason);
            assert!(!text.contains('\n'));
        }
    }
}
