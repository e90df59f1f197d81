//! The hub's QUIC port against sources that never log in: a forged Initial is answered with a
//! stateless Retry and costs the hub no connection, and a real edge still gets in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::options::{parse_allowed_edges, HubOptions};
use crate::hub::Hub;
use crate::transport::quic_endpoint::edge_endpoint;
use crate::transport::tls::HubTrust;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Guards against a hang only.
const WAIT: Duration = Duration::from_secs(30);

async fn start_hub(extra: serde_json::Value) -> Hub {
    let mut options = json!({ "tunnelPort": 0, "bindAddress": "127.0.0.1" });
    for (key, value) in extra.as_object().unwrap() {
        options[key] = value.clone();
    }
    let hub = Hub::start(HubOptions::from_json(&options).unwrap(), Arc::new(|_| {}))
        .await
        .unwrap();
    let allowed = json!([{ "id": "e", "secret": "s3cret-s3cret" }]);
    hub.update_allowed_edges(parse_allowed_edges(&allowed).unwrap());
    hub
}

/// The value of one sample in the hub's metrics text.
fn metric(hub: &Hub, sample: &str) -> u64 {
    let text = hub.metrics();
    let line = text
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"));
    line[sample.len() + 1..].parse().unwrap()
}

/// The first datagram a real QUIC client sends to `hub`: a valid Initial carrying its
/// ClientHello, caught by a socket that never answers.
async fn a_real_initial() -> Vec<u8> {
    let catcher = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = catcher.local_addr().unwrap();
    let tls = HubTrust::AnyKey.client_config().unwrap();
    let endpoint = edge_endpoint(address, tls, Duration::from_secs(10)).unwrap();
    let _connecting = endpoint.connect(address, "127.0.0.1").unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, _) = timeout(WAIT, catcher.recv_from(&mut buf))
        .await
        .expect("the client's Initial")
        .unwrap();
    buf.truncate(len);
    buf
}

/// A QUIC v1 long-header packet of type Retry (RFC 9000, 17.2.5).
fn is_retry(packet: &[u8]) -> bool {
    packet.len() > 5 && packet[0] & 0xF0 == 0xF0 && packet[1..5] == [0, 0, 0, 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_from_unproven_sources_get_a_retry_and_no_connection() {
    let hub = start_hub(json!({})).await;
    let hub_address: SocketAddr = ([127, 0, 0, 1], hub.tunnel_port()).into();
    let initial = a_real_initial().await;
    assert_eq!(initial[0] & 0xF0, 0xC0, "an Initial");

    // The same Initial from 50 sources, as a flood with forged addresses would send it.
    for i in 1..=50u8 {
        let source = UdpSocket::bind(SocketAddr::from(([127, 5, 0, i], 0)))
            .await
            .unwrap();
        source.send_to(&initial, hub_address).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, from) = timeout(WAIT, source.recv_from(&mut buf))
            .await
            .expect("an answer to the Initial")
            .unwrap();
        assert_eq!(from, hub_address);
        assert!(is_retry(&buf[..len]), "not a Retry: {:02x?}", &buf[..8]);
    }
    // None of them became a connection or a pending login.
    assert_eq!(metric(&hub, "remoteingress_hub_handshakes_pending"), 0);
    assert_eq!(
        metric(
            &hub,
            "remoteingress_hub_handshake_failures_total{reason=\"tls\"}"
        ),
        0
    );
    assert!(hub.status().connected_edges.is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_quic_turned_off_does_not_answer_on_udp() {
    let hub = start_hub(json!({ "quic": false })).await;
    let hub_address: SocketAddr = ([127, 0, 0, 1], hub.tunnel_port()).into();
    let initial = a_real_initial().await;
    let source = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    source.connect(hub_address).await.unwrap();
    source.send(&initial).await.unwrap();
    // Nothing listens on the UDP port: the kernel answers with port unreachable, which a
    // connected socket reports on its next receive.
    let mut buf = vec![0u8; 2048];
    let received = timeout(WAIT, source.recv(&mut buf))
        .await
        .expect("an answer");
    assert_eq!(
        received.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    hub.stop().await;
}
