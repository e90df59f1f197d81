// UDP helpers: a target that strips PROXY v2 datagram headers (startUdpTarget with its
// udpBehaviours), a client socket with request/reply (startUdpClient), canBindUdp6Loopback.
import net from 'node:net'
import dgram from 'node:dgram'
import { EDGE_ADDRESS, TARGET_ADDRESS } from './env.mjs'
import { GUARD_MS, withTimeout } from './timing.mjs'
import { parseProxyDatagram } from './proxy.mjs'

/** What a UDP target does with each datagram: `reply(buffer)` answers its sender. */
export const udpBehaviours = {
  /** Echoes the payload (header removed). */
  echo: (record, reply) => reply(record.payload),
  /** Records only. */
  sink: () => {},
  /** Answers with `answer(payload, record)` (no answer when it returns null). */
  answer: (answer) => (record, reply) => {
    const response = answer(record.payload, record)
    if (response != null) reply(response)
  },
}

const UDP_BUFFER_BYTES = 4 * 1024 * 1024

/**
 * A UDP socket on 127.0.0.1:`port` (0 = free port). Every datagram is recorded in
 * `target.datagrams` as { raw, header (parsed v2 header or null), payload, from: { address,
 * port }, error } and handed to `behaviour(record, reply)` unless it failed to parse.
 */
export async function startUdpTarget(behaviour = udpBehaviours.echo, { port = 0, host = TARGET_ADDRESS } = {}) {
  const socket = dgram.createSocket({ type: net.isIP(host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_BUFFER_BYTES, sendBufferSize: UDP_BUFFER_BYTES })
  const datagrams = []
  const errors = []
  socket.on('error', (err) => errors.push(err))
  socket.on('message', (raw, rinfo) => {
    const record = { raw, header: null, payload: null, from: { address: rinfo.address, port: rinfo.port }, error: null }
    datagrams.push(record)
    try {
      Object.assign(record, parseProxyDatagram(raw))
    } catch (err) {
      record.error = err
      return
    }
    behaviour(record, (reply) => socket.send(reply, rinfo.port, rinfo.address, (err) => err && errors.push(err)))
  })
  await new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(port, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  return {
    socket,
    datagrams,
    errors,
    port: socket.address().port,
    close: () => new Promise((resolve) => socket.close(resolve)),
  }
}

/**
 * A UDP client socket bound to `host`:0 (127.0.0.1 by default). Received datagrams are kept in
 * `messages` ({ data, from }, all of them) and queued for nextMessage(). request() sends and
 * waits for the matching reply, sending again up to `attempts` times in all.
 */
export async function startUdpClient({ host = TARGET_ADDRESS } = {}) {
  const socket = dgram.createSocket({ type: net.isIP(host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_BUFFER_BYTES, sendBufferSize: UDP_BUFFER_BYTES })
  const messages = []
  const queue = []
  const waiters = new Set()
  let closed = false
  socket.on('error', () => {})
  socket.on('message', (data, rinfo) => {
    const message = { data, from: { address: rinfo.address, port: rinfo.port } }
    messages.push(message)
    queue.push(message)
    for (const waiter of waiters) {
      const index = queue.findIndex(waiter.filter)
      if (index !== -1) {
        waiters.delete(waiter)
        waiter.resolve(queue.splice(index, 1)[0])
      }
    }
  })
  await new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  const client = {
    socket,
    messages,
    address: socket.address().address,
    port: socket.address().port,
    /** Sends one datagram; resolves once the kernel took it. */
    send(payload, port, toHost = EDGE_ADDRESS) {
      return new Promise((resolve, reject) => socket.send(payload, port, toHost, (err) => (err ? reject(err) : resolve())))
    },
    /** Resolves with the first unconsumed datagram matching `filter` ({ data, from }). */
    nextMessage(filter = () => true, timeoutMs = GUARD_MS, what = 'a datagram') {
      const index = queue.findIndex(filter)
      if (index !== -1) return Promise.resolve(queue.splice(index, 1)[0])
      let waiter
      const promise = new Promise((resolve, reject) => {
        waiter = { filter, resolve, reject }
        waiters.add(waiter)
      })
      return withTimeout(promise, timeoutMs, `${what} at client port ${client.port}`).finally(() => waiters.delete(waiter))
    },
    /**
     * Sends `payload` to `port` and resolves with the reply's data (matching `match`). Each of
     * the `attempts` waits `timeoutMs` for its reply: with one attempt that is a hang guard.
     */
    async request(payload, port, { match = () => true, timeoutMs = GUARD_MS, attempts = 1, toHost = EDGE_ADDRESS } = {}) {
      let lastError
      for (let attempt = 0; attempt < attempts; attempt++) {
        const reply = client.nextMessage((m) => match(m.data), timeoutMs, 'a reply')
        reply.catch(() => {})
        await client.send(payload, port, toHost)
        try {
          return (await reply).data
        } catch (err) {
          lastError = err
        }
      }
      throw lastError
    },
    close() {
      if (closed) return Promise.resolve()
      closed = true
      for (const waiter of waiters) waiter.reject(new Error('client closed'))
      waiters.clear()
      return new Promise((resolve) => socket.close(resolve))
    },
  }
  return client
}

/** Whether a UDP socket can be bound on ::1 (IPv6 loopback present and enabled). */
export async function canBindUdp6Loopback() {
  const socket = dgram.createSocket('udp6')
  try {
    await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, '::1', resolve)
    })
    return true
  } catch {
    return false
  } finally {
    try {
      socket.close()
    } catch {}
  }
}
