#!/usr/bin/env node
// What each operator control (README "Operator controls") does for legitimate clients while the
// attack it is meant for runs: the attack without the control, then with it, over TCP+TLS and
// QUIC. Legitimate clients (other loopback addresses) each open a new connection through the
// same edge and exchange 64 bytes with an echo target, every 50 ms: how many of them were
// answered within 5 s, and the p50 / p99 of the answered.
//
//   node bench/controls.mjs [idle|churn|silent|udp|bandwidth|login ...]   (default: all)
//
// idle       10 addresses hold 400 idle connections each, against a hub whose
//            maxStreamsPerEdge is 2,000; control: maxConnectionsPerSource 100.
// churn      5 addresses open and close connections as fast as they can, 20 at a time each;
//            control: connectionRatePerSource 20. Also: attack connections that reached the hub.
// silent     10 addresses hold 300 connections each that never send, against maxStreamsPerEdge
//            2,000, and the per-source limit left at its default; control: firstByteTimeoutMs
//            3000.
// udp        one address sends from 6,000 client ports, each once a second, at an edge whose
//            UDP session table holds 4,096; the legitimate clients ask over UDP. One run: the
//            table's own share per source (a quarter, over all ports) cannot be turned off.
// bandwidth  20 clients download without end from one port; the legitimate clients ask on
//            another port of the same edge; control: an outbound limit of 20 Mbit/s on the
//            download port. Also: the download port's throughput.
// login      a client behind the edge's own address fails logins, 8 at a time, without end;
//            the edge restarts: how long until its tunnel is up again (one run: the throttle
//            before 83114b0 kept it out for the rest of a minute).
//
// Everything runs on loopback, in this process (the busy attackers of `churn` and `udp` in a
// child process), bounded in count and time, and stops by itself.
import { spawn } from 'node:child_process'
import dgram from 'node:dgram'
import net from 'node:net'
import tls from 'node:tls'
import {
  ALPN,
  EDGE_ADDRESS,
  SECRET,
  connect,
  edgeConfig,
  echoOnce,
  startConnectedEdge,
  startEndlessServer,
  startHub,
  startUdpClient,
  stopQuietly,
} from '../__test__/helpers.mjs'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const PROBE_EVERY_MS = 50
const PROBE_TIMEOUT_MS = 5000
const ATTACK_MS = 8000

/** A TCP echo server on 127.0.0.1 (the hub sends it no PROXY header in this bench). */
async function echoServer() {
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    socket.pipe(socket)
  })
  await new Promise((resolve) => server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve))
  return server
}

/** A UDP echo server on 127.0.0.1. */
async function udpEcho() {
  const socket = dgram.createSocket('udp4')
  socket.on('message', (data, from) => socket.send(data, from.port, from.address))
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve))
  return socket
}

function summary(latencies, asked) {
  latencies.sort((a, b) => a - b)
  const at = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : NaN)
  return { asked, served: latencies.length, p50: at(0.5), p99: at(0.99) }
}

/** Legitimate TCP clients from 127.0.200.0/24, one every 50 ms, for `ms`. */
async function probeTcp(port, ms) {
  const latencies = []
  const asks = []
  const end = Date.now() + ms
  for (let i = 0; Date.now() < end; i++) {
    const text = `legitimate ${i}`.padEnd(64, '.')
    const started = performance.now()
    asks.push(
      echoOnce(port, text, PROBE_TIMEOUT_MS, { localAddress: `127.0.200.${(i % 250) + 1}` }).then(
        (answer) => answer === text && latencies.push(performance.now() - started),
        () => {},
      ),
    )
    await sleep(PROBE_EVERY_MS)
  }
  await Promise.all(asks)
  return summary(latencies, asks.length)
}

/** Legitimate UDP clients from 127.0.201.0/24, one every 50 ms, for `ms`. */
async function probeUdp(port, ms) {
  const latencies = []
  const asks = []
  const end = Date.now() + ms
  for (let i = 0; Date.now() < end; i++) {
    const client = await startUdpClient({ host: `127.0.201.${(i % 250) + 1}` })
    const text = `legitimate ${i}`
    const started = performance.now()
    asks.push(
      client
        .request(Buffer.from(text), port, { timeoutMs: PROBE_TIMEOUT_MS, match: (d) => d.toString() === text })
        .then(() => latencies.push(performance.now() - started), () => {})
        .finally(() => client.close()),
    )
    await sleep(PROBE_EVERY_MS)
  }
  await Promise.all(asks)
  return summary(latencies, asks.length)
}

/** A hub and one connected edge (`transport`) whose allowed entry is `entry` plus `rules`. */
async function tunnel(transport, entry, rules, hubOptions = {}) {
  const { hub, hubPort } = await startHub([{ id: 'bench', secret: SECRET, ...entry, ...rules }], { proxyProtocol: 'none', udpProxyHeader: 'none', ...hubOptions })
  try {
    const { edge } = await startConnectedEdge(edgeConfig(hubPort, 'bench', SECRET, { transportMode: transport }))
    return { hub, edge, hubPort, stop: () => stopQuietly(edge, hub) }
  } catch (err) {
    await stopQuietly(hub)
    throw err
  }
}

/** Opens `perSource` connections from each of `sources`; those refused are let go. */
async function holdConnections(port, sources, perSource) {
  const held = []
  for (const source of sources) {
    const opened = await Promise.allSettled(Array.from({ length: perSource }, () => connect(port, EDGE_ADDRESS, 10000, { localAddress: source })))
    for (const attempt of opened) {
      if (attempt.status !== 'fulfilled') continue
      attempt.value.on('error', () => {})
      held.push(attempt.value)
    }
  }
  return held
}

/**
 * Runs `source` (an ES module body; `process.env.ARGS` holds `args` as JSON) in a child node
 * process, so a busy attacker does not slow this process's legitimate clients. Resolves with
 * what it printed last, parsed as JSON.
 */
function inChild(source, args) {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], {
    env: { ...process.env, ARGS: JSON.stringify(args) },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.on('data', (chunk) => (out += chunk))
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`attacker exited with ${code}`))))
  })
}

/** Opens and closes connections from each source, `perSource` at a time, until `ms` passed. */
const CHURN = `
import net from 'node:net'
const { port, host, sources, perSource, ms } = JSON.parse(process.env.ARGS)
const stopAt = Date.now() + ms
let attempts = 0
const once = (source) => new Promise((resolve) => {
  const socket = net.connect({ port, host, localAddress: source })
  socket.on('error', () => {})
  socket.on('close', resolve)
  socket.on('connect', () => socket.destroy())
  socket.setTimeout(5000, () => socket.destroy())
})
await Promise.all(sources.flatMap((source) => Array.from({ length: perSource }, async () => {
  while (Date.now() < stopAt) { attempts++; await once(source) }
})))
console.log(JSON.stringify({ attempts }))
`

/** Sends a datagram from each of \`ports\` client ports on \`source\`, once a second, for \`ms\`. */
const UDP_FLOOD = `
import dgram from 'node:dgram'
const { port, host, source, ports, ms } = JSON.parse(process.env.ARGS)
const sockets = []
for (let i = 0; i < ports; i++) {
  const socket = dgram.createSocket('udp4')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.bind(0, source, resolve))
  sockets.push(socket)
}
const stopAt = Date.now() + ms
let sent = 0
while (Date.now() < stopAt) {
  for (const socket of sockets) { socket.send('flood', port, host); sent++ }
  await new Promise((resolve) => setTimeout(resolve, 1000))
}
for (const socket of sockets) socket.close()
console.log(JSON.stringify({ sent }))
`

const addresses = (prefix, count) => Array.from({ length: count }, (_, i) => `${prefix}.${i + 1}`)

async function idle(transport, rules) {
  const target = await echoServer()
  const port = target.address().port
  const t = await tunnel(transport, { listenPorts: [port] }, rules, { limits: { maxStreamsPerEdge: 2000 } })
  const held = await holdConnections(port, addresses('127.0.100', 10), 400)
  await sleep(500)
  const result = await probeTcp(port, ATTACK_MS)
  const open = held.filter((s) => !s.destroyed).length
  for (const socket of held) socket.destroy()
  await t.stop()
  target.close()
  return { ...result, note: `${open} of 4,000 attack connections still open` }
}

async function churn(transport, rules) {
  const target = await echoServer()
  const port = target.address().port
  const t = await tunnel(transport, { listenPorts: [port] }, rules)
  const streamsBefore = await hubStreams(t.hub)
  const attacker = inChild(CHURN, { port, host: EDGE_ADDRESS, sources: addresses('127.0.110', 5), perSource: 20, ms: ATTACK_MS + 1000 })
  await sleep(500)
  const result = await probeTcp(port, ATTACK_MS)
  const { attempts } = await attacker
  const reached = (await hubStreams(t.hub)) - streamsBefore - result.asked
  await t.stop()
  target.close()
  return { ...result, note: `${attempts} attack connections, ${reached} reached the hub` }
}

async function hubStreams(hub) {
  const text = await hub.getMetrics()
  return text
    .split('\n')
    .filter((l) => l.startsWith('remoteingress_hub_streams_total{'))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0)
}

async function silent(transport, rules) {
  const target = await echoServer()
  const port = target.address().port
  const t = await tunnel(transport, { listenPorts: [port] }, rules, { limits: { maxStreamsPerEdge: 2000 } })
  const held = await holdConnections(port, addresses('127.0.120', 10), 300)
  await sleep(500)
  const result = await probeTcp(port, ATTACK_MS)
  const [edge] = (await t.hub.getStatus()).connectedEdges
  const open = held.filter((s) => !s.destroyed).length
  for (const socket of held) socket.destroy()
  await t.stop()
  target.close()
  return { ...result, note: `${open} of 3,000 attack connections still open, ${edge.activeStreams} streams at the hub` }
}

async function udp(transport, rules) {
  const target = await udpEcho()
  const port = target.address().port
  const t = await tunnel(transport, { listenPorts: [], listenPortsUdp: [port] }, rules)
  const flood = inChild(UDP_FLOOD, { port, host: EDGE_ADDRESS, source: '127.0.130.1', ports: 6000, ms: ATTACK_MS + 3000 })
  await sleep(3000)
  const result = await probeUdp(port, ATTACK_MS)
  const sessions = (await t.edge.getStatus()).activeUdpSessions
  await flood
  await t.stop()
  target.close()
  return { ...result, note: `${sessions} UDP sessions open at the edge at the end` }
}

async function bandwidth(transport, rules) {
  const echo = await echoServer()
  const download = await startEndlessServer()
  const [echoPort, downloadPort] = [echo.address().port, download.address().port]
  const ports = rules.limit ? { ports: { [downloadPort]: { bandwidth: { outboundBytesPerSecond: rules.limit } } } } : {}
  const t = await tunnel(transport, { listenPorts: [echoPort, downloadPort] }, ports)
  let received = 0
  const downloads = await holdConnections(downloadPort, addresses('127.0.140', 20), 1)
  for (const socket of downloads) socket.on('data', (chunk) => (received += chunk.length))
  await sleep(500)
  const from = received
  const started = performance.now()
  const result = await probeTcp(echoPort, ATTACK_MS)
  const mbps = ((received - from) * 8) / ((performance.now() - started) / 1000) / 1e6
  for (const socket of downloads) socket.destroy()
  await t.stop()
  echo.close()
  download.close()
  return { ...result, note: `downloads at ${mbps.toFixed(1)} Mbit/s` }
}

/** One failed login from `source`. */
function badLogin(hubPort, source) {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port: hubPort, localAddress: source, rejectUnauthorized: false, ALPNProtocols: [ALPN] })
    socket.on('secureConnect', () => socket.write(`EDGE bench wrong-${SECRET}\n`))
    socket.on('data', () => {})
    socket.on('error', () => {})
    socket.on('close', resolve)
    socket.setTimeout(5000, () => socket.destroy())
  })
}

async function login(transport) {
  const target = await echoServer()
  const port = target.address().port
  const t = await tunnel(transport, { listenPorts: [port] }, {})
  let failing = true
  let failures = 0
  const attacker = Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = 0; failing && i < 5000; i++) {
        await badLogin(t.hubPort, '127.0.0.1')
        failures++
      }
    }),
  )
  await sleep(2000)
  await t.edge.stop()
  const started = performance.now()
  const { edge } = await startConnectedEdge(edgeConfig(t.hubPort, 'bench', SECRET, { transportMode: transport }), 30000)
  const ms = performance.now() - started
  failing = false
  await attacker
  await stopQuietly(edge, t.hub)
  target.close()
  return { note: `tunnel up ${ms.toFixed(0)} ms after the restart, ${failures} failed logins meanwhile` }
}

const scenarios = {
  idle: [idle, {}, { clients: { maxConnectionsPerSource: 100 } }],
  churn: [churn, {}, { clients: { connectionRatePerSource: 20 } }],
  silent: [silent, {}, { clients: { firstByteTimeoutMs: 3000 } }],
  udp: [udp],
  bandwidth: [bandwidth, {}, { limit: 20_000_000 / 8 }],
  login: [login],
}

const chosen = process.argv.slice(2)
for (const name of chosen.length > 0 ? chosen : Object.keys(scenarios)) {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`)
  const [run, without, withControl] = scenarios[name]
  for (const transport of ['tcpTls', 'quic']) {
    const runs = without ? [['without', without], ['with', withControl]] : [['with', {}]]
    for (const [label, rules] of runs) {
      const r = await run(transport, rules)
      const served = r.asked === undefined ? '' : `served ${r.served}/${r.asked}, p50 ${r.p50?.toFixed(1)} ms, p99 ${r.p99?.toFixed(1)} ms; `
      console.log(`${name.padEnd(9)} ${transport.padEnd(6)} ${label.padEnd(7)} ${served}${r.note}`)
    }
  }
}
