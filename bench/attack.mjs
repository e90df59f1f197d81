#!/usr/bin/env node
// What floods from sources without a secret cost a hub, and what its users see meanwhile.
//
//   node bench/attack.mjs [initials|pending|udp|downloads|uploads ...]     (default: all)
//
// initials  50 QUIC Initials (a real client's first packet) from 50 addresses: the hub's
//           memory and CPU; then 200 Initials a second for 15 s from rotating addresses while
//           a client exchanges small messages through an established TCP+TLS tunnel.
// pending   2,000 idle TCP connections from 500 addresses, reopened as the hub closes them;
//           then an edge starts: how long until its tunnel is up, over TCP+TLS and QUIC.
// udp       one datagram from each of 5,000 addresses at an edge's UDP port, re-sent every
//           3 s, while new clients ask the target (an echo) one question each.
// downloads 1,000 clients start a download that never ends and never read, over TCP+TLS and
//           QUIC: the peak memory of hub and edge (each in its own process, default budget),
//           and their memory 10 s after the clients closed; meanwhile a new client asks an
//           echo target through the same edge every 500 ms: how many are answered within 5 s.
// uploads   the same with 1,000 clients that upload without end to a target that never reads
//           (memory after: once the clients and the target closed).
//
// The hub runs in a child process (its memory and CPU are read from /proc); the edge (except
// in `downloads`), the attacker and the clients run here. Everything is on loopback, bounded, and stops by itself.
import { spawn } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import path from 'node:path'
import readline from 'node:readline'
import { echoOnce, startEndlessServer } from '../__test__/helpers.mjs'

const require = createRequire(import.meta.url)
const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..')
const { RemoteIngressEdge } = require(ROOT)
const HUB_FIXTURE = path.join(ROOT, '__test__', 'fixtures', 'hub-process.mjs')
const EDGE_FIXTURE = path.join(ROOT, '__test__', 'fixtures', 'edge-process.mjs')
const SECRET = 'bench-secret-0123456789'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * A hub or an edge in a child process (the test fixtures); resolves with { pid, port, stop() }
 * once it is ready (and, for `until`, once an event of that name was printed).
 */
async function startChild(fixture, env, until) {
  const child = spawn(process.execPath, [fixture], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = readline.createInterface({ input: child.stdout })
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path.basename(fixture)} was not ready within 30 s`)), 30000)
    let readyMessage
    const events = new Set()
    lines.on('line', (line) => {
      const message = JSON.parse(line)
      if (message.type === 'ready') readyMessage = message
      else if (message.type === 'event') events.add(message.event)
      else if (message.type === 'failed') reject(new Error(`${path.basename(fixture)} failed to start`))
      if (readyMessage && (!until || events.has(until))) {
        clearTimeout(timer)
        resolve(readyMessage)
      }
    })
  })
  return {
    pid: child.pid,
    port: ready.port,
    stop: () =>
      new Promise((resolve) => {
        child.once('exit', resolve)
        child.kill('SIGTERM')
      }),
  }
}

/** Resident memory (MiB) and CPU seconds of process `pid`. */
function usage(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)[1])
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12]) // utime + stime
  return { rssMiB: rssKb / 1024, cpuSeconds: ticks / 100 }
}

const startHub = (start, edges) => startChild(HUB_FIXTURE, { REMOTEINGRESS_TEST_HUB: JSON.stringify({ start, edges }) })

function edgeConfig(hubPort, extra = {}) {
  return {
    hubHost: '127.0.0.1',
    hubPort,
    edgeId: 'bench',
    secret: SECRET,
    bindAddress: '127.0.0.2',
    stunServers: [],
    reconnectMinMs: 50,
    reconnectMaxMs: 200,
    ...extra,
  }
}

async function startEdge(config) {
  const edge = new RemoteIngressEdge()
  const connected = new Promise((resolve) => edge.once('tunnelConnected', resolve))
  const started = Date.now()
  await edge.start(config)
  await connected
  return { edge, ms: Date.now() - started }
}

/** The first datagram a QUIC edge sends to a hub: a valid Initial, caught on a silent socket. */
async function captureInitial() {
  const catcher = dgram.createSocket('udp4')
  await new Promise((resolve) => catcher.bind(0, '127.0.0.1', resolve))
  const edge = new RemoteIngressEdge()
  const caught = new Promise((resolve) => catcher.once('message', resolve))
  await edge.start(edgeConfig(catcher.address().port, { transportMode: 'quic', bindAddress: '127.0.0.3' }))
  const initial = await caught
  await edge.stop()
  catcher.close()
  return initial
}

const address = (prefix, i) => `${prefix}.${Math.floor(i / 250) % 250}.${(i % 250) + 1}`

/** One datagram from a fresh socket on `source` to `host`:`port`. */
async function sendFrom(source, payload, port, host = '127.0.0.1') {
  const socket = dgram.createSocket('udp4')
  await new Promise((resolve, reject) => socket.bind(0, source, (err) => (err ? reject(err) : resolve())))
  await new Promise((resolve) => socket.send(payload, port, host, resolve))
  socket.close()
}

/** A TCP echo server on 127.0.0.1 (the tunnel's target). */
async function echoServer() {
  const server = net.createServer((socket) => socket.pipe(socket))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

/** Exchanges 64-byte messages over one connection to 127.0.0.2:`port` for `ms`. */
async function pingPong(port, ms) {
  const socket = net.connect({ host: '127.0.0.2', port })
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  socket.setNoDelay(true)
  const samples = []
  let timeouts = 0
  const end = Date.now() + ms
  const message = Buffer.alloc(64, 7)
  while (Date.now() < end) {
    const t0 = process.hrtime.bigint()
    const answered = await new Promise((resolve) => {
      let got = 0
      const timer = setTimeout(() => {
        socket.off('data', onData)
        resolve(false)
      }, 1000)
      const onData = (chunk) => {
        got += chunk.length
        if (got >= message.length) {
          clearTimeout(timer)
          socket.off('data', onData)
          resolve(true)
        }
      }
      socket.on('data', onData)
      socket.write(message)
    })
    if (answered) samples.push(Number(process.hrtime.bigint() - t0) / 1e6)
    else timeouts++
    await sleep(5)
  }
  socket.destroy()
  samples.sort((a, b) => a - b)
  const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))]
  return { count: samples.length, p50: at(0.5), p99: at(0.99), max: samples[samples.length - 1], timeouts }
}

async function initials() {
  const initial = await captureInitial()
  const target = await echoServer()
  const targetPort = target.address().port
  const hub = await startHub({ tunnelPort: 0, bindAddress: '127.0.0.1' }, [{ id: 'bench', secret: SECRET, listenPorts: [targetPort] }])
  await sleep(1000)
  const before = usage(hub.pid)
  for (let i = 0; i < 50; i++) await sendFrom(address('127.20', i), initial, hub.port)
  await sleep(2000)
  const after = usage(hub.pid)
  console.log(
    `initials: 50 Initials from 50 addresses: hub RSS ${before.rssMiB.toFixed(1)} -> ${after.rssMiB.toFixed(1)} MiB ` +
      `(+${(after.rssMiB - before.rssMiB).toFixed(1)}), CPU +${(after.cpuSeconds - before.cpuSeconds).toFixed(2)} s`,
  )

  const { edge } = await startEdge(edgeConfig(hub.port, { transportMode: 'tcpTls' }))
  await sleep(500)
  const quiet = await pingPong(targetPort, 5000)
  const floodStart = usage(hub.pid)
  let sent = 0
  let flooding = true
  const flood = (async () => {
    const started = Date.now()
    while (flooding && Date.now() - started < 15000) {
      const due = Math.floor(((Date.now() - started) / 1000) * 200)
      while (sent < due) await sendFrom(address('127.21', sent++), initial, hub.port)
      await sleep(5)
    }
  })()
  const loaded = await pingPong(targetPort, 15000)
  flooding = false
  await flood
  const floodEnd = usage(hub.pid)
  const fmt = (r) => `${r.count} exchanges, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, max ${r.max.toFixed(1)} ms, ${r.timeouts} over 1 s`
  console.log(`initials: through the TCP+TLS tunnel, quiet: ${fmt(quiet)}`)
  console.log(`initials: during ${sent} Initials in 15 s (200/s): ${fmt(loaded)}`)
  console.log(
    `initials: hub during the flood: CPU ${(floodEnd.cpuSeconds - floodStart.cpuSeconds).toFixed(2)} s, ` +
      `RSS ${floodStart.rssMiB.toFixed(1)} -> ${floodEnd.rssMiB.toFixed(1)} MiB`,
  )
  await edge.stop()
  await hub.stop()
  target.close()
}

async function pending() {
  for (const transportMode of ['tcpTls', 'quic']) {
    const hub = await startHub({ tunnelPort: 0, bindAddress: '127.0.0.1' }, [{ id: 'bench', secret: SECRET }])
    const sockets = new Set()
    let opened = 0
    let stopped = false
    const open = (source) => {
      if (stopped || opened >= 200000) return
      opened++
      const socket = net.connect({ host: '127.0.0.1', port: hub.port, localAddress: source })
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => {
        sockets.delete(socket)
        setTimeout(() => open(source), 20)
      })
    }
    for (let i = 0; i < 500; i++) for (let k = 0; k < 4; k++) open(address('127.22', i))
    await sleep(5000)
    const times = []
    for (let round = 0; round < 3; round++) {
      const { edge, ms } = await startEdge(edgeConfig(hub.port, { transportMode }))
      times.push(ms)
      await edge.stop()
      await sleep(1000)
    }
    console.log(`pending: ${transportMode}: 2,000 idle connections from 500 addresses (${opened} opened in all): edge tunnel up in ${times.join(', ')} ms`)
    stopped = true
    for (const socket of sockets) socket.destroy()
    await hub.stop()
  }
}

async function udp() {
  // A buffer the flood's echoes cannot fill: with the default (about 200 KiB) the kernel
  // dropped new clients' questions at the target, which measured the target, not the edge.
  const target = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 })
  await new Promise((resolve) => target.bind(0, '127.0.0.1', resolve))
  target.on('message', (message, from) => {
    // udpProxyHeader 'none' below: the payload is what the client sent.
    target.send(message, from.port, from.address)
  })
  const targetPort = target.address().port
  const hub = await startHub({ tunnelPort: 0, bindAddress: '127.0.0.1', udpProxyHeader: 'none' }, [
    { id: 'bench', secret: SECRET, listenPortsUdp: [targetPort] },
  ])
  const { edge } = await startEdge(edgeConfig(hub.port, { transportMode: 'tcpTls' }))
  await sleep(500)
  let flooding = true
  let waves = 0
  const flood = (async () => {
    while (flooding && waves < 20) {
      const started = Date.now()
      for (let i = 0; i < 5000 && flooding; i++) await sendFrom(address('127.23', i), Buffer.from('x'), targetPort, '127.0.0.2')
      waves++
      await sleep(Math.max(0, 3000 - (Date.now() - started)))
    }
  })()
  let answered = 0
  const asked = 40
  for (let i = 0; i < asked; i++) {
    const client = dgram.createSocket('udp4')
    await new Promise((resolve) => client.bind(0, '127.0.0.1', resolve))
    const question = Buffer.from(`question ${i}`)
    const got = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 2000)
      client.on('message', (m) => {
        if (m.equals(question)) {
          clearTimeout(timer)
          resolve(true)
        }
      })
      client.send(question, targetPort, '127.0.0.2')
    })
    if (got) answered++
    client.close()
    await sleep(250)
  }
  flooding = false
  await flood
  console.log(`udp: 5,000 addresses re-sent every 3 s (${waves} waves): ${answered} of ${asked} new clients got their answer (one try, 2 s)`)
  await edge.stop()
  await hub.stop()
  target.close()
}

/**
 * A new client every 500 ms for `ms` connects to 127.0.0.2:`port` (an echo) and sends 64
 * bytes: how many got them back within 5 s of connecting, of how many asked.
 */
async function askNewClients(port, ms) {
  const question = 'q'.repeat(64)
  const ask = () => echoOnce(port, question, 5000).then((answer) => answer === question, () => false)
  const asked = []
  const end = Date.now() + ms
  while (Date.now() < end) {
    asked.push(ask())
    await sleep(500)
  }
  const answers = await Promise.all(asked)
  return { answered: answers.filter(Boolean).length, asked: answers.length }
}

/** Peak RSS of each pid, sampled every 250 ms for `ms`. */
async function peakRss(pids, ms) {
  const peaks = pids.map(() => 0)
  const end = Date.now() + ms
  while (Date.now() < end) {
    pids.forEach((pid, i) => (peaks[i] = Math.max(peaks[i], usage(pid).rssMiB)))
    await sleep(250)
  }
  return peaks
}

/** Writes to `socket` as fast as it takes data, until it is destroyed. */
function writeEndlessly(socket) {
  const chunk = Buffer.alloc(64 * 1024, 0x62)
  const pump = () => {
    while (!socket.destroyed && socket.write(chunk)) {}
  }
  socket.on('drain', pump)
  socket.once('connect', pump)
}

/**
 * 1,000 connections whose reading side never reads: downloads to clients (the edge holds what
 * the hub sends) or uploads to a target (the hub holds what the edge sends).
 */
async function neverReading(direction) {
  // The uploads' target holds their half-closed connections until it closes them itself.
  const accepted = new Set()
  const target =
    direction === 'downloads'
      ? await startEndlessServer()
      : net.createServer((socket) => {
          socket.on('error', () => {})
          socket.pause() // never reads
          accepted.add(socket)
          socket.once('close', () => accepted.delete(socket))
        })
  if (direction === 'uploads') await new Promise((resolve) => target.listen(0, '127.0.0.1', resolve))
  const port = target.address().port
  const echo = await echoServer()
  const echoPort = echo.address().port
  for (const transportMode of ['tcpTls', 'quic']) {
    // No PROXY header, so the echo answers a new client with exactly its question.
    const start = { tunnelPort: 0, bindAddress: '127.0.0.1', proxyProtocol: 'none' }
    const hub = await startHub(start, [{ id: 'bench', secret: SECRET, listenPorts: [port, echoPort] }])
    const edge = await startChild(EDGE_FIXTURE, { REMOTEINGRESS_TEST_EDGE: JSON.stringify({ start: edgeConfig(hub.port, { transportMode }) }) }, 'portsAssigned')
    await sleep(1000)
    const baseline = [usage(hub.pid).rssMiB, usage(edge.pid).rssMiB]
    const clients = []
    for (let i = 0; i < 1000; i++) {
      const client = net.connect({ host: '127.0.0.2', port })
      client.on('error', () => {})
      if (direction === 'downloads') client.pause() // never reads
      else writeEndlessly(client)
      clients.push(client)
    }
    const [peak, asked] = await Promise.all([peakRss([hub.pid, edge.pid], 15000), askNewClients(echoPort, 15000)])
    for (const client of clients) client.destroy()
    for (const socket of accepted) socket.destroy()
    await sleep(10000)
    const after = [usage(hub.pid).rssMiB, usage(edge.pid).rssMiB]
    const row = (name, i) => `${name} ${baseline[i].toFixed(0)} -> peak ${peak[i].toFixed(0)} -> ${after[i].toFixed(0)} MiB 10 s after`
    const who = direction === 'downloads' ? 'clients that never read' : 'uploads to a target that never reads'
    console.log(
      `${direction}: ${transportMode}: 1,000 ${who}: ${row('hub', 0)}; ${row('edge', 1)}; ` +
        `new clients meanwhile answered within 5 s: ${asked.answered} of ${asked.asked}`,
    )
    await edge.stop()
    await hub.stop()
  }
  target.close()
  echo.close()
}

const downloads = () => neverReading('downloads')
const uploads = () => neverReading('uploads')

const scenarios = { initials, pending, udp, downloads, uploads }
const chosen = process.argv.slice(2)
for (const name of chosen.length > 0 ? chosen : Object.keys(scenarios)) {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(', ')}`)
  await scenarios[name]()
}
