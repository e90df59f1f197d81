// STUN (RFC 8489), written by hand from the spec: messages and their parsing, fake servers, a
// counting relay, probeStun, and a real coturn server (startCoturn).
import dgram from 'node:dgram'
import crypto from 'node:crypto'
import path from 'node:path'
import fs from 'node:fs'
import os from 'node:os'
import { spawn } from 'node:child_process'
import { TARGET_ADDRESS } from './env.mjs'
import { GUARD_MS, withTimeout } from './timing.mjs'
import { ipBytes } from './proxy.mjs'
import { freeUdpAndTcpPort } from './system.mjs'

const STUN_MAGIC_COOKIE = Buffer.from('2112a442', 'hex')

export const StunType = {
  BINDING_REQUEST: 0x0001,
  BINDING_SUCCESS: 0x0101,
  BINDING_ERROR: 0x0111,
}

export const StunAttribute = {
  MAPPED_ADDRESS: 0x0001,
  XOR_MAPPED_ADDRESS: 0x0020,
}

/** A STUN message: 20-byte header (type, length, cookie, `txid`), then each { type, value }, padded to 4. */
export function stunMessage(type, txid, attributes = []) {
  const body = Buffer.concat(
    attributes.map(({ type: attributeType, value }) => {
      const header = Buffer.alloc(4)
      header.writeUInt16BE(attributeType, 0)
      header.writeUInt16BE(value.length, 2)
      return Buffer.concat([header, value, Buffer.alloc((4 - (value.length % 4)) % 4)])
    }),
  )
  const header = Buffer.alloc(20)
  header.writeUInt16BE(type, 0)
  header.writeUInt16BE(body.length, 2)
  STUN_MAGIC_COOKIE.copy(header, 4)
  Buffer.from(txid).copy(header, 8)
  return Buffer.concat([header, body])
}

/** A MAPPED-ADDRESS-style value (family, port, address); XORed as in XOR-MAPPED-ADDRESS when `txid` is given. */
export function stunAddressValue(address, port, txid = null) {
  const ip = ipBytes(address)
  const value = Buffer.alloc(4 + ip.length)
  value[1] = ip.length === 4 ? 0x01 : 0x02
  const key = Buffer.concat([STUN_MAGIC_COOKIE, Buffer.from(txid ?? Buffer.alloc(12))])
  value.writeUInt16BE(txid ? port ^ 0x2112 : port, 2)
  for (let i = 0; i < ip.length; i++) value[4 + i] = txid ? ip[i] ^ key[i] : ip[i]
  return value
}

/** A Binding success response carrying `xorMapped` and/or `mapped` ({ address, port }). */
export function stunBindingSuccess(txid, { xorMapped, mapped } = {}) {
  const attributes = []
  if (mapped) attributes.push({ type: StunAttribute.MAPPED_ADDRESS, value: stunAddressValue(mapped.address, mapped.port) })
  if (xorMapped) attributes.push({ type: StunAttribute.XOR_MAPPED_ADDRESS, value: stunAddressValue(xorMapped.address, xorMapped.port, txid) })
  return stunMessage(StunType.BINDING_SUCCESS, txid, attributes)
}

/** { type, txid, attributes: [{ type, value }] } of a STUN message, or null if it is not one. */
export function parseStunMessage(buffer) {
  if (buffer.length < 20 || buffer[0] & 0xc0 || !buffer.subarray(4, 8).equals(STUN_MAGIC_COOKIE)) return null
  const length = buffer.readUInt16BE(2)
  if (buffer.length !== 20 + length) return null
  const attributes = []
  let at = 20
  for (let count = 0; at < buffer.length && count < 64; count++) {
    if (at + 4 > buffer.length) return null
    const type = buffer.readUInt16BE(at)
    const valueLength = buffer.readUInt16BE(at + 2)
    if (at + 4 + valueLength > buffer.length) return null
    attributes.push({ type, value: Buffer.from(buffer.subarray(at + 4, at + 4 + valueLength)) })
    at += 4 + valueLength + ((4 - (valueLength % 4)) % 4)
  }
  return { type: buffer.readUInt16BE(0), txid: Buffer.from(buffer.subarray(8, 20)), attributes }
}

/** The { address, port } of a parsed success response (XOR-MAPPED-ADDRESS first), or null. */
export function stunMappedAddress(message) {
  const pick = (type) => message.attributes.find((a) => a.type === type)
  const xor = pick(StunAttribute.XOR_MAPPED_ADDRESS)
  const plain = pick(StunAttribute.MAPPED_ADDRESS)
  const attribute = xor ?? plain
  if (!attribute || attribute.value.length < 8) return null
  const key = Buffer.concat([STUN_MAGIC_COOKIE, message.txid])
  const family = attribute.value[1]
  const ip = Buffer.from(attribute.value.subarray(4, family === 1 ? 8 : 20))
  if (xor) for (let i = 0; i < ip.length; i++) ip[i] ^= key[i]
  const port = attribute.value.readUInt16BE(2) ^ (xor ? 0x2112 : 0)
  const address = family === 1 ? [...ip].join('.') : Array.from({ length: 8 }, (_, i) => ip.readUInt16BE(i * 2).toString(16)).join(':')
  return { address, port }
}

/** What a fake STUN server sends back for a request ({ message, txid, from }): a list of replies. */
export const stunAnswers = {
  /** Nothing, ever. */
  silent: () => [],
  /** A proper answer: XOR-MAPPED-ADDRESS `address` with the request's source port. */
  mapped: (address) => (request) => [stunBindingSuccess(request.txid, { xorMapped: { address, port: request.from.port } })],
  /** Only MAPPED-ADDRESS, as an RFC 3489 server answers. */
  mappedOnly: (address) => (request) => [stunBindingSuccess(request.txid, { mapped: { address, port: request.from.port } })],
}

/**
 * A fake STUN server on 127.0.0.1:0. Each datagram is recorded in `requests` as
 * { message (parsed or null), txid, from, at } and answered with what `answer(request)` returns:
 * Buffers, or { data, fromOtherPort: true } to send from a second socket instead.
 */
export async function startFakeStunServer(answer = stunAnswers.silent) {
  const bind = async () => {
    const socket = dgram.createSocket('udp4')
    socket.on('error', () => {})
    await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, TARGET_ADDRESS, () => {
        socket.off('error', reject)
        resolve()
      })
    })
    return socket
  }
  const socket = await bind()
  const other = await bind()
  const requests = []
  let current = answer
  const flushes = new Map()
  socket.on('message', (data, rinfo) => {
    const marker = flushes.get(data.toString('latin1'))
    if (marker) return marker()
    const message = parseStunMessage(data)
    const request = { message, txid: message?.txid ?? null, from: { address: rinfo.address, port: rinfo.port }, at: Date.now() }
    requests.push(request)
    if (!message || message.type !== StunType.BINDING_REQUEST) return
    for (const reply of current(request) ?? []) {
      const via = reply.fromOtherPort ? other : socket
      via.send(reply.data ?? reply, rinfo.port, rinfo.address, () => {})
    }
  })
  return {
    port: socket.address().port,
    otherPort: other.address().port,
    requests,
    /** Binding requests received so far. */
    get bindingRequests() {
      return requests.filter((r) => r.message?.type === StunType.BINDING_REQUEST)
    },
    /**
     * Transactions (rounds) so far, in order: the first Binding request of each transaction id.
     * A retransmit (same id) is part of its round, however late the answer made it.
     */
    get rounds() {
      const seen = new Set()
      return this.bindingRequests.filter((r) => {
        const id = r.txid.toString('hex')
        if (seen.has(id)) return false
        seen.add(id)
        return true
      })
    },
    /**
     * Resolves once every datagram sent to this server before the call has been recorded: a
     * marker from another socket queues behind them (loopback delivers in order of sending), so
     * whatever was sent before, e.g. before an edge's stop() resolved, is counted by then.
     */
    async flush() {
      const marker = `flush-${crypto.randomBytes(8).toString('hex')}`
      const sender = dgram.createSocket('udp4')
      sender.on('error', () => {})
      try {
        const seen = new Promise((resolve) => flushes.set(marker, resolve))
        await new Promise((resolve) => sender.bind(0, TARGET_ADDRESS, resolve))
        sender.send(marker, socket.address().port, TARGET_ADDRESS, () => {})
        await withTimeout(seen, GUARD_MS, 'the flush marker at the fake STUN server')
      } finally {
        flushes.delete(marker)
        await new Promise((resolve) => sender.close(resolve))
      }
    },
    setAnswer(next) {
      current = next
    },
    close: () => Promise.all([socket, other].map((s) => new Promise((resolve) => s.close(resolve)))),
  }
}

/**
 * A UDP relay on 127.0.0.1:0 in front of `upstreamPort`: forwards each datagram from one
 * socket and sends replies back to the client whose transaction id they carry (the last client
 * otherwise). `forwarded` counts the datagrams relayed upstream.
 */
export async function startStunRelay(upstreamPort, upstreamHost = TARGET_ADDRESS) {
  const sockets = []
  for (let i = 0; i < 2; i++) {
    const socket = dgram.createSocket('udp4')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.bind(0, TARGET_ADDRESS, resolve))
    sockets.push(socket)
  }
  const [front, back] = sockets
  const clients = new Map()
  let lastClient = null
  const relay = { port: front.address().port, forwarded: 0 }
  front.on('message', (data, rinfo) => {
    lastClient = rinfo
    if (data.length >= 20) clients.set(data.subarray(8, 20).toString('hex'), rinfo)
    if (clients.size > 1000) clients.clear()
    relay.forwarded++
    back.send(data, upstreamPort, upstreamHost, () => {})
  })
  back.on('message', (data) => {
    const client = (data.length >= 20 && clients.get(data.subarray(8, 20).toString('hex'))) || lastClient
    if (client) front.send(data, client.port, client.address, () => {})
  })
  relay.close = () => Promise.all(sockets.map((s) => new Promise((resolve) => s.close(resolve))))
  return relay
}

/** Sends Binding requests to 127.0.0.1:`port` until one is answered; resolves with the mapped address. Bounded. */
export async function probeStun(port, { timeoutMs = GUARD_MS, intervalMs = 100 } = {}) {
  const socket = dgram.createSocket('udp4')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.bind(0, TARGET_ADDRESS, resolve))
  const txid = crypto.randomBytes(12)
  let timer
  try {
    const answered = new Promise((resolve) => {
      socket.on('message', (data) => {
        const message = parseStunMessage(data)
        if (message?.type === StunType.BINDING_SUCCESS && message.txid.equals(txid)) resolve(stunMappedAddress(message))
      })
    })
    const send = () => socket.send(stunMessage(StunType.BINDING_REQUEST, txid), port, TARGET_ADDRESS, () => {})
    send()
    timer = setInterval(send, intervalMs)
    return await withTimeout(answered, timeoutMs, `a STUN answer from 127.0.0.1:${port}`)
  } finally {
    clearInterval(timer)
    await new Promise((resolve) => socket.close(resolve))
  }
}

/**
 * Starts coturn (`turnserver` at `binary`) as a STUN-only server on 127.0.0.1 and resolves
 * once it answers a Binding request: { port, pid, close() }. close() stops it by pid.
 */
export async function startCoturn(binary) {
  let lastError
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeUdpAndTcpPort()
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remoteingress-coturn-'))
    const args = ['-n', '--stun-only', '--listening-ip=127.0.0.1', `--listening-port=${port}`, '--no-tls', '--no-dtls', '--no-cli',
      '--log-file=stdout', `--pidfile=${path.join(dir, 'turnserver.pid')}`]
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
    child.on('error', (err) => (lastError = err))
    const exited = new Promise((resolve) => child.once('exit', resolve))
    const close = async () => {
      if (child.pid && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGTERM')
        } catch {}
        await withTimeout(exited, 5000, 'turnserver to exit').catch(() => {
          try {
            process.kill(child.pid, 'SIGKILL')
          } catch {}
        })
      }
      fs.rmSync(dir, { recursive: true, force: true })
    }
    try {
      await Promise.race([
        probeStun(port),
        exited.then((code) => {
          throw new Error(`turnserver exited with ${code} at start: ${stderr}`)
        }),
      ])
      return { port, pid: child.pid, close }
    } catch (err) {
      lastError = err
      await close()
    }
  }
  throw lastError
}
