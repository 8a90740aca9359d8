use std::path::Path;

use super::*;

fn parse(text: &str) -> (Vec<Object>, Vec<InputError>) {
    parse_manifest(Path::new("m/web.yaml"), text)
}

fn kinds(objects: &[Object]) -> Vec<&'static str> {
    objects
        .iter()
        .map(|object| match object {
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Node(_) => "Node",
            Object::ServiceCidr(_) => "ServiceCIDR",
        })
        .collect()
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nendpoints: []\n";

struct DocumentCase<'a> {
    text: &'a str,
    want_kinds: &'a [&'a str],
    want_error: &'a [&'a str],
}

#[test]
fn document_table() {
    let cases: &[DocumentCase] = &[
        DocumentCase {
            text: SERVICE,
            want_kinds: &["Service"],
            want_error: &[],
        },
        DocumentCase {
            text: &format!("{SERVICE}---\n{SLICE}"),
            want_kinds: &["Service", "EndpointSlice"],
            want_error: &[],
        },
        DocumentCase {
            text: "---\n# only a comment\n---\n",
            want_kinds: &[],
            want_error: &[],
        },
        DocumentCase {
            text: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
            want_kinds: &[],
            want_error: &[],
        },
        DocumentCase {
            text: "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n",
            want_kinds: &["Node"],
            want_error: &[],
        },
        DocumentCase {
            text: "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16, fd00:96::/112]}\n",
            want_kinds: &["ServiceCIDR"],
            want_error: &[],
        },
        DocumentCase {
            text: "apiVersion: networking.k8s.io/v1beta1\nkind: ServiceCIDR\nmetadata: {name: old}\n",
            want_kinds: &[],
            want_error: &["apiVersion networking.k8s.io/v1beta1 is not supported"],
        },
        DocumentCase {
            text: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n",
            want_kinds: &["Service"],
            want_error: &[],
        },
        DocumentCase {
            text: "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"j\"}}",
            want_kinds: &["Service"],
            want_error: &[],
        },
        DocumentCase {
            text: "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
            want_kinds: &[],
            want_error: &["m/web.yaml: document 1:", "metadata.name"],
        },
        DocumentCase {
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: eighty}]}\n",
            want_kinds: &[],
            want_error: &["m/web.yaml: document 1:"],
        },
        DocumentCase {
            text: &format!("{SERVICE}---\nkind: Service\nmetadata: {{name: x}}\n"),
            want_kinds: &["Service"],
            want_error: &["document 2", "apiVersion and kind are required"],
        },
        DocumentCase {
            text: "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n",
            want_kinds: &[],
            want_error: &["document 1", "v1beta1 is not supported"],
        },
        DocumentCase {
            text: &format!("{SERVICE}---\nmetadata: {{name: broken\nspec: [\n"),
            want_kinds: &["Service"],
            want_error: &["m/web.yaml: document 2:"],
        },
    ];
    check_documents(cases);
}

/// A syntax error costs its own document; the next `---` starts afresh.
#[test]
fn a_broken_document_costs_only_itself() {
    let cases: &[DocumentCase] = &[
        DocumentCase {
            text: &format!("{SERVICE}---\nmetadata: {{name: broken\n---\n{SLICE}...\n"),
            want_kinds: &["Service", "EndpointSlice"],
            want_error: &["m/web.yaml: document 2:", "at line 9 column"],
        },
        DocumentCase {
            text: &format!("---\n{SERVICE}---\n---\n# nothing\n...\n{SLICE}"),
            want_kinds: &["Service", "EndpointSlice"],
            want_error: &[],
        },
    ];
    check_documents(cases);
}

fn check_documents(cases: &[DocumentCase]) {
    for DocumentCase {
        text,
        want_kinds,
        want_error,
    } in cases
    {
        let (objects, errors) = parse(text);
        assert_eq!(kinds(&objects), *want_kinds, "{text}");
        if want_error.is_empty() {
            assert!(errors.is_empty(), "{text}: {errors:?}");
        } else {
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            let line = errors[0].to_string();
            for needle in *want_error {
                assert!(line.contains(needle), "{line:?} lacks {needle:?}");
            }
            assert!(!line.contains('\n'), "{line:?}");
        }
    }
}

#[test]
fn a_folder_loads_yaml_and_json_files_in_name_order_and_skips_the_rest() {
    let dir = std::env::temp_dir().join(format!("sy-manifest-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.yaml"), SERVICE).unwrap();
    fs::write(dir.join("b.yml"), SLICE).unwrap();
    fs::write(
        dir.join("c.json"),
        "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"n\"}}",
    )
    .unwrap();
    fs::write(dir.join(".a.yaml.tmp"), "garbage: [").unwrap();
    fs::write(dir.join("notes.txt"), "garbage: [").unwrap();
    fs::write(dir.join("sub/x.yaml"), "garbage: [").unwrap();
    // Same Service again in a later file: it wins, and the duplicate is named.
    fs::write(
        dir.join("d.yaml"),
        SERVICE.replace("10.96.0.10", "10.96.0.99"),
    )
    .unwrap();

    let loaded = load_dir(&dir, &ProxySelector::default());
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.services.len(), 1);
    assert_eq!(loaded.slices.len(), 1);
    assert_eq!(loaded.nodes.len(), 1);
    let service = &loaded.services[0];
    assert_eq!(service.object.namespace, "default");
    let cluster_ips: Vec<String> = service
        .frontends(&[])
        .iter()
        .map(|claim| claim.frontend.ip.to_string())
        .collect();
    assert_eq!(cluster_ips, ["10.96.0.99"]);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    let line = loaded.errors[0].to_string();
    assert!(line.contains("d.yaml") && line.contains("a.yaml"), "{line}");
    assert_eq!(loaded.errors[0].reason(), "duplicate");

    let web = ObjectRef::new("Service", "default", "web");
    let error = InputError::field(&web, "spec.ports[0].port", Reason::InvalidPort, "0");
    assert!(loaded.attribute(error).to_string().starts_with(&format!(
        "{}: Service default/web",
        dir.join("d.yaml").display()
    )));
}

#[test]
fn a_missing_folder_is_one_error() {
    let loaded = load_dir(
        Path::new("/nonexistent/switchyard-manifests"),
        &ProxySelector::default(),
    );
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].reason(), "unreadable");
}
