// Hub and edge: start and stop real ones on loopback (startHub, startConnectedEdge, startTunnel,
// stopQuietly), the edge config every test uses (edgeConfig, SECRET) and TEST_TRANSPORT, the
// transport of this run (REMOTEINGRESS_TEST_TRANSPORT).
import { RemoteIngressHub, RemoteIngressEdge, EDGE_ADDRESS } from './env.mjs'
import { GUARD_MS, withTimeout, once } from './timing.mjs'

export const SECRET = 'test-secret-7f3a9c'

/**
 * Starts a hub on a free loopback tunnel port, or on `hubOptions.tunnelPort`, the port a stopped
 * hub had (see startOnPort); `edges` is the allowed-edges list (may be empty).
 * Returns { hub, hubPort }.
 */
export async function startHub(edges = [], hubOptions = {}) {
  const hub = new RemoteIngressHub()
  const config = { tunnelPort: 0, bindAddress: '127.0.0.1', ...hubOptions }
  await (config.tunnelPort === 0 ? hub.start(config) : startOnPort(hub, config))
  try {
    if (edges.length > 0) await hub.updateAllowedEdges(edges)
    const hubPort = (await hub.getStatus()).tunnelPort
    return { hub, hubPort }
  } catch (err) {
    await stopQuietly(hub)
    throw err
  }
}

/**
 * The transport real edges use in this run: the end-to-end suites run once per transport
 * (`npm test` runs them again with REMOTEINGRESS_TEST_TRANSPORT=quic).
 */
export const TEST_TRANSPORT = process.env.REMOTEINGRESS_TEST_TRANSPORT ?? 'tcpTls'
if (!['tcpTls', 'quic'].includes(TEST_TRANSPORT)) {
  throw new Error(`REMOTEINGRESS_TEST_TRANSPORT must be tcpTls or quic, not ${TEST_TRANSPORT}`)
}

/** The edge config every test uses: fast reconnects, no STUN, listeners on 127.0.0.2. */
export function edgeConfig(hubPort, edgeId, secret = SECRET, extra = {}) {
  return {
    hubHost: '127.0.0.1',
    hubPort,
    edgeId,
    secret,
    transportMode: TEST_TRANSPORT,
    bindAddress: EDGE_ADDRESS,
    stunServers: [],
    reconnectMinMs: 50,
    reconnectMaxMs: 200,
    ...extra,
  }
}

/** Starts an edge and resolves once it is connected and its ports are assigned. */
export async function startConnectedEdge(config, timeoutMs = GUARD_MS) {
  const edge = new RemoteIngressEdge()
  const connected = once(edge, 'tunnelConnected', timeoutMs)
  const assigned = once(edge, 'portsAssigned', timeoutMs)
  try {
    await edge.start(config)
    const [, ports] = await Promise.all([connected, assigned])
    return { edge, ports }
  } catch (err) {
    await stopQuietly(edge) // a failed start must not leave a running edge behind
    throw err
  }
}

/**
 * A hub with one edge (`edgeId`, assigned TCP `ports` and, when given, UDP `udpPorts`) connected to it: both sides have said so
 * (edge 'tunnelConnected' + 'portsAssigned', hub 'edgeConnected'), as events from two objects
 * are not ordered with each other. `rules` adds keys to the edge's allowed entry (`clients`,
 * `ports`). Returns { hub, edge, hubPort, edgeId, stop() }.
 */
export async function startTunnel({ ports, udpPorts, edgeId = 'edge-1', hubOptions = {}, edgeOptions = {}, rules = {} }) {
  const allowed = { id: edgeId, secret: SECRET, listenPorts: ports, ...rules }
  if (udpPorts !== undefined) allowed.listenPortsUdp = udpPorts // UDP ports only when asked for
  const { hub, hubPort } = await startHub([allowed], hubOptions)
  let edge
  try {
    const hubSawEdge = once(hub, 'edgeConnected', GUARD_MS, (e) => e.edgeId === edgeId)
    ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, edgeId, SECRET, edgeOptions)))
    await hubSawEdge
  } catch (err) {
    await stopQuietly(edge)
    await stopQuietly(hub)
    throw err
  }
  return { hub, edge, hubPort, edgeId, stop: () => stopQuietly(edge, hub) }
}

/** Stops each runner/closes each thing, bounded, ignoring errors (for finally blocks). */
export async function stopQuietly(...things) {
  for (const thing of things) {
    if (!thing) continue
    try {
      if (typeof thing.stop === 'function') {
        if (thing.running === false) continue
        await withTimeout(thing.stop(), GUARD_MS, 'stop() in cleanup')
      } else if (typeof thing.close === 'function') {
        await withTimeout(Promise.resolve(thing.close()), GUARD_MS, 'close() in cleanup')
      } else if (typeof thing.destroy === 'function') {
        thing.destroy()
      }
    } catch (err) {
      console.error(`cleanup: ${err.message}`)
    }
  }
}

/** The value of one sample (name and labels) in Prometheus text; throws when it is absent. */
export function metric(text, sample) {
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `))
  if (!line) throw new Error(`no sample ${sample} in the metrics`)
  return Number(line.slice(sample.length + 1))
}

/**
 * Starts `hub` on the port a stopped hub had. The port was ours a moment ago, but over QUIC
 * the edge's connect attempts bind UDP ports of their own, and one may hold it for a moment:
 * a taken port is retried for a bounded time.
 */
export async function startOnPort(hub, config) {
  const giveUpAt = Date.now() + 10_000
  for (;;) {
    try {
      return await hub.start(config)
    } catch (err) {
      if (err.code !== 'ERR_LISTEN' || Date.now() >= giveUpAt) throw err
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
}
