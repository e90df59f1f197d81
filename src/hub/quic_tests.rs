//! The hub's QUIC side against a hand-driven QUIC edge: UDP opens that survive the loss of
//! their datagram, repeats that are not data, datagrams for sessions that are not open, and
//! protocol errors on the control and connection streams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hub::options::{parse_allowed_edges, HubOptions};
use crate::hub::{Hub, HubEvent};
use crate::protocol::control::{EdgeMessage, HubMessage, UdpOpen};
use crate::protocol::proxy::{encode_v2, ProxyAddresses, ProxyTransport};
use crate::protocol::quic_messages::{
    decode_control, encode_control, encode_datagram, encode_open_datagram,
};
use crate::transport::quic_congestion::{Bounded, MIN_WINDOW_BOUND};
use crate::transport::quic_endpoint::edge_endpoint;
use crate::transport::tls::HubTrust;
use bytes::{Bytes, BytesMut};
use quinn::congestion::Controller;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Guards against a hang only; every wait is for a condition, however long the machine takes.
const WAIT: Duration = Duration::from_secs(30);

/// A hub with one edge allowed on the target's UDP port, and a logged-in QUIC connection.
struct Rig {
    hub: Hub,
    events: Arc<Mutex<Vec<HubEvent>>>,
    target: UdpSocket,
    connection: quinn::Connection,
    control: quinn::SendStream,
    control_recv: quinn::RecvStream,
    _endpoint: quinn::Endpoint,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(json!({})).await
    }

    /// As [`Rig::start`], with more hub options.
    async fn start_with(extra_options: serde_json::Value) -> Rig {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        let mut options = json!({
            "tunnelPort": 0, "bindAddress": "127.0.0.1", "targetHost": "127.0.0.1",
            "udpProxyHeader": "none",
        });
        for (key, value) in extra_options.as_object().unwrap() {
            options[key] = value.clone();
        }
        let options = HubOptions::from_json(&options).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let hub = Hub::start(options, Arc::new(move |e| sink.lock().unwrap().push(e)))
            .await
            .unwrap();
        let allowed = json!([{ "id": "e", "secret": "s3cret-s3cret", "listenPortsUdp": [port] }]);
        hub.update_allowed_edges(parse_allowed_edges(&allowed).unwrap());

        let hub_address: SocketAddr = ([127, 0, 0, 1], hub.tunnel_port()).into();
        let tls = HubTrust::AnyKey.client_config().unwrap();
        let endpoint = edge_endpoint(hub_address, tls, Duration::from_secs(10)).unwrap();
        let connection = endpoint
            .connect(hub_address, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut control, mut control_recv) = connection.open_bi().await.unwrap();
        control.write_all(b"EDGE e s3cret-s3cret\n").await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\n") {
            let chunk = timeout(WAIT, control_recv.read_chunk(4096, true))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            answer.extend_from_slice(&chunk.bytes);
        }
        assert!(
            answer.starts_with(b"{\"listenPorts\":[]"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        Rig {
            hub,
            events,
            target,
            connection,
            control,
            control_recv,
            _endpoint: endpoint,
        }
    }

    fn open_header(&self, client_port: u16) -> Bytes {
        let port = self.target.local_addr().unwrap().port();
        let addresses = ProxyAddresses {
            source: ([203, 0, 113, 9], client_port).into(),
            destination: ([198, 51, 100, 1], port).into(),
        };
        Bytes::from(encode_v2(ProxyTransport::Datagram, &addresses))
    }

    async fn send_control(&mut self, message: EdgeMessage) {
        let mut buf = BytesMut::new();
        encode_control(&message, &mut buf);
        self.control.write_all(&buf).await.unwrap();
    }

    /// The next datagram at the target, and where it came from (the session's hub socket).
    async fn target_receives(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (len, from) = timeout(WAIT, self.target.recv_from(&mut buf))
            .await
            .expect("a datagram at the target")
            .unwrap();
        buf.truncate(len);
        (buf, from)
    }

    /// Returns once the hub has handled every control message sent before: control messages
    /// are handled in order, so its answer to a PING comes after them.
    async fn control_handled(&mut self) {
        let nonce = Bytes::from_static(b"handled?");
        self.send_control(EdgeMessage::Ping(nonce.clone())).await;
        let mut buf = BytesMut::new();
        loop {
            while let Some(message) = decode_control::<HubMessage>(&mut buf).unwrap() {
                if message == HubMessage::Pong(nonce.clone()) {
                    return;
                }
            }
            let chunk = timeout(WAIT, self.control_recv.read_chunk(4096, true))
                .await
                .expect("the hub's PONG")
                .unwrap()
                .expect("the control stream open");
            buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// Waits until the hub holds `count` UDP sessions: from then on a datagram for them is
    /// queued for the target, where one sent before the hub saw the open is dropped.
    async fn sessions_open(&self, count: usize) {
        let open = async {
            while self.hub.status().connected_edges[0].active_udp_sessions != count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(WAIT, open)
            .await
            .unwrap_or_else(|_| panic!("{count} UDP sessions never open at the hub"));
    }

    /// Sends `payload` once for an open `session`; returns the session's hub socket, from
    /// which the target receives it.
    async fn send_and_receive(&self, session: u32, payload: &[u8]) -> SocketAddr {
        self.connection
            .send_datagram(encode_datagram(session, payload))
            .unwrap();
        let (received, from) = self.target_receives().await;
        assert_eq!(received, payload);
        from
    }

    fn dropped(&self) -> u64 {
        self.hub.status().connected_edges[0].udp_datagrams_dropped
    }

    /// The reason the hub's `EdgeDisconnected` event gives.
    async fn reported_disconnect(&self) -> String {
        let disconnected = async {
            loop {
                let found = self.events.lock().unwrap().iter().find_map(|e| match e {
                    HubEvent::EdgeDisconnected { reason, .. } => Some(reason.clone()),
                    _ => None,
                });
                if let Some(reason) = found {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(WAIT, disconnected).await.unwrap()
    }

    async fn disconnect_reason(&self) -> String {
        let closed = timeout(WAIT, self.connection.closed()).await.unwrap();
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => panic!("closed by {other:?}"),
        }
    }
}

/// A UDP_OPEN registration for `session` whose PROXY header is `header`.
fn udp_open(session: u32, header: &Bytes) -> EdgeMessage {
    EdgeMessage::UdpOpen(UdpOpen::decode(session, header.clone()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_registered_only_on_the_control_stream_opens_the_session() {
    let mut rig = Rig::start().await;
    let header = rig.open_header(4000);
    // The open datagram was lost: only the registration arrives.
    rig.send_control(udp_open(1, &header)).await;
    rig.sessions_open(1).await;
    let hub_socket = rig.send_and_receive(1, b"first").await;

    // Replies come back as datagrams of the same session.
    rig.target.send_to(b"reply", hub_socket).await.unwrap();
    let reply = timeout(WAIT, rig.connection.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, encode_datagram(1, b"reply"));

    // The open datagram arriving late is a repeat, not data; what follows is data.
    rig.connection
        .send_datagram(encode_open_datagram(1, &header))
        .unwrap();
    rig.connection
        .send_datagram(encode_datagram(1, b"after"))
        .unwrap();
    let (payload, from) = rig.target_receives().await;
    assert_eq!(payload, b"after");
    assert_eq!(from, hub_socket, "still the same session");
    // Data that merely starts with the open marker is data.
    rig.connection
        .send_datagram(encode_datagram(1, b"\xFFnot an open"))
        .unwrap();
    assert_eq!(rig.target_receives().await.0, b"\xFFnot an open");
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_datagram_opens_the_session_and_its_registration_is_a_repeat() {
    let mut rig = Rig::start().await;
    let header = rig.open_header(4001);
    rig.connection
        .send_datagram(encode_open_datagram(7, &header))
        .unwrap();
    rig.sessions_open(1).await;
    let hub_socket = rig.send_and_receive(7, b"via the datagram").await;
    rig.send_control(udp_open(7, &header)).await;
    rig.control_handled().await;
    let again = rig.send_and_receive(7, b"one session").await;
    assert_eq!(
        again, hub_socket,
        "the registration did not open a second session"
    );
    assert_eq!(rig.hub.status().connected_edges[0].active_udp_sessions, 1);
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_mtu_discovery_fits_several_udp_datagrams_in_one_packet() {
    let rig = Rig::start().await;
    // 1452 bytes is quinn's default bound; loopback lets discovery go to ours.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.connection.max_datagram_size().unwrap_or(0) < 4 * 1200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "MTU discovery stopped at {:?} bytes per datagram",
            rig.connection.max_datagram_size()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let header = rig.open_header(4003);
    rig.connection
        .send_datagram(encode_open_datagram(9, &header))
        .unwrap();
    let large = vec![b'x'; 4 * 1200];
    rig.sessions_open(1).await;
    rig.send_and_receive(9, &large).await;
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_steady_traffic_stays_one_session_past_its_idle_timeout() {
    // Datagrams 100 ms apart against a 2 s timeout: only a stall of twenty gaps could end
    // the session between two of them, so a loaded machine does not change the outcome.
    let idle = Duration::from_secs(2);
    let rig = Rig::start_with(json!({ "udpIdleTimeoutMs": idle.as_millis() as u64 })).await;
    rig.connection
        .send_datagram(encode_open_datagram(3, &rig.open_header(4004)))
        .unwrap();
    rig.sessions_open(1).await;
    let hub_socket = rig.send_and_receive(3, b"0").await;
    // Traffic for more than two idle timeouts, as measured here: one session throughout.
    let started = tokio::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0;
    while started.elapsed() < idle * 5 / 2 {
        pace.tick().await;
        i += 1;
        let payload = i.to_string();
        let from = rig.send_and_receive(3, payload.as_bytes()).await;
        assert_eq!(from, hub_socket, "datagram {i} came from another session");
    }
    assert_eq!(rig.hub.status().connected_edges[0].active_udp_sessions, 1);
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_for_sessions_that_are_not_open_are_dropped_and_counted() {
    let rig = Rig::start().await;
    let before = rig.dropped();
    rig.connection
        .send_datagram(encode_datagram(99, b"nobody"))
        .unwrap();
    // Shorter than a session id: nothing to count it against, and no harm done.
    rig.connection
        .send_datagram(Bytes::from_static(&[1, 2]))
        .unwrap();
    let counted = async {
        while rig.dropped() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, counted)
        .await
        .expect("the drop to be counted");
    // The tunnel is still up and a real session works.
    rig.connection
        .send_datagram(encode_open_datagram(100, &rig.open_header(4002)))
        .unwrap();
    rig.sessions_open(1).await;
    rig.send_and_receive(100, b"still up").await;
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_id_does_not_grow_closes_the_tunnel() {
    let mut rig = Rig::start().await;
    let header = rig.open_header(4003);
    rig.send_control(udp_open(5, &header)).await;
    rig.send_control(udp_open(5, &header)).await;
    let reason = rig.disconnect_reason().await;
    assert!(reason.contains("protocol error"), "{reason}");
    assert!(reason.contains("id 5 opened after 5"), "{reason}");
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stream_without_a_proxy_line_closes_the_tunnel_with_a_reason() {
    let rig = Rig::start().await;
    let (mut send, _recv) = rig.connection.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reason = rig.disconnect_reason().await;
    assert!(reason.contains("PROXY v1"), "{reason}");
    let reported = rig.reported_disconnect().await;
    assert!(reported.starts_with("protocol error"), "{reported}");
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_bulk_transfer_keeps_its_window_at_the_short_path_bound() {
    let rig = Rig::start().await;
    let header = rig.open_header(4004);
    rig.connection
        .send_datagram(encode_open_datagram(11, &header))
        .unwrap();
    rig.sessions_open(1).await;
    rig.send_and_receive(11, b"first").await;
    // Datagrams are congestion controlled like stream data. Sent faster than they are
    // acknowledged, the controller's own window reaches the bound on loopback. The bound
    // follows the shortest round trip measured, which a loaded machine makes longer: the
    // controller's own bound is what the window is held to.
    let payload = Bytes::from(vec![b'x'; 1200]);
    let send = || async {
        let datagram = encode_datagram(11, &payload);
        rig.connection.send_datagram_wait(datagram).await.unwrap();
        let controller = rig.connection.congestion_state().into_any();
        let controller = controller.downcast::<Bounded>().unwrap();
        (controller.window(), controller.bound())
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut window, mut bound) = send().await;
    while Some(window) != bound {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window never settled at the bound of {bound:?}: {window}"
        );
        (window, bound) = send().await;
    }
    let mut above = Vec::new();
    for _ in 0..(16 << 20) / payload.len() {
        (window, bound) = send().await;
        let bound = bound.expect("a bound once one was measured");
        assert!(bound >= MIN_WINDOW_BOUND, "{bound}");
        if window > bound {
            above.push((window, bound));
        }
    }
    assert!(above.is_empty(), "above the bound: {above:?}");
    rig.hub.stop().await;
}

/// Assigns the edge `ports` for TCP, beside the UDP target's port.
fn allow_tcp(rig: &Rig, ports: &[u16]) {
    let udp = rig.target.local_addr().unwrap().port();
    let allowed = json!([{ "id": "e", "secret": "s3cret-s3cret", "listenPorts": ports, "listenPortsUdp": [udp] }]);
    rig.hub
        .update_allowed_edges(parse_allowed_edges(&allowed).unwrap());
}

/// A TCP target on an assigned port that hands its first connection to `serve`: returns the
/// port.
async fn tcp_target(
    rig: &Rig,
    serve: impl FnOnce(tokio::net::TcpStream) -> tokio::task::JoinHandle<()> + Send + 'static,
) -> u16 {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    allow_tcp(rig, &[port]);
    tokio::spawn(async move {
        if let Ok((socket, _)) = target.accept().await {
            let _ = serve(socket).await;
        }
    });
    port
}

/// A connection stream to `port`, announced by its PROXY line.
async fn open_connection_stream(rig: &Rig, port: u16) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = rig.connection.open_bi().await.unwrap();
    let line = format!("PROXY TCP4 203.0.113.9 198.51.100.1 4321 {port}\r\n");
    send.write_all(line.as_bytes()).await.unwrap();
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_sends_a_connection_only_what_the_edge_granted() {
    use tokio::io::AsyncWriteExt;
    const RESPONSE: usize = 1 << 20;
    const STEP: u32 = 100_000;
    let mut rig = Rig::start().await;
    let port = tcp_target(&rig, |mut socket| {
        tokio::spawn(async move {
            socket.write_all(&vec![b'r'; RESPONSE]).await.unwrap();
            socket.shutdown().await.unwrap();
            // Held open until the hub has sent everything on.
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut Vec::new()).await;
        })
    })
    .await;
    let (_send, mut recv) = open_connection_stream(&rig, port).await;
    let stream = u32::try_from(recv.id().index()).unwrap();
    let mut granted = crate::mux::flow::INITIAL_STREAM_WINDOW as usize;
    let mut received = 0;
    loop {
        if received == granted {
            rig.send_control(EdgeMessage::WindowUpdate {
                stream,
                credit: STEP,
            })
            .await;
            granted += STEP as usize;
        }
        let chunk = timeout(WAIT, recv.read_chunk(usize::MAX, true))
            .await
            .expect("the target's bytes within the credit")
            .unwrap();
        let Some(chunk) = chunk else { break };
        received += chunk.bytes.len();
        assert!(
            received <= granted,
            "{received} bytes received, {granted} granted"
        );
    }
    assert_eq!(received, RESPONSE);
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stream_past_its_credit_closes_the_tunnel_with_a_reason() {
    // The target takes the connection and never reads, so the hub grants no more than its
    // socket buffers took and the stream's window: far less than the edge sends.
    let rig = Rig::start().await;
    let port = tcp_target(&rig, |socket| {
        tokio::spawn(async move {
            let _held = socket;
            std::future::pending::<()>().await;
        })
    })
    .await;
    let (mut send, _recv) = open_connection_stream(&rig, port).await;
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 1 << 20]);
        for _ in 0..128 {
            if send.write_chunk(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let reason = rig.disconnect_reason().await;
    assert!(reason.contains("window left"), "{reason}");
    let reported = rig.reported_disconnect().await;
    assert!(reported.starts_with("protocol error"), "{reported}");
    rig.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_their_target_hold_up_no_other() {
    // quinn's connection window at the hub is an eighth of this 16 MiB budget, 2 MiB. Each
    // waiting connection sends the 64 KiB every stream may send before the hub grants more:
    // held unread inside quinn, 40 of them were 2.5 MiB.
    const WAITING: usize = 40;
    let rig = Rig::start_with(json!({
        "proxyProtocol": "none", "limits": { "tunnelBufferBytes": 16 << 20 },
    }))
    .await;
    // A target whose accept queue is full: the hub's connects to it wait until they time out.
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    slow.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    slow.listen(0).unwrap();
    let slow_port = slow.local_addr().unwrap().as_socket().unwrap().port();
    let queued: Vec<_> = (0..2)
        .filter_map(|_| {
            let address = SocketAddr::from(([127, 0, 0, 1], slow_port));
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()
        })
        .collect();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    allow_tcp(&rig, &[slow_port, echo_port]);
    let mut waiting = Vec::new();
    for _ in 0..WAITING {
        let (mut send, recv) = open_connection_stream(&rig, slow_port).await;
        send.write_all(&vec![
            b'w';
            crate::mux::flow::INITIAL_STREAM_WINDOW as usize
        ])
        .await
        .unwrap();
        waiting.push((send, recv));
    }
    let (mut send, mut recv) = open_connection_stream(&rig, echo_port).await;
    send.write_all(b"still served").await.unwrap();
    let mut answer = [0u8; 12];
    timeout(WAIT, recv.read_exact(&mut answer))
        .await
        .expect("the echo while the others wait")
        .unwrap();
    assert_eq!(&answer, b"still served");
    // They were waiting all along: a connect that timed out would have closed its stream.
    let open = rig.hub.status().connected_edges[0].active_streams;
    assert_eq!(open, WAITING + 1, "{} queued connects", queued.len());
    rig.hub.stop().await;
}
