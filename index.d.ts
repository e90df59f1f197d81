import { EventEmitter } from 'node:events'

/** The transport a tunnel runs over. */
export type TransportKind = 'tcpTls' | 'quic'

/**
 * The protocol the peer speaks: ours ('remoteingress/1'), or the one 4.13 documents ('4.13',
 * TCP+TLS without ALPN). See the README's Compatibility section.
 */
export type ProtocolDialect = 'remoteingress/1' | '4.13'

export interface HubConfig {
  /** Port edges connect to (TLS over TCP). Default 8443; 0 picks a free port (see getStatus). */
  tunnelPort?: number
  /** Where tunneled connections go: `targetHost:<the edge port>`. Default '127.0.0.1'. */
  targetHost?: string
  /** Address the tunnel listener binds. Default '0.0.0.0'. */
  bindAddress?: string
  /** Certificate chain and key, PEM. Without it a self-signed key is generated at start. */
  tls?: { certPem: string; keyPem: string }
  /** Header sent to the target before each TCP connection's bytes. Default 'v1'. */
  proxyProtocol?: 'v1' | 'v2' | 'none'
  /** Header on UDP datagrams to the target. Default 'everyDatagram'. */
  udpProxyHeader?: 'everyDatagram' | 'firstDatagram' | 'none'
  /** Tuning for tests: how often the hub pings each edge. Default 15000. */
  heartbeatIntervalMs?: number
  /** Tuning for tests: an edge silent this long is dropped. Default 45000. */
  heartbeatTimeoutMs?: number
  /** A UDP session with no datagram either way for this long ends. Default 60000. */
  udpIdleTimeoutMs?: number
  /** Limits that protect the hub; each has a default. */
  limits?: HubLimits
  /** Whether edges may connect over QUIC (UDP on the tunnel port) too. Default true. */
  quic?: boolean
  /** Whether edges speaking the 4.13 protocol (TCP+TLS without ALPN) are served. Default true. */
  accept413?: boolean
  /**
   * This hub process's name in handshake answers (1-64 visible ASCII characters), so an edge
   * with `connectionsPerHub` > 1 reaches distinct replicas. Default: random at each start.
   */
  instanceId?: string
  /**
   * The edges allowed from the start, as `updateAllowedEdges` takes them: in place before the
   * port takes logins, so an edge reconnecting to a restarted hub is never refused meanwhile.
   */
  allowedEdges?: AllowedEdge[]
}

export interface HubLimits {
  /** Edges connected at once; past it a login is answered `edge limit reached`. Default 1024. */
  maxEdges?: number
  /**
   * Tunnels one edge id may hold at once: an edge connected through several hub addresses, or
   * replicas of an edge that share its id and secret. Past it the oldest is closed. Default 16.
   */
  maxTunnelsPerEdge?: number
  /**
   * Connections one edge may have open at once. Default 65536. Past it a connection is reset
   * over TCP+TLS, and waits for a free stream over QUIC.
   */
  maxStreamsPerEdge?: number
  /** UDP sessions one edge may have open at once; past it new sessions are closed. Default 4096. */
  maxUdpSessionsPerEdge?: number
  /** TLS or QUIC handshake plus the edge's login must finish within this. Default 10000. */
  handshakeTimeoutMs?: number
  /**
   * Connections between accept and a decided login, at once. When full, a new connection
   * evicts the oldest one that has sent nothing yet (else the oldest). Default 512.
   */
  maxPendingHandshakes?: number
  /**
   * Of those, from one source address (IPv6: one /64); past it the source's own oldest is
   * evicted. Default 8.
   */
  maxPendingHandshakesPerSource?: number
  /**
   * Bytes one edge's tunnel may buffer for its connections, per direction: the connections'
   * flow-control windows share it (1 MiB to 2 GiB). Default 209715200 (200 MiB).
   */
  tunnelBufferBytes?: number
}

export interface AllowedEdge {
  id: string
  secret: string
  /** TCP ports the edge listens on. */
  listenPorts?: number[]
  /** UDP ports the edge listens on. */
  listenPortsUdp?: number[]
  /** How often the edge refreshes its public IP by STUN. Default 300. */
  stunIntervalSecs?: number
  /**
   * Which clients the edge serves on its ports and how much each source may take; the edge
   * applies them before opening a stream. Sent to `remoteingress/1` edges only.
   */
  clients?: ClientRules
  /** Byte rates the hub holds all of this edge's traffic to; the edge cannot raise them. */
  bandwidth?: BandwidthLimits
  /**
   * Rules of single ports, keyed by port number (`"443"`): `clients` over the edge's, field by
   * field; `bandwidth`, a limit of the port's own, on top of the edge's.
   */
  ports?: Record<string, PortRules>
}

/** The rules of one port of an edge. */
export interface PortRules {
  clients?: ClientRules
  bandwidth?: BandwidthLimits
}

/**
 * Bandwidth limits the hub enforces, in bytes per second (1000 to 10^12), shared evenly by the
 * connections they cover. A TCP connection over its share waits (its sender is held back); a
 * datagram over the rate is dropped. Default: no limit.
 */
export interface BandwidthLimits {
  /** What clients send towards the targets. */
  inboundBytesPerSecond?: number
  /** What comes back to them. */
  outboundBytesPerSecond?: number
}

/** One bandwidth limit in `getStatus()`. */
export interface BandwidthLimitStatus {
  bytesPerSecond: number
  /** How long it has held TCP bytes back, summed over its connections (ms). */
  delayedMs: number
  droppedDatagrams: number
}

/** An edge's bandwidth limits in `getStatus()`: its own, and its ports'. */
export interface EdgeBandwidthStatus {
  inbound?: BandwidthLimitStatus
  outbound?: BandwidthLimitStatus
  ports: { port: number; inbound?: BandwidthLimitStatus; outbound?: BandwidthLimitStatus }[]
}

/**
 * Client rules at the edge. A source is an IPv4 address or an IPv6 prefix
 * (`ipv6PrefixLength`); every count is per source and per port.
 */
export interface ClientRules {
  /** When given, only clients in these CIDR blocks (`"203.0.113.0/24"`, `"2001:db8::/32"`, or one address) are served. */
  allow?: string[]
  /** Clients in these CIDR blocks are not served; wins over `allow`. At most 4096 per list. */
  deny?: string[]
  /** Open TCP connections per source; more are reset. Default 16384, a quarter of the hub's default maxStreamsPerEdge: lower it with that limit. */
  maxConnectionsPerSource?: number
  /** New TCP connections per second per source (a token bucket's refill); more are reset. Default: no limit. */
  connectionRatePerSource?: number
  /** New TCP connections a source may open at once (the bucket's size). Default: the rate (a second's worth). */
  connectionBurstPerSource?: number
  /** Open UDP sessions per source; datagrams for more are dropped. Default a quarter of the edge's UDP session limit (1024). */
  maxUdpSessionsPerSource?: number
  /**
   * A TCP client that sends nothing within this many ms is reset, and its stream is opened only
   * at its first byte: for ports whose clients speak first (HTTP, TLS). 0 (default) is off.
   */
  firstByteTimeoutMs?: number
  /** The prefix length that groups IPv6 sources, 32 to 128. Default 64. */
  ipv6PrefixLength?: number
}

/** One tunnel of a connected edge (an edge id may hold several). */
export interface ConnectedEdgeStatus {
  edgeId: string
  /** Tells this tunnel from the others of the edge id; never reused within the hub's life. */
  tunnelId: number
  remoteAddress: string
  transport: TransportKind
  protocol: ProtocolDialect
  /** Date.now() when the edge connected. */
  connectedAt: number
  activeStreams: number
  activeUdpSessions: number
  /** Tunnel bytes received from / sent to this edge. */
  bytesIn: number
  bytesOut: number
  /** Datagrams lost to congestion, a full session queue, a failed send to the target or a bandwidth limit. */
  udpDatagramsDropped: number
  /** The edge's bandwidth limits, shared by its tunnels; only when it has any. */
  bandwidth?: EdgeBandwidthStatus
}

export interface HubStatus {
  running: boolean
  tunnelPort: number
  /** `sha256/<base64url>` of the hub key's SubjectPublicKeyInfo; edges can pin it. */
  certFingerprint: string
  /** This process's `instanceId`. */
  instanceId: string
  /** A graceful stop (`stop({ graceMs })`) is under way. */
  draining: boolean
  connectedEdges: ConnectedEdgeStatus[]
}

/** The `code` of a hub's `warning` event (README, "Warnings"). */
export type HubWarningCode =
  | 'acceptFailed'
  | 'authFailed'
  | 'authThrottled'
  | 'edgeLimit'
  | 'handshakeFailed'
  | 'handshakeLimit'
  | 'internalError'
  | 'portNotAssigned'
  | 'streamLimit'
  | 'targetUnreachable'
  | 'udpSessionLimit'

/** The `code` of an edge's `warning` event (README, "Warnings"). */
export type EdgeWarningCode =
  | 'acceptFailed'
  | 'authRejected'
  | 'clientRefused'
  | 'connectFailed'
  | 'hubNotVerified'
  | 'internalError'
  | 'listenFailed'
  | 'quicFallback'
  | 'stunFailed'
  | 'udpSessionLimit'

export interface WarningEvent<Code extends string = HubWarningCode | EdgeWarningCode> {
  code: Code
  message: string
}

export interface HubEvents {
  edgeConnected: [{ edgeId: string; tunnelId: number; remoteAddress: string; transport: TransportKind; protocol: ProtocolDialect }]
  edgeDisconnected: [{ edgeId: string; tunnelId: number; reason: string }]
  streamOpened: [{ edgeId: string; tunnelId: number; streamId: number; clientAddress: string; clientPort: number; port: number }]
  streamClosed: [{ edgeId: string; tunnelId: number; streamId: number }]
  warning: [WarningEvent<HubWarningCode>]
}

export interface HubStopOptions {
  /**
   * Drain first, for at most this long (0-3600000 ms): new edge connections are refused, each
   * edge of our protocol gets GOAWAY (it opens nothing more here and dials another hub at once),
   * and a tunnel closes once its connections and UDP sessions have ended. `getStatus().draining`
   * is true meanwhile. What is still open when the grace is over is closed.
   */
  graceMs?: number
}

export class RemoteIngressHub extends EventEmitter<HubEvents> {
  start(config?: HubConfig): Promise<void>
  /** Without options: disconnects every edge at once. */
  stop(options?: HubStopOptions): Promise<void>
  updateAllowedEdges(edges: AllowedEdge[]): Promise<void>
  getStatus(): Promise<HubStatus>
  /** Prometheus text: edges, bytes, streams and UDP sessions per edge and port, drops, failed handshakes. */
  getMetrics(): Promise<string>
  readonly running: boolean
}

/** A hub an edge keeps tunnels to. */
export interface HubAddress {
  host: string
  /** Default 8443. */
  port?: number
}

interface EdgeExtras {
  /**
   * Tunnels kept through each hub address (1-8), each to a distinct hub process (`instanceId`):
   * for an address that load-balances across hub replicas. Default 1.
   */
  connectionsPerHub?: number
  /**
   * Tunnels to each hub process (1-8), connections spread over them by load: on a long lossy
   * path one TCP connection holds every stream back after a loss, several do not. 'auto'
   * (default): 1, and 8 once a TCP+TLS tunnel through the address measures a round trip of
   * 20 ms or more. A 4.13 hub gets no extra lanes.
   */
  lanes?: number | 'auto'
  /**
   * 'tcpTls' (default): one TLS connection, frame-multiplexed. 'quic': QUIC on the hub's
   * tunnel port over UDP, a QUIC stream per connection, UDP as QUIC datagrams.
   * 'quicWithFallback': QUIC, or TCP+TLS when QUIC is not up within 5 s (each attempt);
   * `tunnelConnected` and `getStatus().transport` say which is in use.
   */
  transportMode?: 'tcpTls' | 'quic' | 'quicWithFallback'
  /** Address the edge's listeners bind. Default '0.0.0.0'. */
  bindAddress?: string
  /** Accept only a hub whose key has this fingerprint (the hub's certFingerprint). */
  hubFingerprint?: string
  /** Accept only a hub with a certificate from this CA (PEM), valid for hubHost. */
  caPem?: string
  /** STUN servers for public-IP discovery, 'host:port'. Default ['stun.cloudflare.com:3478']; [] turns it off. */
  stunServers?: string[]
  /** How long one STUN server may take to answer, name resolution and retransmits included (1-60000). Default 5500. */
  stunTimeoutMs?: number
  /** Tuning for tests: reconnect when nothing was heard from the hub this long. Default 45000. */
  heartbeatTimeoutMs?: number
  /** Tuning for tests: reconnect backoff bounds. Defaults 1000 and 30000. */
  reconnectMinMs?: number
  reconnectMaxMs?: number
  /** Tuning for tests: connect + TLS + handshake limit. Default 10000. */
  connectTimeoutMs?: number
  /**
   * A client that connects while no tunnel is up waits this long for one, then is carried (or
   * reset when none came). 0 resets it at once. Default 10000; at most 1024 clients wait at
   * once, 64 from one address.
   */
  connectWaitMs?: number
  /** A UDP session with no datagram either way for this long ends. Default 60000. */
  udpIdleTimeoutMs?: number
  /** Bytes the tunnel may buffer for its connections, per direction (1 MiB to 2 GiB). Default 200 MiB. */
  tunnelBufferBytes?: number
}

/**
 * A token, one hub (`hubHost`/`hubPort`) or several (`hubs`, 1-16): the edge keeps a tunnel to
 * every address each hub's name resolves to, and new connections go to the live tunnel carrying
 * the fewest.
 */
export type EdgeConfig =
  | ({ token: string } & EdgeExtras)
  | ({ hubHost: string; hubPort?: number; edgeId: string; secret: string } & EdgeExtras)
  | ({ hubs: HubAddress[]; edgeId: string; secret: string } & EdgeExtras)

export interface EdgeStatus {
  running: boolean
  connected: boolean
  publicIp: string | null
  activeStreams: number
  activeUdpSessions: number
  /** Ports listening now (a port that failed to bind is not listed). */
  listenPorts: number[]
  listenPortsUdp: number[]
  transport: TransportKind | null
  /** The hub's protocol while connected. */
  protocol: ProtocolDialect | null
  /** Datagrams lost: no tunnel up, tunnel congested, session limit reached, or a failed send. */
  udpDatagramsDropped: number
  /** Clients accepted while no tunnel is up, waiting for one (see connectWaitMs). */
  waitingConnections: number
  /** Every tunnel the edge keeps, up or reconnecting. `connected` is true while any is up. */
  tunnels: EdgeTunnelStatus[]
}

export interface EdgeTunnelStatus {
  /** The hub as configured, `host:port`. */
  hub: string
  /** The address this tunnel dials (one of those the hub's name resolves to). */
  address: string
  connected: boolean
  /** The hub drains it (GOAWAY): it carries only what it has, and a replacement is dialed. */
  draining: boolean
  /** The hub process at the other end, when the hub says (not 4.13 hubs). */
  instanceId: string | null
  /** 0 for the tunnels every hub address gets; 1-7 for extra lanes (`lanes`). */
  lane: number
  transport: TransportKind | null
  protocol: ProtocolDialect | null
  activeStreams: number
  activeUdpSessions: number
}

/** Which tunnel an edge event is about. */
export interface TunnelRef {
  /** The hub as configured, `host:port`. */
  hub: string
  /** The address dialed. */
  address: string
}

export interface PortsEvent {
  listenPorts: number[]
  listenPortsUdp: number[]
}

export interface EdgeEvents {
  tunnelConnected: [TunnelRef & { transport: TransportKind; protocol: ProtocolDialect; instanceId: string | null }]
  tunnelDisconnected: [TunnelRef & { reason: string }]
  publicIpDiscovered: [{ ip: string }]
  portsAssigned: [PortsEvent]
  portsUpdated: [PortsEvent]
  warning: [WarningEvent<EdgeWarningCode>]
}

export class RemoteIngressEdge extends EventEmitter<EdgeEvents> {
  start(config: EdgeConfig): Promise<void>
  stop(): Promise<void>
  getStatus(): Promise<EdgeStatus>
  /** Prometheus text: tunnel state, reconnects, bytes, streams and UDP sessions per port, listening ports, drops. */
  getMetrics(): Promise<string>
  readonly running: boolean
}

export interface ConnectionTokenData {
  /** The hub (the first, with several); give this or `hubs`. */
  hubHost?: string
  hubPort?: number
  /** Several hubs (1-16); the first is also readable by edges that know only hubHost/hubPort. */
  hubs?: HubAddress[]
  edgeId: string
  secret: string
  /** Pins the hub's key (its certFingerprint). */
  hubFingerprint?: string
}

/** base64url (no padding) of JSON {"h","p","e","s"[,"f"][,"m"]}. Throws (code ERR_INVALID_CONFIG) on bad fields. */
export function encodeConnectionToken(data: ConnectionTokenData): string
/**
 * The token's fields: hubHost/hubPort name the first hub, `hubs` lists every hub. Throws an
 * Error with code ERR_INVALID_TOKEN and a message saying what is wrong.
 */
export function decodeConnectionToken(
  token: string
): ConnectionTokenData & { hubHost: string; hubPort: number; hubs: Required<HubAddress>[] }

/** A self-signed hub certificate (ECDSA P-256) and key as PEM, with the fingerprint edges pin. */
export function generateHubCertificate(): { certPem: string; keyPem: string; fingerprint: string }
