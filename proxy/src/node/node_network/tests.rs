use super::*;

fn device(name: &str, index: u32, addresses: &[&str], default_route: bool) -> Device {
    Device {
        kind: DeviceKind::Other,
        name: name.into(),
        index,
        up: true,
        loopback: name == "lo",
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        default_route,
    }
}

fn snapshot() -> NetworkSnapshot {
    NetworkSnapshot {
        devices: vec![
            device("lo", 1, &["127.0.0.1", "::1"], false),
            device("eth0", 2, &["192.168.77.11", "fd00:77::11"], true),
            device("br0", 3, &["10.244.1.1", "fd00:244:1::1"], false),
            device("eth1", 4, &["172.16.0.5"], false),
        ],
    }
}

fn names(devices: &[&Device]) -> Vec<String> {
    devices.iter().map(|d| d.name.clone()).collect()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn devices_are_named_or_follow_the_default_route() {
    let snap = snapshot();
    assert_eq!(names(&snap.selected(&DeviceSelection::Auto)), ["eth0"]);
    let named = DeviceSelection::from_flag(&["eth1".into(), "missing".into()]);
    assert_eq!(names(&snap.selected(&named)), ["eth1"]);
    assert_eq!(DeviceSelection::from_flag(&[]), DeviceSelection::Auto);
}

#[test]
fn node_port_addresses_follow_kube_proxy() {
    let snap = snapshot();
    let auto = DeviceSelection::Auto;
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[],
            &[
                "10.244.1.1",
                "172.16.0.5",
                "192.168.77.11",
                "fd00:77::11",
                "fd00:244:1::1",
            ],
        ),
        (&["primary"], &["192.168.77.11", "fd00:77::11"]),
        (
            &["192.168.0.0/16", "fd00:77::/64"],
            &["192.168.77.11", "fd00:77::11"],
        ),
        // Named loopback addresses are NodePorts for the node's processes.
        (&["127.0.0.0/8"], &["127.0.0.1"]),
    ];
    for (flag, want) in cases {
        let flag: Vec<String> = flag.iter().map(std::string::ToString::to_string).collect();
        let wanted = NodePortAddresses::from_flag(&flag).unwrap();
        assert_eq!(
            snap.node_port_addresses(&wanted, &auto),
            ips(want),
            "{flag:?}"
        );
    }
    assert!(NodePortAddresses::from_flag(&["nope".into()]).is_err());
}

#[test]
fn snat_addresses_come_from_the_selected_devices() {
    let snap = snapshot();
    let (v4, v6) = snap.snat_addresses(&DeviceSelection::Auto);
    assert_eq!(v4, Some("192.168.77.11".parse().unwrap()));
    assert_eq!(v6, Some("fd00:77::11".parse().unwrap()));
    let (v4, v6) = snap.snat_addresses(&DeviceSelection::Named(vec!["eth1".into()]));
    assert_eq!(v4, Some("172.16.0.5".parse().unwrap()));
    assert_eq!(v6, None);
}

#[tokio::test]
async fn reads_this_namespace_over_rtnetlink() {
    let snap = read().await.unwrap();
    let lo = snap.devices.iter().find(|d| d.name == "lo").unwrap();
    assert!(lo.loopback);
    assert!(lo.addresses.contains(&"127.0.0.1".parse().unwrap()));
}

#[test]
fn every_device_carrying_a_node_port_address_gets_the_programs() {
    let snap = snapshot();
    let auto = DeviceSelection::Auto;
    for (flag, want) in [
        (vec![], vec!["eth0", "br0", "eth1"]),
        (vec!["primary".to_owned()], vec!["eth0"]),
        (vec!["172.16.0.0/12".to_owned()], vec!["eth0", "eth1"]),
    ] {
        let wanted = NodePortAddresses::from_flag(&flag).unwrap();
        let addresses = snap.node_port_addresses(&wanted, &auto);
        assert_eq!(
            names(&snap.packet_devices(&auto, &addresses)),
            want,
            "{flag:?}"
        );
    }
}
