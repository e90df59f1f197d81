// PROXY protocol headers, our own code, independent of the product's: parseProxyHeader (v1 and
// v2), and for datagrams ipBytes, encodeProxyV2Udp and parseProxyDatagram.
import net from 'node:net'

const V1_MAX_LENGTH = 107
export const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')

/**
 * Parses a PROXY header at the start of `buffer`.
 * Returns null when more bytes are needed, or { version, length, raw, header, source, destination }
 * where source/destination are { address, port } (null for UNKNOWN / LOCAL). Throws on garbage.
 */
export function parseProxyHeader(buffer) {
  if (buffer.length === 0) return null
  return buffer[0] === V2_SIGNATURE[0] ? parseProxyV2(buffer) : parseProxyV1(buffer)
}

function parseProxyV1(buffer) {
  const prefix = Buffer.from('PROXY ')
  const head = buffer.subarray(0, prefix.length)
  if (!prefix.subarray(0, head.length).equals(head)) throw new Error(`not a PROXY header: ${JSON.stringify(head.toString('latin1'))}`)
  const end = buffer.indexOf('\r\n')
  if (end === -1) {
    if (buffer.length >= V1_MAX_LENGTH) throw new Error('PROXY v1 line longer than 107 bytes')
    return null
  }
  const length = end + 2
  if (length > V1_MAX_LENGTH) throw new Error(`PROXY v1 line of ${length} bytes exceeds 107`)
  const raw = Buffer.from(buffer.subarray(0, length))
  const line = raw.subarray(0, end).toString('latin1')
  const parts = line.split(' ')
  if (parts[1] === 'UNKNOWN') return { version: 1, length, raw, header: line, protocol: 'UNKNOWN', source: null, destination: null }
  if (parts.length !== 6 || !['TCP4', 'TCP6'].includes(parts[1])) throw new Error(`malformed PROXY v1 line: ${line}`)
  const family = parts[1] === 'TCP4' ? 4 : 6
  for (const address of [parts[2], parts[3]]) {
    if (net.isIP(address) !== family) throw new Error(`bad ${parts[1]} address ${address} in: ${line}`)
  }
  const ports = [parts[4], parts[5]].map((p) => {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(p) || Number(p) > 65535) throw new Error(`bad port ${p} in: ${line}`)
    return Number(p)
  })
  return {
    version: 1,
    length,
    raw,
    header: line,
    protocol: parts[1],
    source: { address: parts[2], port: ports[0] },
    destination: { address: parts[3], port: ports[1] },
  }
}

function parseProxyV2(buffer) {
  const signature = buffer.subarray(0, V2_SIGNATURE.length)
  if (!V2_SIGNATURE.subarray(0, signature.length).equals(signature)) throw new Error('bad PROXY v2 signature')
  if (buffer.length < 16) return null
  const versionCommand = buffer[12]
  const family = buffer[13]
  const addressLength = buffer.readUInt16BE(14)
  const length = 16 + addressLength
  if (buffer.length < length) return null
  if (versionCommand >> 4 !== 2) throw new Error(`PROXY v2 version nibble is ${versionCommand >> 4}`)
  const raw = Buffer.from(buffer.subarray(0, length))
  const body = raw.subarray(16)
  const base = { version: 2, length, raw, versionCommand, family, header: raw.toString('hex') }
  if (versionCommand === 0x20) return { ...base, protocol: 'LOCAL', source: null, destination: null }
  if (versionCommand !== 0x21) throw new Error(`PROXY v2 command byte 0x${versionCommand.toString(16)}`)
  if (family === 0x11 || family === 0x12) {
    if (addressLength < 12) throw new Error('PROXY v2 IPv4 block shorter than 12 bytes')
    return {
      ...base,
      protocol: family === 0x11 ? 'TCP4' : 'UDP4',
      source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) },
      destination: { address: [...body.subarray(4, 8)].join('.'), port: body.readUInt16BE(10) },
    }
  }
  if (family === 0x21 || family === 0x22) {
    if (addressLength < 36) throw new Error('PROXY v2 IPv6 block shorter than 36 bytes')
    const ipv6 = (b) => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':')
    return {
      ...base,
      protocol: family === 0x21 ? 'TCP6' : 'UDP6',
      source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
      destination: { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
    }
  }
  throw new Error(`PROXY v2 family byte 0x${family.toString(16)}`)
}

// ---------------------------------------------------------------------------------------------
// Datagrams: PROXY v2 headers on UDP

/** IPv4 or IPv6 text address -> its 4 or 16 network-order bytes (no embedded-IPv4 forms). */
export function ipBytes(address) {
  if (net.isIP(address) === 4) return Buffer.from(address.split('.').map(Number))
  if (net.isIP(address) !== 6 || address.includes('.')) throw new Error(`not a plain IP address: ${address}`)
  const [head, tail] = address.includes('::') ? address.split('::') : [address, null]
  const groups = (text) => (text ? text.split(':') : [])
  const left = groups(head)
  const right = tail === null ? [] : groups(tail)
  const all = tail === null ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right]
  if (all.length !== 8) throw new Error(`bad IPv6 address: ${address}`)
  const out = Buffer.alloc(16)
  all.forEach((group, i) => out.writeUInt16BE(parseInt(group, 16), i * 2))
  return out
}

/**
 * A PROXY v2 header for a datagram (PROXY command, UDP4 0x12 or UDP6 0x22), built by hand from
 * the spec: signature, 0x21, family, length, source address, destination address, ports.
 */
export function encodeProxyV2Udp(source, destination) {
  const src = ipBytes(source.address)
  const dst = ipBytes(destination.address)
  if (src.length !== dst.length) throw new Error('source and destination families differ')
  const addressLength = src.length === 4 ? 12 : 36
  const out = Buffer.alloc(16 + addressLength)
  V2_SIGNATURE.copy(out, 0)
  out[12] = 0x21
  out[13] = src.length === 4 ? 0x12 : 0x22
  out.writeUInt16BE(addressLength, 14)
  src.copy(out, 16)
  dst.copy(out, 16 + src.length)
  out.writeUInt16BE(source.port, 16 + 2 * src.length)
  out.writeUInt16BE(destination.port, 18 + 2 * src.length)
  return out
}

/**
 * Splits one datagram into { header, payload }: `header` is the parsed PROXY v2 header (see
 * parseProxyHeader) when the datagram starts with the v2 signature, else null and the whole
 * datagram is the payload. A header must lie wholly inside the datagram; a cut one throws.
 */
export function parseProxyDatagram(datagram) {
  const startsWithSignature = datagram.length >= V2_SIGNATURE.length && datagram.subarray(0, V2_SIGNATURE.length).equals(V2_SIGNATURE)
  if (!startsWithSignature) return { header: null, payload: datagram }
  const header = parseProxyHeader(datagram)
  if (!header) throw new Error(`PROXY v2 header cut short: a ${datagram.length}-byte datagram`)
  return { header, payload: datagram.subarray(header.length) }
}
