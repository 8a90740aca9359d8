//! Label and field selectors, as the API server evaluates them: `key`,
//! `!key`, `key=value`, `key==value`, `key!=value`, comma meaning AND;
//! fields `metadata.name` and `metadata.namespace`.

use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<(String, String, bool)>,
}

#[derive(Clone, Debug)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Selector {
    pub fn parse(labels: &str, fields: &str) -> Self {
        let terms = |text: &str| -> Vec<String> {
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        };
        let labels = terms(labels)
            .into_iter()
            .map(|term| {
                if let Some((key, value)) = term.split_once("!=") {
                    Requirement::NotEquals(key.into(), value.into())
                } else if let Some((key, value)) = term.split_once("==").or(term.split_once('=')) {
                    Requirement::Equals(key.into(), value.into())
                } else if let Some(key) = term.strip_prefix('!') {
                    Requirement::NotExists(key.into())
                } else {
                    Requirement::Exists(term)
                }
            })
            .collect();
        let fields = terms(fields)
            .into_iter()
            .filter_map(|term| {
                if let Some((key, value)) = term.split_once("!=") {
                    Some((key.into(), value.into(), false))
                } else {
                    let (key, value) = term.split_once("==").or(term.split_once('='))?;
                    Some((key.into(), value.into(), true))
                }
            })
            .collect();
        Self { labels, fields }
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|requirement| match requirement {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
            Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
        });
        let fields_ok = self.fields.iter().all(|(path, value, equal)| {
            let actual = path
                .split('.')
                .try_fold(object, |v, part| v.get(part))
                .and_then(Value::as_str)
                .unwrap_or_default();
            (actual == value) == *equal
        });
        labels_ok && fields_ok
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selector_table() {
        let plain = json!({"metadata": {"name": "a", "labels": {"app": "web"}}});
        let other = json!({"metadata": {"name": "b", "labels": {"service.kubernetes.io/service-proxy-name": "x"}}});
        let agent = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
        let cases = [
            (agent, "", &plain, true),
            (agent, "", &other, false),
            ("app=web", "", &plain, true),
            ("app==web,app", "", &plain, true),
            ("app!=web", "", &plain, false),
            ("", "metadata.name=a", &plain, true),
            ("", "metadata.name=b", &plain, false),
        ];
        for (labels, fields, object, expected) in cases {
            assert_eq!(
                Selector::parse(labels, fields).matches(object),
                expected,
                "{labels} {fields}"
            );
        }
    }
}
