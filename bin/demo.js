'use strict'
// `remoteingress demo`: a whole tunnel on one machine. A target server on 127.0.0.1 stands in
// for the private proxy; the edge listens on 127.0.0.2 (same port) as if it were the public VPS.
const dgram = require('node:dgram')
const net = require('node:net')
const crypto = require('node:crypto')
const { RemoteIngressHub, RemoteIngressEdge } = require('..')

const STEP_TIMEOUT_MS = 10_000

function withTimeout(promise, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`demo: timed out waiting for ${what}`)), STEP_TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** The private side: reads the PROXY v1 line, then answers with what it learned. */
function startTarget(seen) {
  const server = net.createServer((socket) => {
    let buffered = Buffer.alloc(0)
    let header = null
    socket.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk])
      if (header === null) {
        const end = buffered.indexOf('\r\n')
        if (end < 0) return
        header = buffered.subarray(0, end).toString('latin1')
        buffered = buffered.subarray(end + 2)
      }
    })
    socket.on('end', () => {
      const [, , clientIp, edgeIp, clientPort, edgePort] = (header ?? '').split(' ')
      seen.push({ header, clientIp, clientPort: Number(clientPort), edgeIp, edgePort: Number(edgePort), bytes: buffered.length })
      socket.end(`hello ${clientIp}:${clientPort}, the target got your ${buffered.length} bytes via edge ${edgeIp}:${edgePort}\n`)
    })
    socket.on('error', () => {})
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve(server))
  })
}

/** The private side for UDP: reads the PROXY v2 header (IPv4) and answers who it saw. */
function startUdpTarget(seen, port) {
  const socket = dgram.createSocket('udp4')
  socket.on('message', (datagram, from) => {
    // 12-byte signature, version/command, family, length, then src ip, dst ip, src port, dst port.
    const family = datagram[13]
    if (datagram.length < 28 || family !== 0x12) return
    const ip = (offset) => Array.from(datagram.subarray(offset, offset + 4)).join('.')
    const client = `${ip(16)}:${datagram.readUInt16BE(24)}`
    const payload = datagram.subarray(28)
    seen.push({ header: datagram.subarray(0, 28).toString('hex'), client, payload: payload.toString() })
    socket.send(`hello ${client}, the target got your datagram "${payload}"`, from.port, from.address)
  })
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(port, '127.0.0.1', () => resolve(socket))
  })
}

/** One datagram to the edge and its answer. */
function udpRequest(port, body) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4')
    socket.once('message', (reply) => {
      socket.close()
      resolve({ localPort, reply: reply.toString() })
    })
    socket.once('error', reject)
    let localPort
    socket.bind(0, '127.0.0.1', () => {
      localPort = socket.address().port
      socket.send(body, port, '127.0.0.2')
    })
  })
}

/** One client connection to the edge: send a request, half-close, read the whole answer. */
function request(port, body) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.2', port }, () => socket.end(body))
    const chunks = []
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('end', () => resolve({ localPort: socket.localPort, reply: Buffer.concat(chunks).toString() }))
    socket.on('error', reject)
  })
}

async function runDemo(options, integer) {
  const seconds = integer(options.seconds, 'seconds') ?? 0
  const seen = []
  const seenUdp = []
  const target = await startTarget(seen)
  const port = target.address().port
  const udpTarget = await startUdpTarget(seenUdp, port)
  const hub = new RemoteIngressHub()
  const edge = new RemoteIngressEdge()
  const say = (line) => console.log(line)
  try {
    await hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1', targetHost: '127.0.0.1' })
    const { tunnelPort, certFingerprint } = await hub.getStatus()
    say(`hub      listening on 127.0.0.1:${tunnelPort}, key ${certFingerprint}`)
    say(`target   listening on 127.0.0.1:${port}, TCP and UDP (expects PROXY v1 / v2 headers)`)
    const secret = crypto.randomBytes(18).toString('base64url')
    await hub.updateAllowedEdges([{ id: 'demo-edge', secret, listenPorts: [port], listenPortsUdp: [port] }])
    hub.on('edgeConnected', ({ edgeId, remoteAddress }) => say(`hub      edge ${edgeId} connected from ${remoteAddress}`))
    edge.on('warning', ({ code, message }) => say(`edge     warning ${code}: ${message}`))

    const assigned = withTimeout(new Promise((resolve) => edge.once('portsAssigned', resolve)), 'the edge to connect')
    await edge.start({
      hubHost: '127.0.0.1',
      hubPort: tunnelPort,
      edgeId: 'demo-edge',
      secret,
      hubFingerprint: certFingerprint,
      bindAddress: '127.0.0.2',
      stunServers: [],
    })
    const { listenPorts, listenPortsUdp } = await assigned
    say(`edge     connected (hub key pinned), listening on 127.0.0.2: TCP ${listenPorts.join(', ')}, UDP ${listenPortsUdp.join(', ')}`)

    const startedAt = process.hrtime.bigint()
    const deadline = Date.now() + seconds * 1000
    let round = 0
    do {
      round += 1
      const bodies = [`GET / HTTP/1.0\r\nHost: demo\r\n\r\n`, crypto.randomBytes(64 * 1024), 'ping']
      for (const body of bodies) {
        const { localPort, reply } = await withTimeout(request(port, body), 'a reply through the tunnel')
        say(`client   127.0.0.1:${localPort} -> 127.0.0.2:${port}: ${reply.trim()}`)
      }
      const { localPort, reply } = await withTimeout(udpRequest(port, `datagram ${round}`), 'a UDP reply through the tunnel')
      say(`client   UDP 127.0.0.1:${localPort} -> 127.0.0.2:${port}: ${reply}`)
    } while (Date.now() < deadline)

    say('')
    say('what the target saw (the PROXY header carries the real client address):')
    for (const s of seen.slice(-3)) say(`  ${s.header}   -> client ${s.clientIp}:${s.clientPort}, ${s.bytes} bytes`)
    for (const s of seenUdp.slice(-1)) say(`  UDP PROXY v2 ${s.header} -> client ${s.client}`)
    const status = await hub.getStatus()
    const [edgeStatus] = status.connectedEdges
    const elapsed = Number(process.hrtime.bigint() - startedAt) / 1e9
    const megabytes = (edgeStatus.bytesIn + edgeStatus.bytesOut) / 1e6
    say(`\n${seen.length} TCP connections and ${seenUdp.length} UDP datagrams in ${round} round(s); hub counted ${edgeStatus.bytesIn} bytes in, ${edgeStatus.bytesOut} out`)
    say(`throughput: ${megabytes.toFixed(2)} MB through the tunnel in ${elapsed.toFixed(2)} s (${(megabytes / elapsed).toFixed(1)} MB/s; small requests, one at a time)`)
  } finally {
    await edge.stop()
    await hub.stop()
    target.close()
    udpTarget.close()
  }
}

module.exports = { runDemo }
