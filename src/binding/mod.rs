//! The napi surface: two classes and the token functions. JavaScript sees them through the
//! hand-written facade in index.js, which turns events into EventEmitter calls. Errors are
//! made here, as JavaScript `Error`s with their `code` set, and reach JavaScript unchanged.

mod allocator;
mod runtime;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{watch, Mutex};

use crate::config::{from_value, required, ConfigError, EdgeId, HostName, Port, Secret, Text};
use crate::edge::options::{hub_list, EdgeOptions, HubEntryConfig, DEFAULT_HUB_PORT};
use crate::edge::{Edge, EdgeEvent};
use crate::events::EventSink;
use crate::hub::options::{parse_allowed_edges, parse_stop_options, HubOptions};
use crate::hub::{Hub, HubEvent, HubStartError};
use crate::lock::Locked;
use crate::protocol::token::{decode_token, encode_token, ConnectionToken};
use crate::transport::quic_endpoint::QuicSetupError;
use crate::transport::tls::{validate_fingerprint, HubIdentity, TlsSetupError};

/// Weak: events never keep Node alive; a pending `waitForStop()` does, while running.
///
/// A threadsafe function holds its JavaScript function strongly, and the facade's callback
/// closes over the facade, which holds the native object. So the callback is passed to
/// `start()` and lives in the running hub or edge only: once stopped, nothing native refers
/// to the facade and the garbage collector can free both. Held from the constructor, it made
/// every hub and edge ever created a GC root (about 3.5 KiB of native heap per pair, never
/// freed). It is called without a payload: it only says that events are queued.
type EventCallback = ThreadsafeFunction<Value, (), Value, Status, false, true>;

/// The `code` of an error JavaScript gets (README, "API").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidConfig,
    InvalidToken,
    Listen,
    AlreadyRunning,
    NotRunning,
    Tls,
    Internal,
}

impl ErrorCode {
    #[cfg(test)]
    const ALL: &[Self] = &[
        Self::InvalidConfig,
        Self::InvalidToken,
        Self::Listen,
        Self::AlreadyRunning,
        Self::NotRunning,
        Self::Tls,
        Self::Internal,
    ];
}

// napi makes an `Error<ErrorCode>` with `napi_create_error`, which takes this as the `code`.
impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        match self {
            Self::InvalidConfig => "ERR_INVALID_CONFIG",
            Self::InvalidToken => "ERR_INVALID_TOKEN",
            Self::Listen => "ERR_LISTEN",
            Self::AlreadyRunning => "ERR_ALREADY_RUNNING",
            Self::NotRunning => "ERR_NOT_RUNNING",
            Self::Tls => "ERR_TLS",
            Self::Internal => "ERR_INTERNAL",
        }
    }
}

/// An error that reaches JavaScript as an `Error` with `code` and this message. A `#[napi]`
/// function returns it as `Result<T, ErrorCode>` (napi's alias; the macro looks for `Result`).
type CodedError = Error<ErrorCode>;
type CodedResult<T> = Result<T, ErrorCode>;

fn js_error(code: ErrorCode, message: impl std::fmt::Display) -> CodedError {
    Error::new(code, message)
}

impl From<ConfigError> for CodedError {
    fn from(e: ConfigError) -> Self {
        js_error(ErrorCode::InvalidConfig, e)
    }
}

/// A promise settled with `work`'s outcome. A rejection is made on the JavaScript thread as
/// an `Error` with its `code` (an `async fn`'s error could only carry a napi `Status`), and
/// handed to the promise as that very object.
fn promise<T: ToNapiValue + Send + 'static>(
    env: &Env,
    work: impl std::future::Future<Output = CodedResult<T>> + Send + 'static,
) -> Result<AsyncBlock<T>> {
    AsyncBlockBuilder::build_with_map(env, async move { Ok(work.await) }, |env, outcome| {
        // An `Error` made from a JavaScript value rejects with that value, not a copy.
        outcome.map_err(|e| Error::from(JsError::from(e).into_unknown(env)))
    })
}

fn start_error(e: HubStartError) -> CodedError {
    match e {
        HubStartError::Listen { .. } => js_error(ErrorCode::Listen, e),
        HubStartError::Quic(QuicSetupError::Bind { .. }) => js_error(ErrorCode::Listen, e),
        HubStartError::Quic(QuicSetupError::Tls(tls)) | HubStartError::Tls(tls) => tls_error(tls),
        HubStartError::Quic(QuicSetupError::Crypto(_)) => js_error(ErrorCode::Tls, e),
    }
}

fn tls_error(e: TlsSetupError) -> CodedError {
    match e {
        TlsSetupError::BadPem { .. } => js_error(ErrorCode::InvalidConfig, e),
        _ => js_error(ErrorCode::Tls, e),
    }
}

fn not_running() -> CodedError {
    js_error(ErrorCode::NotRunning, "not running: call start() first")
}

fn already_running() -> CodedError {
    js_error(
        ErrorCode::AlreadyRunning,
        "already running: call stop() first",
    )
}

/// Events waiting for JavaScript, as JSON.
///
/// A threadsafe call per event cost Node's main thread a wake-up and an object conversion for
/// each one, about a tenth of the hub's new-connection rate whether or not anything listened.
/// So only the first event of a batch calls JavaScript, which then takes every event queued
/// by that time as one JSON array (`takeEvents`).
#[derive(Default)]
struct EventQueue {
    /// The queued events' JSON objects, comma-separated; empty once JavaScript took them.
    pending: std::sync::Mutex<String>,
    /// Whether JavaScript listens for per-stream events. Off, they are not sent at all: even
    /// batched, they cost about 10% of the hub's new-connection rate.
    per_stream_wanted: AtomicBool,
}

/// A burst can grow the queue's buffer; past this it is not kept for the next batch.
const EVENT_QUEUE_KEPT_BYTES: usize = 64 * 1024;

impl EventQueue {
    fn pending(&self) -> std::sync::MutexGuard<'_, String> {
        // Pushing and taking cannot panic midway; a poisoned lock still holds whole events.
        self.pending.locked()
    }

    /// Queues an event; true when it starts a batch, so JavaScript must be called.
    fn push(&self, event: &impl Serialize) -> bool {
        let Ok(json) = serde_json::to_string(event) else {
            return false;
        };
        let mut pending = self.pending();
        let starts_batch = pending.is_empty();
        if !starts_batch {
            pending.push(',');
        }
        pending.push_str(&json);
        starts_batch
    }

    /// Every queued event as one JSON array, leaving the queue empty.
    fn take(&self) -> String {
        let mut pending = self.pending();
        let batch = format!("[{pending}]");
        if pending.capacity() > EVENT_QUEUE_KEPT_BYTES {
            *pending = String::new();
        } else {
            pending.clear();
        }
        batch
    }
}

/// `wanted` filters events before they cost anything more than their construction.
fn event_sink<E: Serialize + 'static>(
    queue: Arc<EventQueue>,
    callback: EventCallback,
    wanted: impl Fn(&E) -> bool + Send + Sync + 'static,
) -> EventSink<E> {
    Arc::new(move |event: E| {
        if wanted(&event) && queue.push(&event) {
            // The first event of a batch tells JavaScript to come and take it.
            if callback.call(Value::Null, ThreadsafeFunctionCallMode::NonBlocking) != Status::Ok {
                // JavaScript will not come (the function is closing): drop the batch, or every
                // later event would wait behind a call that never happens.
                queue.take();
            }
        }
    })
}

fn to_js<T: Serialize>(value: &T) -> CodedResult<Value> {
    serde_json::to_value(value).map_err(|e| js_error(ErrorCode::Internal, e))
}

/// What both classes run: a hub or an edge.
trait Runtime: Send + 'static {
    fn stop(self) -> impl std::future::Future<Output = ()> + Send;
    fn status(&self) -> CodedResult<Value>;
    fn metrics(&self) -> String;
}

impl Runtime for Hub {
    fn stop(self) -> impl std::future::Future<Output = ()> + Send {
        Hub::stop(self)
    }

    fn status(&self) -> CodedResult<Value> {
        to_js(&Hub::status(self))
    }

    fn metrics(&self) -> String {
        Hub::metrics(self)
    }
}

impl Runtime for Edge {
    fn stop(self) -> impl std::future::Future<Output = ()> + Send {
        Edge::stop(self)
    }

    fn status(&self) -> CodedResult<Value> {
        to_js(&Edge::status(self))
    }

    fn metrics(&self) -> String {
        Edge::metrics(self)
    }
}

/// Lifecycle shared by both classes: the runtime while running (which holds the event
/// callback), and a flag `waitForStop` watches.
struct Lifecycle<T> {
    runtime: Mutex<Option<T>>,
    stopped: watch::Sender<bool>,
}

impl<T> Default for Lifecycle<T> {
    fn default() -> Self {
        Self {
            runtime: Mutex::new(None),
            stopped: watch::Sender::new(true),
        }
    }
}

impl<T: Runtime> Lifecycle<T> {
    /// Runs `start` unless already running; holding the lock makes concurrent starts safe.
    async fn start(
        &self,
        start: impl std::future::Future<Output = CodedResult<T>>,
    ) -> CodedResult<()> {
        let mut slot = self.runtime.lock().await;
        if slot.is_some() {
            return Err(already_running());
        }
        *slot = Some(start.await?);
        self.stopped.send_replace(false);
        Ok(())
    }

    async fn stop(&self) {
        let runtime = self.runtime.lock().await.take();
        if let Some(runtime) = runtime {
            runtime.stop().await;
        }
        self.stopped.send_replace(true);
    }

    /// The runtime's status, or `stopped` when it is not running.
    async fn status(&self, stopped: Value) -> CodedResult<Value> {
        match self.runtime.lock().await.as_ref() {
            Some(runtime) => runtime.status(),
            None => Ok(stopped),
        }
    }

    /// Prometheus text; empty when not running.
    async fn metrics(&self) -> String {
        self.runtime
            .lock()
            .await
            .as_ref()
            .map(T::metrics)
            .unwrap_or_default()
    }

    fn running(&self) -> bool {
        !*self.stopped.borrow()
    }

    async fn wait_for_stop(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

#[napi]
#[derive(Default)]
pub struct NativeHub {
    // Shared with the futures of `start`, `updateAllowedEdges` and `getStatus`, which outlive
    // the call that made them.
    life: Arc<Lifecycle<Hub>>,
    events: Arc<EventQueue>,
}

#[napi]
impl NativeHub {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    /// The events queued since the last call, as a JSON array; `onEvent` says when to call.
    #[napi]
    pub fn take_events(&self) -> String {
        self.events.take()
    }

    /// Whether `streamOpened` / `streamClosed` are sent; the facade follows its listeners.
    #[napi]
    pub fn set_per_stream_events(&self, wanted: bool) {
        self.events
            .per_stream_wanted
            .store(wanted, Ordering::Relaxed);
    }

    // The config types are index.d.ts', which a unit test checks against the config structs.
    #[napi(
        ts_args_type = "onEvent: () => void, config?: import('./index').HubConfig",
        ts_return_type = "Promise<void>"
    )]
    pub fn start(
        &self,
        env: &Env,
        on_event: EventCallback,
        config: Option<Value>,
    ) -> Result<AsyncBlock<()>> {
        let (life, queue) = (self.life.clone(), self.events.clone());
        promise(env, async move {
            let options = HubOptions::from_json(&config.unwrap_or(Value::Null))?;
            let wanted = queue.clone();
            let events = event_sink::<HubEvent>(queue, on_event, move |event| {
                !event.is_per_stream() || wanted.per_stream_wanted.load(Ordering::Relaxed)
            });
            life.start(async { Hub::start(options, events).await.map_err(start_error) })
                .await
        })
    }

    /// Stops; with `graceMs`, drains first (see `Hub::drain`) while status and metrics stay
    /// readable.
    #[napi(
        ts_args_type = "options?: import('./index').HubStopOptions",
        ts_return_type = "Promise<void>"
    )]
    pub fn stop(&self, env: &Env, options: Option<Value>) -> Result<AsyncBlock<()>> {
        let life = self.life.clone();
        promise(env, async move {
            let grace = parse_stop_options(&options.unwrap_or(Value::Null))?;
            if let Some(grace) = grace {
                let draining = life
                    .runtime
                    .lock()
                    .await
                    .as_ref()
                    .map(|hub| hub.drain(grace));
                if let Some(draining) = draining {
                    draining.await;
                }
            }
            life.stop().await;
            Ok(())
        })
    }

    #[napi(
        ts_args_type = "edges: import('./index').AllowedEdge[]",
        ts_return_type = "Promise<void>"
    )]
    pub fn update_allowed_edges(&self, env: &Env, edges: Value) -> Result<AsyncBlock<()>> {
        let life = self.life.clone();
        promise(env, async move {
            let edges = parse_allowed_edges(&edges)?;
            match life.runtime.lock().await.as_ref() {
                Some(hub) => {
                    hub.update_allowed_edges(edges);
                    Ok(())
                }
                None => Err(not_running()),
            }
        })
    }

    #[napi(ts_return_type = "Promise<any>")]
    pub fn get_status(&self, env: &Env) -> Result<AsyncBlock<Value>> {
        let life = self.life.clone();
        promise(env, async move {
            let stopped = serde_json::json!({
                "running": false, "tunnelPort": 0, "certFingerprint": "", "connectedEdges": []
            });
            life.status(stopped).await
        })
    }

    /// Prometheus text; empty when the hub is not running.
    #[napi]
    pub async fn get_metrics(&self) -> Result<String> {
        Ok(self.life.metrics().await)
    }

    /// Resolves once the hub is stopped; the facade keeps this pending to keep Node alive.
    #[napi]
    pub async fn wait_for_stop(&self) -> Result<()> {
        self.life.wait_for_stop().await;
        Ok(())
    }

    #[napi(getter)]
    pub fn running(&self) -> bool {
        self.life.running()
    }
}

#[napi]
#[derive(Default)]
pub struct NativeEdge {
    // Shared with the futures of `start` and `getStatus`, which outlive the call.
    life: Arc<Lifecycle<Edge>>,
    events: Arc<EventQueue>,
}

#[napi]
impl NativeEdge {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    /// The events queued since the last call, as a JSON array; `onEvent` says when to call.
    #[napi]
    pub fn take_events(&self) -> String {
        self.events.take()
    }

    #[napi(
        ts_args_type = "onEvent: () => void, config: import('./index').EdgeConfig",
        ts_return_type = "Promise<void>"
    )]
    pub fn start(
        &self,
        env: &Env,
        on_event: EventCallback,
        config: Option<Value>,
    ) -> Result<AsyncBlock<()>> {
        let (life, queue) = (self.life.clone(), self.events.clone());
        promise(env, async move {
            let options = EdgeOptions::from_json(&config.unwrap_or(Value::Null))?;
            let events = event_sink::<EdgeEvent>(queue, on_event, |_| true);
            life.start(async { Edge::start(options, events).map_err(tls_error) })
                .await
        })
    }

    #[napi]
    pub async fn stop(&self) -> Result<()> {
        self.life.stop().await;
        Ok(())
    }

    /// Prometheus text; empty when the edge is not running.
    #[napi]
    pub async fn get_metrics(&self) -> Result<String> {
        Ok(self.life.metrics().await)
    }

    #[napi(ts_return_type = "Promise<any>")]
    pub fn get_status(&self, env: &Env) -> Result<AsyncBlock<Value>> {
        let life = self.life.clone();
        promise(env, async move {
            let stopped = serde_json::json!({
                "running": false, "connected": false, "publicIp": null, "activeStreams": 0,
                "activeUdpSessions": 0, "listenPorts": [], "listenPortsUdp": [], "transport": null,
                "protocol": null,
                "udpDatagramsDropped": 0, "waitingConnections": 0
            });
            life.status(stopped).await
        })
    }

    /// Resolves once the edge is stopped; the facade keeps this pending to keep Node alive.
    #[napi]
    pub async fn wait_for_stop(&self) -> Result<()> {
        self.life.wait_for_stop().await;
        Ok(())
    }

    #[napi(getter)]
    pub fn running(&self) -> bool {
        self.life.running()
    }
}

#[napi(object)]
pub struct HubCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
}

/// A self-signed hub certificate (ECDSA P-256) to store and pass back as `tls`.
#[napi]
pub fn generate_hub_certificate() -> Result<HubCertificate, ErrorCode> {
    let (cert_pem, key_pem) = HubIdentity::generate_pem().map_err(tls_error)?;
    let fingerprint = HubIdentity::from_pem(&cert_pem, &key_pem)
        .map_err(tls_error)?
        .fingerprint;
    Ok(HubCertificate {
        cert_pem,
        key_pem,
        fingerprint,
    })
}

#[napi(object)]
pub struct ConnectionTokenData {
    /// The first hub.
    pub hub_host: String,
    pub hub_port: u32,
    /// Every hub, the first included.
    pub hubs: Vec<TokenHub>,
    pub edge_id: String,
    pub secret: String,
    pub hub_fingerprint: Option<String>,
}

#[napi(object)]
pub struct TokenHub {
    pub host: String,
    pub port: u32,
}

#[napi(ts_args_type = "data: import('./index').ConnectionTokenData")]
pub fn encode_connection_token(data: Value) -> Result<String, ErrorCode> {
    let token = token_from_json(&data)?;
    Ok(encode_token(&token))
}

#[napi]
pub fn decode_connection_token(token: String) -> Result<ConnectionTokenData, ErrorCode> {
    let t = decode_token(&token).map_err(|e| js_error(ErrorCode::InvalidToken, e))?;
    let hub = |host: &str, port: u16| TokenHub {
        host: host.to_string(),
        port: u32::from(port),
    };
    let mut hubs = vec![hub(&t.hub_host, t.hub_port)];
    hubs.extend(t.more_hubs.iter().map(|(host, port)| hub(host, *port)));
    Ok(ConnectionTokenData {
        hub_host: t.hub_host,
        hub_port: u32::from(t.hub_port),
        hubs,
        edge_id: t.edge_id,
        secret: t.secret,
        hub_fingerprint: t.hub_fingerprint,
    })
}

/// `encodeConnectionToken`'s argument as JavaScript gives it (index.d.ts
/// `ConnectionTokenData`), with the checks `decode` applies, so every token we make can be
/// read back.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct TokenConfig {
    hub_host: Option<HostName>,
    hub_port: Option<Port>,
    hubs: Option<Vec<HubEntryConfig>>,
    edge_id: Option<EdgeId>,
    secret: Option<Secret>,
    hub_fingerprint: Option<Text>,
}

fn token_from_json(data: &Value) -> std::result::Result<ConnectionToken, ConfigError> {
    let c: TokenConfig = from_value(data, "")?;
    // What `decodeConnectionToken` returns encodes again: `hubHost`/`hubPort` beside `hubs`
    // are accepted when they name its first hub.
    let first = c
        .hub_host
        .as_ref()
        .map(|h| (h.text.clone(), c.hub_port.map_or(DEFAULT_HUB_PORT, |p| p.0)));
    let mut hubs = match (c.hubs, first) {
        (Some(entries), Some(first)) => {
            let hubs = hub_list(None, None, Some(entries))?;
            if (hubs[0].host.as_str(), hubs[0].port) != (first.0.as_str(), first.1) {
                return Err(ConfigError::new(
                    "hubHost",
                    "give either hubs or hubHost/hubPort (or both naming the same first hub)",
                ));
            }
            hubs
        }
        (hubs, _) => hub_list(c.hub_host, c.hub_port, hubs)?,
    }
    .into_iter()
    .map(|hub| (hub.host, hub.port));
    let (hub_host, hub_port) = hubs
        .next()
        .ok_or_else(|| ConfigError::new("hubs", "is empty"))?;
    let edge_id = required(c.edge_id, "edgeId")?.0;
    let secret = required(c.secret, "secret")?.0;
    let hub_fingerprint = c.hub_fingerprint.map(|t| t.0);
    if let Some(fp) = &hub_fingerprint {
        validate_fingerprint(fp).map_err(|e| ConfigError::new("hubFingerprint", e.to_string()))?;
    }
    Ok(ConnectionToken {
        hub_host,
        hub_port,
        edge_id,
        secret,
        hub_fingerprint,
        more_hubs: hubs.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_event_of_a_batch_calls_javascript_and_take_returns_them_all() {
        let queue = EventQueue::default();
        assert_eq!(queue.take(), "[]");
        assert!(queue.push(&serde_json::json!({"type": "a"})));
        assert!(!queue.push(&serde_json::json!({"type": "b", "n": 1})));
        let batch: Value = serde_json::from_str(&queue.take()).unwrap();
        assert_eq!(
            batch,
            serde_json::json!([{"type": "a"}, {"type": "b", "n": 1}])
        );
        // Taken: the next event starts a new batch.
        assert!(queue.push(&serde_json::json!({"type": "c"})));
        assert_eq!(queue.take(), r#"[{"type":"c"}]"#);
    }

    /// The declaration of `name` in index.d.ts: from `interface {name} {` or
    /// `type {name} =` to the end of its block.
    fn declaration(name: &str) -> &'static str {
        let typings = include_str!("../../index.d.ts");
        let (start, end) = [
            (format!("interface {name} {{"), "\n}\n"),
            (format!("type {name} ="), "\n\n"),
        ]
        .into_iter()
        .find_map(|(head, end)| Some((typings.find(&head)?, end)))
        .unwrap_or_else(|| panic!("index.d.ts declares {name}"));
        let rest = &typings[start..];
        &rest[..rest.find(end).unwrap_or(rest.len())]
    }

    /// The property a member line or `;`-separated entry declares (`name?: type`).
    fn property(entry: &str) -> Option<(String, &str)> {
        let entry = entry.trim();
        let colon = entry.find(':')?;
        let name = entry[..colon].trim_end_matches('?');
        let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric());
        is_name.then(|| (name.to_string(), entry[colon + 1..].trim()))
    }

    /// The top-level members of interface `name`, with their types.
    fn members(name: &str) -> Vec<(String, &'static str)> {
        let mut depth = 0;
        let mut found = Vec::new();
        for line in declaration(name).lines().skip(1) {
            let code = line.trim();
            if code.starts_with("/*") || code.starts_with('*') || code.starts_with("//") {
                continue;
            }
            if depth == 0 {
                found.extend(property(code));
            }
            depth += code.matches('{').count();
            depth -= code.matches('}').count();
        }
        found
    }

    /// The members of an inline object type `{ a: string; b?: number }` in `text`.
    fn inline_members(text: &str) -> Vec<String> {
        let start = text.find('{').expect("an object type");
        let end = start + text[start..].find('}').expect("its end");
        text[start + 1..end]
            .split(';')
            .filter_map(property)
            .map(|(name, _)| name)
            .collect()
    }

    fn member_type(name: &str, member: &str) -> &'static str {
        members(name)
            .into_iter()
            .find(|(m, _)| m == member)
            .unwrap_or_else(|| panic!("{name} declares {member}"))
            .1
    }

    /// The quoted members of a string union type.
    fn quoted(union: &str) -> Vec<&str> {
        union.split('\'').skip(1).step_by(2).collect()
    }

    fn sorted<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Vec<String> {
        let mut names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
        names.sort();
        names
    }

    fn names_of(name: &str) -> Vec<String> {
        sorted(members(name).into_iter().map(|(m, _)| m))
    }

    #[test]
    fn the_typings_declare_the_options_the_config_structs_read() {
        use crate::config::serde_names;
        use crate::edge::options::{self as edge, TransportMode, CONNECTION_FIELDS};
        use crate::hub::options::{self as hub, ProxyProtocol, UdpProxyHeader};

        assert_eq!(
            names_of("HubConfig"),
            sorted(serde_names::<hub::HubConfig>())
        );
        assert_eq!(
            names_of("HubLimits"),
            sorted(serde_names::<hub::LimitsConfig>())
        );
        assert_eq!(
            sorted(inline_members(member_type("HubConfig", "tls"))),
            sorted(serde_names::<hub::TlsConfig>())
        );
        assert_eq!(
            names_of("HubStopOptions"),
            sorted(serde_names::<hub::StopConfig>())
        );
        assert_eq!(
            names_of("AllowedEdge"),
            sorted(serde_names::<hub::AllowedEdgeConfig>())
        );
        assert_eq!(
            names_of("PortRules"),
            sorted(serde_names::<hub::PortRulesConfig>())
        );
        assert_eq!(
            names_of("BandwidthLimits"),
            sorted(serde_names::<hub::BandwidthConfig>())
        );
        assert_eq!(
            names_of("ClientRules"),
            sorted(serde_names::<crate::protocol::client_policy::ClientPolicy>())
        );
        assert_eq!(
            names_of("ConnectionTokenData"),
            sorted(serde_names::<TokenConfig>())
        );

        // `EdgeConfig` is a token, one hub or a list of hubs, each with the extras.
        let edge_config = declaration("EdgeConfig");
        let branches: Vec<Vec<String>> = edge_config
            .split("({")
            .skip(1)
            .map(|branch| inline_members(&format!("{{{branch}")))
            .collect();
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            branches,
            [
                names(&["token"]),
                names(&["hubHost", "hubPort", "edgeId", "secret"]),
                names(&["hubs", "edgeId", "secret"]),
            ]
        );
        let mut connection_fields = sorted(branches[1..].concat());
        connection_fields.dedup();
        assert_eq!(
            connection_fields,
            sorted(CONNECTION_FIELDS.map(String::from).to_vec())
        );
        assert_eq!(
            names_of("HubAddress"),
            sorted(serde_names::<HubEntryConfig>())
        );
        assert_eq!(edge_config.matches("& EdgeExtras)").count(), 3);
        let mut declared = names_of("EdgeExtras");
        declared.extend(branches.concat());
        let mut declared = sorted(declared);
        declared.dedup();
        assert_eq!(declared, sorted(serde_names::<edge::EdgeConfig>()));

        for (interface, member, variants) in [
            ("HubConfig", "proxyProtocol", serde_names::<ProxyProtocol>()),
            (
                "HubConfig",
                "udpProxyHeader",
                serde_names::<UdpProxyHeader>(),
            ),
            (
                "EdgeExtras",
                "transportMode",
                serde_names::<TransportMode>(),
            ),
        ] {
            assert_eq!(quoted(member_type(interface, member)), variants, "{member}");
        }
    }

    #[test]
    fn the_readme_lists_every_error_code_but_the_internal_one() {
        let readme = include_str!("../../README.md");
        for code in ErrorCode::ALL {
            let listed = readme.contains(&format!("`{}`", code.as_ref()));
            // ERR_INTERNAL stands for a status that did not serialize: a bug, not a use.
            assert_eq!(listed, *code != ErrorCode::Internal, "{code:?}");
        }
    }

    #[test]
    fn a_burst_does_not_pin_a_large_buffer() {
        let queue = EventQueue::default();
        let big = "x".repeat(EVENT_QUEUE_KEPT_BYTES);
        queue.push(&big);
        queue.take();
        assert_eq!(queue.pending().capacity(), 0);
        queue.push(&"small");
        queue.take();
        assert!(queue.pending().capacity() > 0);
    }
}
